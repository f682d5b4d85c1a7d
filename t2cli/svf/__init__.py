"""Singular Value Fine-tuning: the expert format, z applied to and restored from a loaded model, FSDP shards."""
