"""Count the imports inside functions and classes (local imports), and check that each one says why.

t2 imports at module top. A local import is the exception: the CLI keeps the engine modules that
pull torch or transformers out of its start-up, and a few engine modules put off a heavy or
optional third-party package until a code path needs it. Ruff's PLC0415 flags every local
import; each one that stays carries its reason after the code::

    from t2cli.adapt.cem import adapt  # noqa: PLC0415 - CLI start-up: pulls torch

The text before the first colon of the reason is its category (``CLI start-up`` above).

Usage::

    python scripts/count_local_imports.py t2cli registry            # count per file, and the total
    python scripts/count_local_imports.py --list t2cli registry     # every local import, with its reason
    python scripts/count_local_imports.py --reasons t2cli registry  # count per reason category
    python scripts/count_local_imports.py --check t2cli registry    # print those without a reason; exit 1 if any
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# A noqa comment naming PLC0415 (other codes may stand beside it), then " - " and the reason.
REASON = re.compile(r"#\s*noqa:\s*(?P<codes>[A-Z]+[0-9]+(?:\s*,?\s*[A-Z]+[0-9]+)*)\s+-\s+(?P<reason>\S.*?)\s*$")
CODE = "PLC0415"
SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


@dataclass(frozen=True)
class LocalImport:
    """One import statement inside a function or class body."""

    path: Path
    line: int
    statement: str  # its first line, stripped
    reason: str | None  # the text after the noqa code and " - ", or None

    @property
    def category(self) -> str:
        """The reason's text before its first colon (the whole reason when it has none)."""
        if self.reason is None:
            return "(no reason)"
        return self.reason.split(":", 1)[0].strip()


def python_files(roots: Sequence[str]) -> Iterator[Path]:
    """The .py files under each root (a root may be a file), in a stable order."""
    for root in roots:
        path = Path(root)
        yield from [path] if path.is_file() else sorted(path.rglob("*.py"))


def local_imports(path: Path) -> list[LocalImport]:
    """The imports of ``path`` that sit inside a function or class body, in line order."""
    source = path.read_text()
    lines = source.splitlines()
    found: dict[int, ast.stmt] = {}

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if nested and isinstance(child, (ast.Import, ast.ImportFrom)):
                found[id(child)] = child
            visit(child, nested or isinstance(child, SCOPES))

    visit(ast.parse(source, filename=str(path)), False)
    result = []
    for node in sorted(found.values(), key=lambda n: n.lineno):
        first = lines[node.lineno - 1]
        match = REASON.search(first)
        reason = match["reason"] if match and CODE in match["codes"] else None
        result.append(LocalImport(path, node.lineno, first.split("#", 1)[0].strip(), reason))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="files or folders to scan, e.g. t2cli registry")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--list", action="store_true", help="print every local import with its reason")
    mode.add_argument("--reasons", action="store_true", help="count the local imports per reason category")
    parser.add_argument(
        "--check", action="store_true", help=f"exit 1 if a local import has no '# noqa: {CODE} - reason'"
    )
    args = parser.parse_args(argv)

    found = [imp for path in python_files(args.paths) for imp in local_imports(path)]
    if args.list:
        for imp in found:
            print(f"{imp.path}:{imp.line}: {imp.statement}  [{imp.reason or 'no reason'}]")
    elif args.reasons:
        for category, n in Counter(imp.category for imp in found).most_common():
            print(f"{n:4d} {category}")
    elif not args.check:  # --check alone prints only what fails
        for path, n in sorted(Counter(str(imp.path) for imp in found).items(), key=lambda item: (-item[1], item[0])):
            print(f"{n:4d} {path}")
    if args.list or args.reasons or not args.check:
        print(f"total {len(found)}")

    if args.check:
        missing = [imp for imp in found if imp.reason is None]
        for imp in missing:
            print(f"{imp.path}:{imp.line}: local import without a reason ('# noqa: {CODE} - why'): {imp.statement}")
        if missing:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
