"""Shared fixtures: every test gets its own T2_HOME; tiny random models are built once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

# huggingface_hub reads these once, at import: set them before anything imports it.
# Tests never reach the network; the Hub client is exercised offline on a local cache layout.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest

if TYPE_CHECKING:
    from registry import Registry
    from t2cli.runtime.distributed import Dist


@pytest.fixture(autouse=True)
def t2_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point T2_HOME at a fresh temporary directory so no test touches the user's data."""
    home = tmp_path / "t2home"
    monkeypatch.setenv("T2_HOME", str(home))
    monkeypatch.delenv("T2_DEBUG", raising=False)
    return home


@pytest.fixture
def reg(t2_home: Path) -> Iterator[Registry]:
    """The registry of this test's T2_HOME, open for the test."""
    from registry import Registry

    with Registry.open(t2_home) as opened:
        yield opened


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny random model folder per supported architecture, built once per test session."""
    from tests.tiny_models import ARCHITECTURES, build_tiny_model

    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: build_tiny_model(arch, root / arch, seed=i) for i, arch in enumerate(ARCHITECTURES)}


@pytest.fixture(scope="session")
def tiny_vlm_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny random vision-language model folder per supported family, built once per test session."""
    from tests.vlm_models import VLM_FAMILIES, VLM_SEEDS, build_tiny_vlm

    root = tmp_path_factory.mktemp("tiny-vlms")
    return {family: build_tiny_vlm(family, root / family, seed=VLM_SEEDS[family]) for family in VLM_FAMILIES}


@pytest.fixture()
def tiny_llama(tiny_model_dirs: dict[str, Path]) -> Path:
    return tiny_model_dirs["llama"]


@pytest.fixture()
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HF hub cache directory that huggingface_hub uses for this test."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-hub-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _no_cuda() -> bool:
    import torch

    return not torch.cuda.is_available()


@pytest.fixture(
    params=[
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(_no_cuda(), reason="no CUDA GPU: the NCCL variant runs where one is"),
        ),
    ]
)
def one_rank_group(request: pytest.FixtureRequest) -> Iterator[Dist]:
    """A real one-process group (gloo on the CPU, NCCL on a GPU), so FSDP2 and DTensor run in this process
    (tests/test_sharded.py, tests/test_vlm_sharded.py)."""
    import torch
    import torch.distributed as td

    from t2cli.runtime.distributed import Dist

    dist = Dist(rank=0, world_size=1, device="cpu" if request.param == "cpu" else "cuda:0")
    if request.param == "cuda":
        torch.cuda.set_device(0)
    td.init_process_group(dist.backend, store=td.HashStore(), rank=0, world_size=1)  # one rank: no port to bind
    try:
        yield dist
    finally:
        td.destroy_process_group()
