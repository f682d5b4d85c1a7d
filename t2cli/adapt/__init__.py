"""Few-shot adaptation: mixing weights for several experts found with the cross-entropy method."""
