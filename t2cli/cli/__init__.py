"""The command line: the root app, shared options, consoles, one module per command group."""
