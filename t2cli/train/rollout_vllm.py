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
from t2cli.runtime.generation import Generations

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

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
)


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
    ``engine_kwargs``: further ``vllm.LLM`` arguments (``enforce_eager``, ``max_num_seqs``...).

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

        _check_api(vllm, enable_sleep_mode)
        self.tokenizer = tokenizer
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
            # t2 tokenises and decodes with its own tokenizer; the folder may have none (a dequantised GGUF copy).
            skip_tokenizer_init=True,
        )
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
        prompts: Sequence[str],
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
        """
        from vllm import SamplingParams  # noqa: PLC0415 - optional: vllm is the [vllm] extra

        self._awake("generate with")
        count = len(prompts) * per_prompt
        if sample_keys is not None and len(sample_keys) != count:
            raise ValueError(f"{len(sample_keys)} sample keys for {count} completions")
        if count == 0:  # a rank whose share of the step's prompts is empty
            return Generations([], [], [], per_prompt, 0)
        encoded = [list(self.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        prompt_ids = [ids for ids in encoded for _ in range(per_prompt)]
        seeded = sample_keys is not None and temperature > 0
        params = [
            SamplingParams(
                n=1,
                temperature=temperature,
                top_p=1.0,
                max_tokens=max_new_tokens,
                seed=int(sample_keys[i]) if seeded and sample_keys is not None else None,
                stop_token_ids=sorted(self.end_ids),
                detokenize=False,  # no vLLM tokenizer (skip_tokenizer_init); texts come from t2's
            )
            for i in range(count)
        ]
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
        if len(outputs) != count:
            raise RolloutBackendError(f"vLLM returned {len(outputs)} outputs for {count} requests")
        completion_ids: list[list[int]] = []
        for output in outputs:
            generated = list(output.outputs[0].token_ids)
            cut = next((i + 1 for i, t in enumerate(generated) if t in self.end_ids), len(generated))
            completion_ids.append(generated[:cut])
        # Decoded with t2's tokenizer (not vLLM's .text) so texts match the HF backend's for the same ids.
        texts = self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        return Generations(prompt_ids, completion_ids, texts, per_prompt, sum(len(c) for c in completion_ids))

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


def _check_api(vllm: Any, sleep_mode: bool) -> None:
    """One line naming what an installed vLLM lacks, instead of a TypeError deep inside it."""
    methods = ["collective_rpc", "reset_prefix_cache", "generate"] + (["sleep", "wake_up"] if sleep_mode else [])
    missing = [f"LLM.{name}" for name in methods if not callable(getattr(vllm.LLM, name, None))]
    try:  # EngineArgs is a dataclass (vllm/engine/arg_utils.py); should that change, vLLM's own TypeError remains
        from vllm.engine.arg_utils import EngineArgs  # noqa: PLC0415 - optional: vllm is the [vllm] extra

        fields = {f.name for f in dataclasses.fields(EngineArgs)}
    except (ImportError, TypeError):
        fields = None
    wanted = ["worker_extension_cls", "distributed_executor_backend"] + (["enable_sleep_mode"] if sleep_mode else [])
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
