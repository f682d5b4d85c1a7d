"""docs/cli.md is generated from the code and must stay current."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REGENERATE = 'PYTHONPATH=. typer t2cli.cli.app utils docs --name t2 --title "t2 command reference" --output docs/cli.md'


def test_cli_reference_is_current() -> None:
    typer_cli = shutil.which("typer", path=str(Path(sys.executable).parent))
    if typer_cli is None:
        pytest.fail("the `typer` command is missing from the virtualenv; reinstall with scripts/setup.sh")
    # Import this checkout's t2cli, not whichever one the virtualenv has installed (a worktree may differ).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    rendered = subprocess.run(
        [typer_cli, "t2cli.cli.app", "utils", "docs", "--name", "t2", "--title", "t2 command reference"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=env,
    ).stdout
    assert (ROOT / "docs" / "cli.md").read_text().strip() == rendered.strip(), (
        f"docs/cli.md is stale: run `{REGENERATE}`"
    )
