"""The vLLM rollout backend against a real vLLM installation, on the CPU; skipped where vllm is not installed.

vLLM's engine loop runs compiled kernels (CUDA, or a CPU build of vLLM); the PyPI wheel on a
machine without a GPU has neither, so ``vllm.LLM`` cannot start here. Everything up to the
kernels is plain Python and does run, so ``RealPartsLLM`` stands in for ``vllm.LLM`` and is
built from vLLM's own parts, in the order vLLM uses them:

- ``EngineArgs(**kwargs).create_engine_config()``: every argument ``VLLMRollout`` passes,
  checked by vLLM (``vllm.LLM`` hands its arguments to ``EngineArgs`` the same way);
- vLLM's model loader builds vLLM's own model class (fused ``qkv_proj`` / ``gate_up_proj``) and
  loads the base weights from the folder, as the worker does;
- the worker extension is resolved from its qualified name in that config, checked for clashes
  against vLLM's Worker classes as ``WorkerWrapperBase.init_worker`` does, and called through
  vLLM's ``run_method``, as ``UniProcExecutor.collective_rpc`` does;
- vLLM's ``InputProcessor`` admits t2's requests (prompt ids and ``SamplingParams``).

So these tests state that what t2 sends is what the installed vLLM accepts, and that a pushed
W'(z) lands in vLLM's fused parameters, in place. How to run them: docs/vllm.md.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest
import torch

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vllm is not installed (pip install 't2cli[vllm]'; see docs/vllm.md)", allow_module_level=True)
if not torch.cuda.is_available():
    # vLLM picks its platform once, on first use; without a GPU only its CPU platform builds models.
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

import vllm
from vllm.config import set_current_vllm_config
from vllm.distributed import (
    ensure_model_parallel_initialized,
    init_distributed_environment,
)
from vllm.distributed.parallel_state import model_parallel_is_initialized
from vllm.engine.arg_utils import EngineArgs
from vllm.model_executor.model_loader import get_model
from vllm.sampling_params import SamplingType
from vllm.utils.import_utils import resolve_obj_by_qualname
from vllm.v1.engine.input_processor import InputProcessor
from vllm.v1.serial_utils import run_method

from t2cli.train.rollout_vllm import (
    MIN_VLLM,
    RolloutBackendError,
    VLLMRollout,
    WeightLoaderExtension,
    _check_api,
)
from tests.tiny_models import ARCHITECTURES

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class Admitted(Exception):
    """Raised by ``RealPartsLLM.generate`` with the requests vLLM admitted: there are no kernels to run them."""

    def __init__(self, requests: list[Any]) -> None:
        super().__init__(f"{len(requests)} requests admitted")
        self.requests = requests


class RealPartsLLM:
    """``vllm.LLM`` up to its kernels: vLLM's config, model, worker-extension dispatch and request admission."""

    def __init__(self, **kwargs: Any) -> None:
        self.config = EngineArgs(**kwargs).create_engine_config()
        extension = resolve_obj_by_qualname(self.config.parallel_config.worker_extension_cls)
        with set_current_vllm_config(self.config):
            _join_vllm_world()
            self.model = get_model(vllm_config=self.config)
        model = self.model
        # vLLM's worker, reduced to the one method the extension relies on (Worker.get_model).
        self.worker = type("Worker", (extension,), {"get_model": lambda self: model})()
        self.resets = 0

    def collective_rpc(
        self, method: Any, timeout: float | None = None, args: tuple = (), kwargs: dict[str, Any] | None = None
    ) -> list[Any]:
        return [run_method(self.worker, method, args, kwargs or {})]

    def reset_prefix_cache(self, reset_running_requests: bool = False, reset_connector: bool = False) -> bool:
        self.resets += 1
        return True

    def generate(self, prompts: list[Any], sampling_params: list[Any], *, use_tqdm: bool = True) -> list[Any]:
        processor = InputProcessor(self.config)
        requests = [
            processor.process_inputs(str(i), prompt, params, supported_tasks=("generate",))
            for i, (prompt, params) in enumerate(zip(prompts, sampling_params, strict=True))
        ]
        raise Admitted(requests)


