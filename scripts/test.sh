#!/usr/bin/env bash
# Set up, then run the whole test suite (unit tests on tiny random models + end-to-end on the embedded model).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
# Lint, format, the layer contracts and the types (pyproject.toml) before the tests: a broken layer fails fast.
ruff check t2cli registry tests bench scripts
ruff format --check --quiet t2cli registry tests bench scripts
lint-imports --no-cache >/dev/null || lint-imports --no-cache
mypy
python scripts/count_local_imports.py --check t2cli registry  # each import inside a function says why
exec python -m pytest -q "$@"
