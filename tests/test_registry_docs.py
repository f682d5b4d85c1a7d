"""docs/registry.md is generated from the code and must match it."""

from __future__ import annotations

from pathlib import Path

from registry.docs import render_schema_markdown
from registry.schema import Base

DOC = Path(__file__).resolve().parent.parent / "docs" / "registry.md"


def test_docs_page_matches_the_schema() -> None:
    assert DOC.exists(), "docs/registry.md is missing: run `python -m registry.docs > docs/registry.md`"
    assert DOC.read_text() == render_schema_markdown(), (
        "docs/registry.md is out of date: run `python -m registry.docs > docs/registry.md`"
    )


def test_rendered_page_documents_every_table_and_column() -> None:
    text = render_schema_markdown()
    for table in Base.metadata.sorted_tables:
        assert f"### `{table.name}`" in text
        for column in table.columns:
            assert f"| `{column.name}` |" in text
    assert "BEGIN IMMEDIATE" in text and "busy_timeout=30000" in text