def _join_vllm_world() -> None:
    """vLLM's process groups (a world of one; gloo on the CPU), made once per process as vLLM's worker does."""
    if not model_parallel_is_initialized():
        init_distributed_environment(
            world_size=1,
            rank=0,
            local_rank=0,
            backend="gloo" if DEVICE == "cpu" else "nccl",
            distributed_init_method="tcp://127.0.0.1:29573",
        )
        ensure_model_parallel_initialized(1, 1)


@pytest.fixture()
def real_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vllm, "LLM", RealPartsLLM)
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)  # monkeypatch restores them; the adapter sets its own


def make_rollout(folder: Path, tokenizer: Any, **overrides: Any) -> VLLMRollout:
    args: dict[str, Any] = {"dtype": "float32", "seed": 3, "device": DEVICE, "engine_kwargs": {"enforce_eager": True}}
    args.update(overrides)
    return VLLMRollout(folder, tokenizer, **args)


def test_the_installed_vllm_has_the_api_t2_uses() -> None:
    from packaging.version import Version

    assert Version(vllm.__version__) >= Version(MIN_VLLM)
    _check_api(vllm, sleep_mode=True)  # raises, naming what is missing, if LLM or EngineArgs lack anything


def test_the_engine_arguments_make_a_colocated_vllm_config(real_parts: None, tiny_llama: Path) -> None:
    from transformers import AutoTokenizer

    rollout = make_rollout(
        tiny_llama, AutoTokenizer.from_pretrained(tiny_llama), gpu_memory_utilization=0.25, max_model_len=96
    )
    config = rollout.llm.config
    assert config.parallel_config.distributed_executor_backend == "external_launcher"
    assert config.parallel_config.world_size == 1
    assert resolve_obj_by_qualname(config.parallel_config.worker_extension_cls) is WeightLoaderExtension
    assert config.model_config.skip_tokenizer_init
    assert config.model_config.dtype == torch.float32 and config.model_config.max_model_len == 96
    assert config.cache_config.gpu_memory_utilization == 0.25 and config.model_config.seed == 3


