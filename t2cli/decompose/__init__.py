"""Stage 1: the SVD of a model's target matrices, stored once in the registry."""
