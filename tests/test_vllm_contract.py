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
- vLLM's ``InputProcessor`` admits t2's requests (prompt ids and ``SamplingParams``; for a
  vision-language model also the images, through vLLM's own multimodal processor).

So these tests state that what t2 sends is what the installed vLLM accepts, and that a pushed
W'(z) lands in vLLM's fused parameters, in place, for text models and for the language model of
the tiny LLaVA and Idefics3 (SmolVLM) of tests/vlm_models.py. How to run them: docs/vllm.md.
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

from t2cli.models.targets import select_targets
from t2cli.train.rollout_vllm import (
    MIN_VLLM,
    NO_PLACEHOLDER,
    RolloutBackendError,
    VLLMRollout,
    WeightLoaderExtension,
    _check_api,
    vision_prompts,
    vllm_weight_name,
)
from tests.tiny_models import ARCHITECTURES
from tests.vlm_models import IMAGE_TOKEN

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
    _check_api(vllm, sleep_mode=True, vision=True)  # raises, naming what is missing, if LLM or EngineArgs lack anything


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
    identity = adaptable.identity
    pushed = {m.name: vllm_weight_name(m) for m in select_targets(identity.model_type, identity.num_layers)}
    _push_weights(rollout, pushed, adaptable.svf, composed)  # what t2 train does before each rollout

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


# --------------------------------------------------------------------------- vision-language models

# vLLM's name of the language model's blocks, and t2's (transformers 5, loaded), per tiny VLM family.
VLM_BLOCKS = {"llava": ("language_model.model.", "model.language_model."), "idefics3": ("model.text_model.",) * 2}


@pytest.fixture()
def vlm_folder(tiny_vlm_dirs: dict[str, Path], tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """The tiny VLM of ``request.param``, as vLLM's CPU wheel can build it.

    LLaVA: transformers 5 saves the CLIP tower as ``vision_tower.encoder...``, which vLLM's CLIP
    loader cannot place; llava-hf checkpoints store ``vision_tower.vision_model.encoder...``, which
    both load, so the copy stores that. Its CLIP activation becomes ``gelu``: vLLM's ``quick_gelu``
    is a compiled op the CPU wheel lacks. Neither touches the language model.
    """
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    family = request.param
    if family != "llava":
        return tiny_vlm_dirs[family]
    folder = tmp_path / family
    shutil.copytree(tiny_vlm_dirs[family], folder)
    weights = load_file(str(folder / "model.safetensors"))
    hub = {
        name.replace("vision_tower.", "vision_tower.vision_model.", 1) if name.startswith("vision_tower.") else name: w
        for name, w in weights.items()
    }
    save_file(hub, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["hidden_act"] = "gelu"
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("vlm_folder", list(VLM_BLOCKS), indirect=True)
def test_pushed_w_prime_lands_in_a_vlms_language_model_in_place(real_parts: None, vlm_folder: Path) -> None:
    """vLLM's VLM loader takes W' under t2's names (``vllm_weight_name``) into its language model's fused rows."""
    from t2cli.home import open_registry
    from t2cli.svf.adaptable import load_adaptable
    from t2cli.train.loop import _push_weights

    with open_registry() as registry:
        adaptable = load_adaptable(registry, str(vlm_folder), device=DEVICE)
    identity = adaptable.identity
    rollout = make_rollout(vlm_folder, adaptable.tokenizer, max_images=1)
    assert not rollout.llm.config.model_config.skip_tokenizer_init  # vLLM's multimodal processor needs it
    engine = rollout.llm
    params = dict(engine.model.named_parameters())
    packed: dict[str, list[str]] = getattr(engine.model, "packed_modules_mapping", {})
    theirs, ours = VLM_BLOCKS[vlm_folder.name]
    t2_weights = {name: w.detach() for name, w in adaptable.model.named_parameters()}

    def expected(weights: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        return torch.cat([weights[part.replace(theirs, ours, 1)] for part in _parts(name, packed)])

    targets = select_targets(identity.model_type, identity.num_layers, "all", vision_layers=identity.vision_layers)
    pushed = {m.name: vllm_weight_name(m) for m in targets}
    covered = [name for name in params if name.startswith(f"{theirs}layers.") and name.endswith("proj.weight")]
    assert len(covered) == 4 * identity.num_layers  # qkv_proj, o_proj, gate_up_proj, down_proj per block
    for name in covered:  # vLLM loaded the W that t2 decomposed
        assert torch.equal(params[name], expected(t2_weights, name)), name

    torch.manual_seed(1)
    z = {name: 1 + 0.3 * torch.randn_like(f.S) for name, f in adaptable.svf.factors.items()}
    composed = adaptable.svf.composed(z)
    storage = {name: p.data_ptr() for name, p in params.items()}
    before = {name: p.detach().clone() for name, p in params.items()}
    _push_weights(rollout, pushed, adaptable.svf, composed)  # what t2 train does before each rollout

    adapted = {**t2_weights, **{pushed[name]: w for name, w in composed.items()}}
    for name in covered:
        assert torch.allclose(params[name], expected(adapted, name), atol=1e-6), name
        assert not torch.allclose(params[name], before[name]), name
    for name in set(params) - set(covered):  # vision tower, projector, embeddings, norms: untouched
        assert torch.equal(params[name], before[name]), name
    assert {name: p.data_ptr() for name, p in params.items()} == storage  # copied in place
    assert engine.resets == 1
    # Why image-side targets are refused: vLLM builds the tower only up to the layer the model reads.
    if vlm_folder.name == "llava":  # vision_feature_layer -2 of 2 blocks: vLLM has block 0 only, t2 both
        tower = {name.split(".layers.")[1].split(".")[0] for name in params if ".encoder.layers." in name}
        assert tower == {"0"} and identity.vision_layers == 2


@pytest.mark.parametrize("vlm_folder", list(VLM_BLOCKS), indirect=True)
def test_vllm_expands_t2s_image_requests_to_the_ids_the_loss_scores(
    real_parts: None, vlm_folder: Path, tmp_path: Path
) -> None:
    """vLLM's own multimodal processor admits each prompt with its images and expands it as t2's processor does."""
    from PIL import Image
    from transformers import AutoProcessor, AutoTokenizer

    from t2cli.tasks import get_task
    from t2cli.tasks.images import ImageFile
    from t2cli.tasks.types import TaskItem

    task = get_task("shapes")
    pictures = [ImageFile(tmp_path / f"{c}.png") for c in ("red", "blue")]
    for picture, colour in zip(pictures, ("red", "blue")):
        Image.new("RGB", (24, 16), colour).save(picture.path)
    items = [
        *task.split("test")[:2],
        TaskItem("two", "Which colour is first?", "red", "exact", images=tuple(pictures)),
        TaskItem("text", "2+2=?", "4", "exact"),
    ]
    processor = AutoProcessor.from_pretrained(vlm_folder)
    prompts = vision_prompts(processor, items, task.system_prompt)
    rollout = make_rollout(vlm_folder, AutoTokenizer.from_pretrained(vlm_folder), max_images=2)
    assert rollout.llm.config.model_config.multimodal_config.get_limit_per_prompt("image") == 2
    keys = [21, 22, 23, 24]
    with pytest.raises(Admitted) as admitted:
        rollout.generate(prompts, max_new_tokens=5, temperature=1.0, sample_keys=keys)
    requests = admitted.value.requests
    assert [r.prompt_token_ids for r in requests] == [p.encoded.ids for p in prompts]  # vLLM's expansion = t2's
    assert [len(r.mm_features or []) for r in requests] == [1, 1, 2, 0]  # each item's images
    assert [r.sampling_params.seed for r in requests] == keys
    assert all(r.sampling_params.logit_bias == {IMAGE_TOKEN: NO_PLACEHOLDER} for r in requests)