def test_the_extension_mixes_into_vllm_workers_without_clashes() -> None:
    """``WorkerWrapperBase.init_worker`` refuses an extension attribute its worker class already has."""
    from vllm.v1.worker.gpu_worker import Worker

    workers = [Worker]
    if DEVICE == "cpu":
        from vllm.v1.worker.cpu_worker import CPUWorker

        workers.append(CPUWorker)
    own = [attr for attr in dir(WeightLoaderExtension) if not attr.startswith("__")]
    assert own == ["t2_load_weights"]
    for worker in workers:
        assert not hasattr(worker, "t2_load_weights"), worker
        assert callable(worker.get_model)  # what t2_load_weights calls


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_pushed_w_prime_lands_in_vllms_fused_parameters_in_place(
    real_parts: None, tiny_model_dirs: dict[str, Path], arch: str
) -> None:
    """vLLM starts from the folder's W; after a push of W'(z) its qkv_proj / gate_up_proj rows are t2's W'."""
    from safetensors.torch import load_file

    from t2cli.home import open_registry
    from t2cli.svf.adaptable import load_adaptable
    from t2cli.train.loop import _push_weights

    folder = tiny_model_dirs[arch]
    with open_registry() as registry:
        adaptable = load_adaptable(registry, str(folder), device=DEVICE)
    rollout = make_rollout(folder, adaptable.tokenizer)
    engine = rollout.llm
    params = dict(engine.model.named_parameters())
    packed: dict[str, list[str]] = getattr(engine.model, "packed_modules_mapping", {})
    hf = {name: tensor.to(DEVICE) for name, tensor in load_file(str(folder / "model.safetensors")).items()}

    def expected(weights: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        """vLLM's parameter ``name`` built from HF tensors: a fused one is its parts' rows, in order."""
        return torch.cat([weights[part] for part in _parts(name, packed)])

    targets = {f"{name}.weight" for name in adaptable.svf.factors}
    covered = [name for name in params if any(t in targets for t in _parts(name, packed))]
    assert len(covered) == 4 * 3  # qkv_proj, o_proj, gate_up_proj, down_proj in each of 3 layers
    for name in covered:  # vLLM loaded the same base weights t2 decomposed
        assert torch.equal(params[name], expected(hf, name)), name

    torch.manual_seed(0)
    z = {name: 1 + 0.3 * torch.randn_like(f.S) for name, f in adaptable.svf.factors.items()}
    composed = adaptable.svf.composed(z)
    storage = {name: p.data_ptr() for name, p in params.items()}
    before = {name: p.detach().clone() for name, p in params.items()}
    _push_weights(rollout, adaptable.svf, composed)  # what t2 train does before each rollout

    adapted = {**hf, **{f"{name}.weight": w for name, w in composed.items()}}
    for name in covered:
        assert torch.allclose(params[name], expected(adapted, name), atol=1e-6), name
        assert not torch.allclose(params[name], before[name]), name  # the push changed it
    for name in set(params) - set(covered):  # embeddings and norms: untouched
        assert torch.equal(params[name], before[name]), name
    assert {name: p.data_ptr() for name, p in params.items()} == storage  # copied in place (CUDA graphs stay valid)
    assert engine.resets == 1


def test_a_non_finite_push_leaves_vllms_weights_as_they_were(real_parts: None, tiny_llama: Path) -> None:
    from transformers import AutoTokenizer

    rollout = make_rollout(tiny_llama, AutoTokenizer.from_pretrained(tiny_llama))
    params = dict(rollout.llm.model.named_parameters())
    before = {name: p.detach().clone() for name, p in params.items()}
    good = torch.zeros_like(params["model.layers.0.mlp.down_proj.weight"])
    bad = torch.full_like(good, float("nan"))
    with pytest.raises(RolloutBackendError, match="not finite; nothing was pushed"):
        rollout.push_weights({"model.layers.0.mlp.down_proj.weight": good, "model.layers.1.mlp.down_proj.weight": bad})
    assert all(torch.equal(p, before[name]) for name, p in params.items())


def test_vllm_admits_t2s_seeded_requests_one_per_completion(real_parts: None, tiny_llama: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    rollout = make_rollout(tiny_llama, tokenizer)
    with pytest.raises(Admitted) as sampled:
        rollout.generate(["12+3=", "ab"], max_new_tokens=7, temperature=1.0, per_prompt=2, sample_keys=[11, 12, 13, 14])
    requests = sampled.value.requests
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in ("12+3=", "ab")]
    assert [r.prompt_token_ids for r in requests] == [prompt_ids[0]] * 2 + [prompt_ids[1]] * 2
    assert [r.sampling_params.seed for r in requests] == [11, 12, 13, 14]
    for request in requests:
        params = request.sampling_params
        assert params.sampling_type == SamplingType.RANDOM_SEED and params.temperature == 1.0
        assert params.max_tokens == 7 and params.n == 1 and not params.detokenize
        assert tokenizer.eos_token_id in params.stop_token_ids

    with pytest.raises(Admitted) as greedy:
        rollout.generate(["ab"], max_new_tokens=3, temperature=0.0, sample_keys=[5])
    (request,) = greedy.value.requests
    assert request.sampling_params.sampling_type == SamplingType.GREEDY and request.sampling_params.seed is None


def _parts(name: str, packed: dict[str, list[str]]) -> list[str]:
    """The HF parameter names a vLLM parameter is loaded from (itself, or the parts of a fused one)."""
    for fused, parts in packed.items():
        if f".{fused}." in name:
            return [name.replace(f".{fused}.", f".{part}.") for part in parts]
    return [name]
