"""docs/cli.md is generated from the code (below its marker) and must stay current."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REGENERATE = "python scripts/cli_reference.py"


def _generator():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "scripts" / "cli_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_current() -> None:
    generator = _generator()
    current = (ROOT / "docs" / "cli.md").read_text()
    assert generator.MARKER in current, f"docs/cli.md lost its marker: run `{REGENERATE}`"
    assert generator.render(current) == current, f"docs/cli.md is stale: run `{REGENERATE}`"


def test_the_options_table_lists_every_command() -> None:
    table = _generator().options_table()
    for row in ("| `t2` |", "| `t2 train` |", "| `t2 experts tag` |", "| `t2 runs rm` |", "| `t2 tasks` |"):
        assert row in table
    assert "--svd-dtype=float32" in table and "--gen-batch" not in table  # hidden aliases are left out
