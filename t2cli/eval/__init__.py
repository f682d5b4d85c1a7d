"""Accuracy of base weights or an expert on a task split, with its interval."""
