"""Named queries of the registry, each returning typed dataclasses (one module per subject)."""
