"""The learned router: pass 1 from the base model's hidden states of the prompt (docs/router.md)."""
