"""Every query the engine runs, as named functions over a ``Registry``, one module per entity.

They return the frozen records of ``registry.records``; nothing outside ``registry/``
writes SQL (an import-linter contract in pyproject.toml keeps it so). Each function
opens its own short session unless its docstring says otherwise.
"""
