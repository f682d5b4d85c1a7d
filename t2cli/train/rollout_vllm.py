"""Optional vLLM rollout backend for ``t2 train``: a vLLM engine on the training GPU that generates with W'(z).

vLLM is never a hard dependency: nothing here imports it until a ``VLLMRollout`` is built,
and ``check_vllm_backend`` turns "not installed" or "not on CUDA" into one line. Without it
``t2 train`` generates with transformers (``t2cli.runtime.generation.generate``).

The engine is **colocated**: it runs inside the training process, on the training GPU, and
holds its own copy of the model (loaded by vLLM from ``model_path``; vLLM cannot use t2's
in-memory model). After each z update the composed W' tensors are copied into that copy.

Targets vLLM >= 0.10.2 (``MIN_VLLM``: the range in which TRL runs its colocate mode on the same
mechanism) and uses only public API (read in vllm-project/vllm):

- ``vllm.LLM(..., distributed_executor_backend="external_launcher", worker_extension_cls=...)``
  (vllm/entrypoints/llm.py, vllm/engine/arg_utils.py ``EngineArgs``). The external launcher
  runs the engine in this process (vllm/config/parallel.py sets
  ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` for it; ``ExecutorWithExternalLauncher`` in
  vllm/v1/executor/uniproc_executor.py reads ``RANK`` / ``LOCAL_RANK``), so ``collective_rpc``
  arguments reach the worker by reference: pushing W' is a device-to-device copy, not a
  serialisation of gigabytes.
- ``LLM.collective_rpc(name, args=...)`` calling a method that ``worker_extension_cls`` mixes
  into vLLM's worker (vllm/v1/worker/worker_base.py ``WorkerWrapperBase.init_worker``), which
  calls ``worker.get_model().load_weights([(hf_name, tensor), ...])``: the model's own checkpoint
  loader, which maps Hugging Face names onto vLLM's fused ``qkv_proj`` / ``gate_up_proj``
  shards and copies into the existing parameters in place. The same route as vLLM's RLHF
  examples (examples/offline_inference/rlhf_utils.py) and TRL's colocate weight sync
  (trl/generation/vllm_generation.py).
- ``LLM.reset_prefix_cache()`` after each push: cached KV blocks were computed with the old
  weights and would otherwise be reused for prompts that share a prefix.
- ``LLM.generate`` with one ``{"prompt_token_ids": ...}`` request and one
  ``SamplingParams(n=1, seed=key, ...)`` per completion (vllm/sampling_params.py): vLLM seeds a
  generator per request, so a completion's draws depend on its key, not on its batch.

Vision-language models (``VisionPrompt``): a request is ``{"prompt_token_ids": ids,
"multi_modal_data": {"image": [PIL images]}}`` (``TokensPrompt``, vllm/inputs/llm.py), the ids
being the chat-templated prompt tokenised alone, **one placeholder per image**. Not the ids
t2's processor expanded: vLLM's multimodal processor (vllm/multimodal/processing/processor.py,
``BaseMultiModalProcessor.apply``) runs the HF processor on the images only and always expands
the placeholders of the token ids itself (``_apply_prompt_updates``), so already-expanded ids
would be expanded a second time (vllm-project/vllm PR 57796, huggingface/trl issue 6294). Not
the text either: vLLM would tokenise it again with its own settings (a BOS the chat template
already wrote), while token ids are exactly t2's. Each output's ``prompt_token_ids`` (vLLM's
expansion) must equal the ids t2's processor gives, which the loss re-scores with the image
tensors; ``generate`` refuses a mismatch. The engine gets ``limit_mm_per_prompt={"image": n}``
(vllm/config/multimodal.py; default 999, and vLLM profiles memory for that many) and keeps its
tokenizer: vLLM's multimodal processors refuse ``skip_tokenizer_init``. Image placeholders get a
``logit_bias`` of -100 (vLLM's bound), as the HF backend suppresses them: a completion holding
one could not be re-scored. Only language-model matrices are pushed (``vllm_weight_name``).

vLLM's newer native weight-transfer API (``LLM.init_weight_transfer_engine`` /
``LLM.update_weights`` with ``WeightTransferConfig``, vllm/distributed/weight_transfer/) is
not used: it is built for a trainer in another process (NCCL broadcast, CUDA IPC handles
sent through Ray or HTTP) and its interface is still changing between releases.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import socket
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from t2cli.errors import T2Error
from t2cli.models.identity import config_depths, read_config
from t2cli.models.resolve import resolve_model
from t2cli.models.targets import NAMED_LANGUAGE_GROUPS, PART_NAMES, TargetMatrix, select_targets
from t2cli.runtime.generation import Generations
from t2cli.runtime.multimodal import ImagePrompt, encode_rendered, image_messages, render_chat

if TYPE_CHECKING:
    from PIL.Image import Image
    from transformers import PreTrainedTokenizerBase, ProcessorMixin

    from t2cli.tasks.types import TaskItem

MIN_VLLM = "0.10.2"
INSTALL_HINT = (
    "install it with pip install 't2cli[vllm]' (Linux, CUDA GPU), or drop --rollout vllm to generate with transformers"
)
UPGRADE_HINT = f"install vllm>={MIN_VLLM}: pip install 't2cli[vllm]'"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LOAD_METHOD = "t2_load_weights"  # the worker method collective_rpc calls (WeightLoaderExtension)
# Arguments t2 relies on for in-process weight pushes: engine_kwargs may not override them.
_OWNED = (
    "model",
    "dtype",
    "seed",
    "tensor_parallel_size",
    "distributed_executor_backend",
    "worker_extension_cls",
    "skip_tokenizer_init",
    "limit_mm_per_prompt",
)
NO_PLACEHOLDER = -100.0  # logit bias of an image placeholder: the lowest vLLM accepts (SamplingParams.from_optional)


class RolloutBackendError(T2Error):
    """The vLLM rollout backend cannot be used here (not installed, no CUDA, too old, misused)."""


def vllm_available() -> bool:
    """Whether vllm is installed, found without importing it (importing vllm takes seconds and touches CUDA)."""
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):  # ValueError: a half-imported module without __spec__
        return False


def check_vllm_backend(device: str) -> None:
    """Refuse ``--rollout vllm`` early, in one line, when it cannot work: no CUDA device or vllm not installed."""
    resolved = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    try:
        kind = torch.device(resolved).type
    except RuntimeError:
        raise RolloutBackendError(f"unknown device {device!r}", "use --device cuda or cuda:N") from None
    if kind != "cuda":
        shown = f"{device} (no CUDA GPU here)" if device == "auto" else device
        raise RolloutBackendError(
            f"--rollout vllm needs a CUDA GPU; the training device is {shown}",
            "train on a CUDA GPU (--device cuda), or drop --rollout vllm to generate with transformers",
        )
    if not vllm_available():
        raise RolloutBackendError("--rollout vllm needs the vllm package, which is not installed", INSTALL_HINT)


@dataclasses.dataclass(frozen=True)
class VisionPrompt:
    """One prompt of a vision-language model, in the two forms the vLLM rollout needs.

    ``ids``: the chat-templated prompt tokenised alone, one placeholder token per image: what
    vLLM is sent (it expands the placeholders itself). ``images``: the item's images, in order.
    ``encoded``: the same prompt through the model's processor, placeholders expanded, with the
    image tensors: what the loss re-scores, and what vLLM's expansion must equal.
    """

    ids: list[int]
    images: tuple[Image, ...]
    encoded: ImagePrompt


def vision_prompts(processor: ProcessorMixin, items: Sequence[TaskItem], system: str | None) -> list[VisionPrompt]:
    """``items`` with their images as ``VisionPrompt``s (``encoded`` is what ``Task.image_prompts`` gives)."""
    prompts = []
    for item in items:
        images = tuple(image.open() for image in item.images)
        text = render_chat(processor, image_messages(item.prompt, len(images), system))
        # Without special tokens, as the processor encodes it (the template writes any BOS itself).
        ids = list(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
        prompts.append(VisionPrompt(ids, images, encode_rendered(processor, text, images)))
    return prompts


def vllm_weight_name(matrix: TargetMatrix) -> str:
    """The name under which vLLM's ``load_weights`` takes W' of ``matrix``: the one t2 composes it under.

    t2 names a matrix as transformers 5 loads it (``model.language_model.layers.0.self_attn.q_proj``
    for LLaVA). vLLM's VLM classes take that name as it is (vLLM >= 0.10.2, read in 0.33.0):
    ``LlavaForConditionalGeneration``, ``LlavaNextForConditionalGeneration``,
    ``Qwen2VLForConditionalGeneration`` and ``Qwen2_5_VLForConditionalGeneration`` map
    ``model.language_model.`` to their ``language_model.model.`` with ``hf_to_vllm_mapper``
    ("new names in checkpoint saved after transformers v4.52"), and
    ``Idefics3ForConditionalGeneration`` (SmolVLM's base) holds its text model at
    ``model.text_model`` as transformers does; text models are ``model.layers...`` on both sides.
    The vision tower and the projector are refused: vLLM keeps its encoder's outputs in an
    encoder cache that ``reset_prefix_cache`` does not clear (``LLM`` has no public reset for
    it), and builds its vision towers only up to the feature layer the model reads.
    """
    if matrix.part != "language":
        raise RolloutBackendError(
            f"--rollout vllm pushes W' into the language model only; the targets include {matrix.name} "
            f"in the {PART_NAMES[matrix.part]}",
            "target the language model (--targets all, attn or mlp), or drop --rollout vllm",
        )
    return matrix.weight_name


def check_vllm_targets(model: str | None, targets: str) -> None:
    """Refuse, in one line and from the config alone, ``--targets`` that vLLM cannot take W' of (``vllm_weight_name``)."""
    if targets in NAMED_LANGUAGE_GROUPS:  # language-model matrices of any model: no config to read
        return
    config = read_config(resolve_model(model))
    num_layers, vision_layers = config_depths(config)
    for matrix in select_targets(config.model_type, num_layers, targets, vision_layers=vision_layers):
        vllm_weight_name(matrix)


class WeightLoaderExtension:
    """Mixed into vLLM's worker class (``worker_extension_cls``); ``collective_rpc(LOAD_METHOD)`` calls it.

    vLLM adds this class to the worker's bases and refuses any attribute the worker already
    has (vllm/v1/worker/worker_base.py), so it holds exactly one, uniquely named, method.
    """

    def t2_load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        # get_model() is part of vLLM's WorkerBase interface; load_weights copies in place, so
        # captured CUDA graphs keep reading the same (now updated) storage.
        with torch.no_grad():
            self.get_model().load_weights(weights)  # type: ignore[attr-defined]


class VLLMRollout:
    """A colocated ``vllm.LLM`` that rolls out completions with W'(z) (same output as ``generation.generate``).

    ``model_path``: a Hugging Face folder with safetensors holding the same weights as t2's base
    model. ``tokenizer``: t2's tokenizer of that model (prompts are tokenised with it, so the
    prompt ids are the ones the loss re-scores). ``dtype``: the training base dtype (float32,
    bfloat16, float16; not "auto", whose meaning differs between t2 and vLLM): W' is pushed in
    it. ``gpu_memory_utilization``: the fraction of the GPU's memory vLLM may take for its copy
    of the weights, activations and KV cache; training keeps the rest. ``enable_sleep_mode``:
    allows ``sleep()`` / ``wake_up()`` to hand that memory back during the loss phase.
    ``end_ids``: end-of-completion tokens (default: the tokenizer's EOS and the folder's
    generation_config ``eos_token_id``, what transformers generation stops at).
    ``max_images``: for a vision-language model, the most images one prompt shows (vLLM's
    ``limit_mm_per_prompt``; 0 for a text task); None for a text model, whose folder may have no
    tokenizer (vLLM then loads none). ``engine_kwargs``: further ``vllm.LLM`` arguments
    (``enforce_eager``, ``max_num_seqs``...).

    Build it on every rank at the same time (vLLM's start-up takes part in the ranks'
    process group under torchrun), before training fills the GPU: vLLM refuses to start when
    less than ``gpu_memory_utilization`` of the memory is free.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        tokenizer: PreTrainedTokenizerBase,
        *,
        dtype: str,
        seed: int,
        gpu_memory_utilization: float = 0.3,
        max_model_len: int | None = None,
        tensor_parallel_size: int = 1,
        device: str | torch.device = "cuda",
        enable_sleep_mode: bool = False,
        end_ids: Collection[int] | None = None,
        max_images: int | None = None,
        engine_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if not vllm_available():
            raise RolloutBackendError(
                "the vLLM rollout backend needs the vllm package, which is not installed", INSTALL_HINT
            )
        if dtype not in DTYPES:
            raise RolloutBackendError(
                f"unknown vLLM dtype {dtype!r}", f"pass the resolved training dtype: {', '.join(DTYPES)}"
            )
        if not 0 < gpu_memory_utilization <= 1:
            raise RolloutBackendError(f"gpu_memory_utilization must be in (0, 1] (got {gpu_memory_utilization})")
        if max_images is not None and max_images < 0:
            raise RolloutBackendError(f"max_images must be 0 or more (got {max_images})")
        if tensor_parallel_size != 1:
            # Under the external launcher a TP group is made of t2's own ranks, and every rank of it
            # must submit the same prompts; t2 gives each rank its own share of the prompts.
            raise RolloutBackendError(
                f"tensor_parallel_size {tensor_parallel_size} is not supported by the colocated vLLM backend",
                "use tensor_parallel_size 1 (one engine per training rank)",
            )
        clash = sorted(set(engine_kwargs or {}) & set(_OWNED))
        if clash:
            raise RolloutBackendError(
                f"engine_kwargs may not set {', '.join(clash)}", "they are VLLMRollout's own arguments"
            )
        import vllm  # noqa: PLC0415 - optional: vllm is the [vllm] extra

        _check_api(vllm, enable_sleep_mode, vision=max_images is not None)
        self.tokenizer = tokenizer
        self.max_images = max_images
        self.dtype = DTYPES[dtype]
        self.device = _launcher_env(torch.device(device))
        self.enable_sleep_mode = enable_sleep_mode
        self.end_ids = frozenset(end_ids if end_ids is not None else _default_end_ids(model_path, tokenizer))
        self.asleep = False
        kwargs: dict[str, Any] = dict(
            model=str(model_path),
            dtype=dtype,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=1,
            distributed_executor_backend="external_launcher",
            worker_extension_cls=f"{WeightLoaderExtension.__module__}.{WeightLoaderExtension.__qualname__}",
            # t2 tokenises and decodes with its own tokenizer; a text model's folder may have none (a dequantised
            # GGUF copy). A vision-language model's multimodal processor needs vLLM's (BaseMultiModalProcessor).
            skip_tokenizer_init=max_images is None,
        )
        if max_images is not None:
            kwargs["limit_mm_per_prompt"] = {"image": max_images}
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if enable_sleep_mode:
            kwargs["enable_sleep_mode"] = True
        kwargs.update(engine_kwargs or {})
        self.llm = vllm.LLM(**kwargs)

    @torch.no_grad()
    def push_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Copy W' into the engine (HF parameter names such as ``model.layers.3.mlp.down_proj.weight``).

        Tensors already in the engine's dtype and on its device are handed over as they are
        (detached, no copy); others are converted first (one temporary each). Non-finite
        weights are refused before anything is written. Then the prefix cache is reset.
        """
        self._awake("push weights to")
        batch = [(name, tensor.detach().to(device=self.device, dtype=self.dtype)) for name, tensor in weights.items()]
        if not batch:
            return
        # One host sync for all matrices rather than one per matrix.
        finite = torch.stack([torch.isfinite(t).all() for _, t in batch])
        if not bool(finite.all()):
            bad = next(name for (name, _), ok in zip(batch, finite.tolist()) if not ok)
            raise RolloutBackendError(
                f"W' of {bad} is not finite; nothing was pushed to vLLM", "the z values are too large"
            )
        try:
            self.llm.collective_rpc(LOAD_METHOD, args=(batch,))
        except (NotImplementedError, AttributeError) as error:
            raise RolloutBackendError(f"vLLM's worker could not load the weights ({error})", UPGRADE_HINT) from error
        # reset_prefix_cache returns False (recent vLLM) when requests are still running.
        if self.llm.reset_prefix_cache() is False:
            raise RolloutBackendError(
                "vLLM could not reset its prefix cache after a weight push", "no generation may run during push_weights"
            )

    def generate(
        self,
        prompts: Sequence[str] | Sequence[VisionPrompt],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        per_prompt: int = 1,
        sample_keys: Sequence[int] | None = None,
    ) -> Generations:
        """``per_prompt`` completions per chat-formatted prompt, as ``t2cli.runtime.generation.generate`` returns them.

        One request per completion, in output order (``per_prompt`` consecutive per prompt);
        at temperature > 0 with ``sample_keys`` each request carries its key as vLLM's
        per-request seed, so a completion does not depend on the batch it is generated in.
        Greedy at temperature 0. Completions are cut after the first end token.

        ``VisionPrompt``s (an engine built with ``max_images``) send their images with their
        unexpanded ids; the ``Generations`` then hold the processor's expanded ids and each
        completion's ``ImagePrompt``, as the HF backend's do, so the loss re-scores the prompt
        vLLM generated from (checked against each output's ``prompt_token_ids``).
        """
        from vllm import SamplingParams  # noqa: PLC0415 - optional: vllm is the [vllm] extra

        self._awake("generate with")
        count = len(prompts) * per_prompt
        if sample_keys is not None and len(sample_keys) != count:
            raise ValueError(f"{len(sample_keys)} sample keys for {count} completions")
        if count == 0:  # a rank whose share of the step's prompts is empty
            return Generations([], [], [], per_prompt, 0)
        if self.max_images is None and any(isinstance(p, VisionPrompt) for p in prompts):
            raise RolloutBackendError(
                "this vLLM engine was built for a text model; it cannot take prompts with images",
                "build it with max_images (the most images a prompt shows)",
            )
        encoded = [self._encode(p) for p in prompts]
        requests = [request for request, _, _ in encoded for _ in range(per_prompt)]
        prompt_ids = [scored for _, scored, _ in encoded for _ in range(per_prompt)]
        images = any(image is not None for _, _, image in encoded)
        # As the HF backend suppresses them: a completion holding an image placeholder could not be re-scored.
        banned = sorted({i for p in prompts if isinstance(p, VisionPrompt) for i in p.encoded.placeholders})
        extra: dict[str, Any] = {"logit_bias": dict.fromkeys(banned, NO_PLACEHOLDER)} if banned else {}
        seeded = sample_keys is not None and temperature > 0
        params = [
            SamplingParams(
                n=1,
                temperature=temperature,
                top_p=1.0,
                max_tokens=max_new_tokens,
                seed=int(sample_keys[i]) if seeded and sample_keys is not None else None,
                stop_token_ids=sorted(self.end_ids),
                detokenize=False,  # texts come from t2's tokenizer (a text model's engine has none)
                **extra,
            )
            for i in range(count)
        ]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        if len(outputs) != count:
            raise RolloutBackendError(f"vLLM returned {len(outputs)} outputs for {count} requests")
        completion_ids: list[list[int]] = []
        for k, output in enumerate(outputs):
            seen = getattr(output, "prompt_token_ids", None)  # the prompt vLLM ran, image placeholders expanded
            if seen is not None and list(seen) != prompt_ids[k]:
                raise RolloutBackendError(
                    f"vLLM expanded prompt {k // per_prompt} to {len(seen)} tokens that differ from the "
                    f"{len(prompt_ids[k])} the model's processor gives: the loss would re-score another prompt",
                    "use --rollout hf for this model",
                )
            generated = list(output.outputs[0].token_ids)
            cut = next((i + 1 for i, t in enumerate(generated) if t in self.end_ids), len(generated))
            completion_ids.append(generated[:cut])
        # Decoded with t2's tokenizer (not vLLM's .text) so texts match the HF backend's for the same ids.
        texts = self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        kept = tuple(image for _, _, image in encoded for _ in range(per_prompt)) if images else ()
        return Generations(prompt_ids, completion_ids, texts, per_prompt, sum(len(c) for c in completion_ids), kept)

    def _encode(self, prompt: str | VisionPrompt) -> tuple[dict[str, Any], list[int], ImagePrompt | None]:
        """A prompt's vLLM request, the prompt ids the loss re-scores, and its ``ImagePrompt`` (None for text)."""
        if isinstance(prompt, str):
            ids = list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
            return {"prompt_token_ids": ids}, ids, None
        limit = self.max_images or 0
        if len(prompt.images) > limit:
            raise RolloutBackendError(
                f"a prompt shows {len(prompt.images)} images; this vLLM engine takes at most {limit}",
                "build it with max_images of the task's largest item",
            )
        request: dict[str, Any] = {"prompt_token_ids": list(prompt.ids)}
        if prompt.images:
            request["multi_modal_data"] = {"image": list(prompt.images)}
        return request, list(prompt.encoded.ids), prompt.encoded

    def sleep(self) -> None:
        """Hand the engine's GPU memory back (vLLM sleep level 1: weights to CPU, KV cache dropped)."""
        if not self.enable_sleep_mode:
            raise RolloutBackendError(
                "this vLLM engine was built without enable_sleep_mode", "pass enable_sleep_mode=True"
            )
        self.llm.sleep(level=1)
        self.asleep = True

    def wake_up(self) -> None:
        """Take the memory back (weights restored from the CPU copy) before the next push or generation."""
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def _awake(self, action: str) -> None:
        if self.asleep:
            raise RolloutBackendError(f"cannot {action} a sleeping vLLM engine", "call wake_up() first")


def _check_api(vllm: Any, sleep_mode: bool, *, vision: bool = False) -> None:
    """One line naming what an installed vLLM lacks, instead of a TypeError deep inside it."""
    methods = ["collective_rpc", "reset_prefix_cache", "generate"] + (["sleep", "wake_up"] if sleep_mode else [])
    missing = [f"LLM.{name}" for name in methods if not callable(getattr(vllm.LLM, name, None))]
    try:  # EngineArgs is a dataclass (vllm/engine/arg_utils.py); should that change, vLLM's own TypeError remains
        from vllm.engine.arg_utils import EngineArgs  # noqa: PLC0415 - optional: vllm is the [vllm] extra

        fields = {f.name for f in dataclasses.fields(EngineArgs)}
    except (ImportError, TypeError):
        fields = None
    wanted = ["worker_extension_cls", "distributed_executor_backend"] + (["enable_sleep_mode"] if sleep_mode else [])
    wanted += ["limit_mm_per_prompt"] if vision else []
    missing += [f"EngineArgs.{name}" for name in wanted if fields is not None and name not in fields]
    if missing:
        version = getattr(vllm, "__version__", "?")
        raise RolloutBackendError(f"the installed vllm {version} lacks {', '.join(missing)}", UPGRADE_HINT)


def _default_end_ids(model_path: str | os.PathLike[str], tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The tokenizer's EOS plus the folder's generation_config eos_token_id(s), as transformers generation uses."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    config = Path(model_path) / "generation_config.json"
    if config.is_file():
        from transformers import GenerationConfig  # noqa: PLC0415 - heavy: transformers (~2 s), only with the vLLM backend

        ends = GenerationConfig.from_pretrained(str(model_path)).eos_token_id
        ids.update(ends if isinstance(ends, list) else [ends] if ends is not None else [])
    return ids


def _launcher_env(device: torch.device) -> torch.device:
    """Set the torchrun variables vLLM's external launcher reads; returns the device with its index.

    Under torchrun / accelerate they are set already and t2's device is cuda:LOCAL_RANK.
    Without a launcher: rank 0 of a world of 1 on the training device, on a free local port.
    vLLM puts its worker on cuda:LOCAL_RANK, so that must be the training GPU.
    """
    if "LOCAL_RANK" in os.environ:
        local = int(os.environ["LOCAL_RANK"])
        if device.index is not None and device.index != local:
            raise RolloutBackendError(f"device {device} is not this rank's GPU cuda:{local}", "use --device cuda")
    else:
        local = device.index or 0
        os.environ["LOCAL_RANK"] = str(local)
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(probe.getsockname()[1])
    # An explicit index, so that tensors already on the training GPU pass push_weights without a copy.
    return torch.device("cuda", local) if device.type == "cuda" else device
