"""``t2 serve``: an OpenAI-compatible HTTP server whose every request picks its own weights (docs/serving.md)."""
