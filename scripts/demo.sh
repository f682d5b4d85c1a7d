#!/usr/bin/env bash
# The main job on the embedded default model (SmolLM2-135M-Instruct, CPU): set up, decompose it,
# RL-train an SVF expert on 2-digit additions (~35 min on 2 cores), compare it with the base model
# on 200 held-out sums, and answer a prompt with two-pass inference.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export T2_HOME="${T2_HOME:-$PWD/.t2-demo}"   # the demo's own registry; delete the folder to start over
set -x
t2 --version
t2 decompose
t2 decompose            # second run: a no-op, the factors are cached
t2 models list
if ! t2 experts show add-demo >/dev/null 2>&1; then
  bash scripts/train_or_resume.sh add-demo --task addition
fi
t2 eval --task addition --base --limit 200
t2 eval --task addition --expert add-demo --limit 200
t2 experts show add-demo
t2 ask "What is 38 + 47? Answer with the number only." --strategy expert:add-demo --max-new-tokens 16 --show-dispatch
t2 db status
t2 db verify
