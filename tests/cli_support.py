"""Helpers for tests that run the CLI in-process (typer's CliRunner)."""

from __future__ import annotations

from click.testing import Result


def one_error(result: Result) -> str:
    """The error text, whitespace folded (rich may wrap long lines).

    Asserts what every refusal promises: one 'error:' line and at most a 'hint:' line, after
    any progress lines, and no traceback.
    """
    text = result.stderr if result.stderr else result.output
    assert "Traceback" not in text and "error: " in text, text
    text = text[text.index("error: ") :]
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) <= 2 and all(line.startswith(("error: ", "hint: ")) for line in lines), text
    return " ".join(text.split())
