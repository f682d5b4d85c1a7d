#!/usr/bin/env bash
# Set up, then run the whole test suite (unit tests on tiny random models + end-to-end on the embedded model).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
exec python -m pytest -q "$@"
