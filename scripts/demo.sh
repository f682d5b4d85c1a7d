#!/usr/bin/env bash
# The main job on the embedded default model: set up, decompose SmolLM2-135M, show the registry.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
set -x
t2 --version
t2 decompose
t2 decompose            # second run: a no-op, the factors are cached
t2 models list
t2 db status
t2 db verify
