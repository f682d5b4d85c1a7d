#!/usr/bin/env bash
# t2's vLLM backend against a real vLLM (tests/test_vllm_contract.py, with the fake-vllm tests), in its own
# environment .venv-vllm: vLLM pins its own torch (vllm 0.33.0: torch 2.14.0, a CUDA build of ~4 GB from
# PyPI), so it cannot share .venv and its CPU build of torch. Runs without a GPU; see docs/vllm.md.
# VLLM_SPEC picks the release (default: the newest, "vllm"); extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM_SPEC="${VLLM_SPEC:-vllm}"
[ -x .venv-vllm/bin/python ] || python3 -m venv .venv-vllm
.venv-vllm/bin/pip install -q "$VLLM_SPEC"
# t2 beside it, keeping the torch vLLM chose.
torch_version=$(.venv-vllm/bin/python -c 'import torch; print(torch.__version__.split("+")[0])')
.venv-vllm/bin/pip install -q -e '.[test]' -c <(echo "torch==$torch_version")
.venv-vllm/bin/python -c 'import vllm, torch, transformers; print("vllm", vllm.__version__, "torch", torch.__version__, "transformers", transformers.__version__)'
exec .venv-vllm/bin/python -m pytest -q tests/test_vllm_contract.py tests/test_rollout_vllm.py tests/test_rollout_vllm_images.py "$@"
