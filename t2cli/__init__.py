"""t2: Transformer-Squared self-adaptive LLMs as a command-line tool."""

__version__ = "0.1.0"
