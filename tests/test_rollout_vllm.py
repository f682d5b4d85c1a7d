"""The vLLM rollout backend (t2cli/train/rollout_vllm.py) against a fake ``vllm`` package at the import boundary.

vLLM cannot run here (no GPU), so a fixture installs a small fake ``vllm`` into ``sys.modules``.
It mimics the real classes, signatures and attribute names (read in vllm-project/vllm, files
named on each class) and is strict where the real one is: unknown ``LLM`` / ``SamplingParams``
arguments raise ``TypeError``, the worker extension is mixed in and conflict-checked the way
``WorkerWrapperBase.init_worker`` does it, ``collective_rpc`` resolves methods by name like
``run_method``, the external launcher needs ``RANK`` / ``LOCAL_RANK``. It records every call,
so the tests state what the adapter sends: constructor arguments, one request per completion
with its seed and prompt ids, the exact tensors pushed, the prefix-cache reset after a push.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.machinery
import os
import subprocess
import sys
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import torch

from t2cli.errors import T2Error
from t2cli.runtime.generation import Generations, render_prompt, sample_key

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
EOS, UNK = 2, 3  # the tiny tokenizer's <|im_end|> (its eos) and <unk> (a second eos in generation_config)


# --------------------------------------------------------------------------- the fake vllm package


class FakeVLLM:
    """State shared by the fake package's classes: the engines built and one log of calls, in order."""

    def __init__(self) -> None:
        self.engines: list[Any] = []
        self.log: list[tuple] = []
        self.honour_stops = True  # vLLM ends a request at its stop tokens; False: return canned ids as they are
        self.reset_result = True
        # The canned completion for a request: f(prompt_token_ids, SamplingParams) -> token ids.
        self.respond: Callable[[list[int], Any], list[int]] = lambda ids, params: [
            4 + (params.seed or 0) % 10,
            ids[-1],
            EOS,
        ]
        # vLLM's multimodal processor, for requests with images: f(prompt_token_ids, images) -> the ids it runs
        # (placeholders expanded). None: the engine's model takes no images.
        self.expand: Callable[[list[int], list[Any]], list[int]] | None = None
        # vLLM's VLM loader: WeightsMapper prefixes (applied in order, as WeightsMapper.apply) and the names its
        # AutoWeightsLoader then finds, which raises for any other. None: every name is taken (a text model here).
        self.mapper: dict[str, str] = {}
        self.loadable: set[str] | None = None

    @property
    def engine(self) -> Any:
        (engine,) = self.engines
        return engine


def build_fake_vllm(state: FakeVLLM, *, drop: Iterable[str] = ()) -> dict[str, types.ModuleType]:
    """Modules vllm, vllm.engine, vllm.engine.arg_utils and vllm.outputs; ``drop``: LLM methods left out."""

    # vllm/engine/arg_utils.py: EngineArgs is a dataclass; LLM(**kwargs) ends in EngineArgs(...), so an unknown
    # argument is a TypeError there. The subset of fields t2 may pass.
    @dataclasses.dataclass
    class EngineArgs:
        model: str
        tokenizer: str | None = None
        dtype: str = "auto"
        seed: int = 0
        gpu_memory_utilization: float = 0.9
        max_model_len: int | None = None
        tensor_parallel_size: int = 1
        distributed_executor_backend: str | None = None
        worker_extension_cls: str = ""
        enable_sleep_mode: bool = False
        skip_tokenizer_init: bool = False
        limit_mm_per_prompt: dict | None = None
        enforce_eager: bool = False
        max_num_seqs: int | None = None

    # vllm/sampling_params.py: SamplingParams (a msgspec Struct; the fields t2 uses and their neighbours).
    @dataclasses.dataclass(kw_only=True)
    class SamplingParams:
        n: int = 1
        presence_penalty: float = 0.0
        frequency_penalty: float = 0.0
        repetition_penalty: float = 1.0
        temperature: float = 1.0
        top_p: float = 1.0
        top_k: int = 0
        min_p: float = 0.0
        seed: int | None = None
        stop: str | list[str] | None = None
        stop_token_ids: list[int] | None = None
        ignore_eos: bool = False
        max_tokens: int | None = 16
        min_tokens: int = 0
        logprobs: int | None = None
        logit_bias: dict[int, float] | None = None
        detokenize: bool = True
        skip_special_tokens: bool = True

        def __post_init__(self) -> None:
            if self.n < 1 or self.temperature < 0 or (self.max_tokens is not None and self.max_tokens < 1):
                raise ValueError(f"invalid sampling parameters {self}")

    # vllm/outputs.py: CompletionOutput (dataclass) and RequestOutput.
    @dataclasses.dataclass
    class CompletionOutput:
        index: int
        text: str
        token_ids: list[int]
        cumulative_logprob: float | None
        logprobs: Any
        finish_reason: str | None = None
        stop_reason: int | str | None = None

    class RequestOutput:
        def __init__(
            self,
            request_id: str,
            prompt: str | None,
            prompt_token_ids: list[int] | None,
            prompt_logprobs: Any,
            outputs: list[CompletionOutput],
            finished: bool,
            **kwargs: Any,
        ) -> None:
            self.request_id, self.prompt, self.prompt_token_ids = request_id, prompt, prompt_token_ids
            self.prompt_logprobs, self.outputs, self.finished = prompt_logprobs, outputs, finished

    class FakeModel:
        """vLLM's model: ``load_weights(weights: Iterable[tuple[str, Tensor]]) -> set[str]`` (e.g. LlamaForCausalLM)."""

        def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
            pairs = list(weights)
            state.log.append(("load_weights", pairs, torch.is_grad_enabled()))
            loaded = set()
            for name, _ in pairs:
                for prefix, new in state.mapper.items():  # vllm/model_executor/models/utils.py WeightsMapper
                    if name.startswith(prefix):
                        name = name.replace(prefix, new, 1)
                if state.loadable is not None and name not in state.loadable:
                    raise ValueError(f"There is no module or parameter named {name!r}")  # AutoWeightsLoader's
                loaded.add(name)
            return loaded

    class GPUWorker:
        """vllm/v1/worker/gpu_worker.py Worker: the attributes an extension must not shadow, and get_model()."""

        def __init__(self) -> None:
            self.model_runner = types.SimpleNamespace(model=FakeModel())

        def get_model(self) -> Any:
            return self.model_runner.model

        def load_model(self) -> None: ...

        def execute_model(self, scheduler_output: Any) -> None: ...

    class LLM:
        """vllm/entrypoints/llm.py LLM, with only the engine replaced."""

        def __init__(self, model: str, **kwargs: Any) -> None:
            self.engine_args = EngineArgs(model=model, **kwargs)
            self.kwargs = {"model": model, **kwargs}
            if self.engine_args.distributed_executor_backend == "external_launcher":
                # vllm/v1/executor/uniproc_executor.py ExecutorWithExternalLauncher._distributed_args
                self.rank, self.local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
            worker_class: type = GPUWorker
            if self.engine_args.worker_extension_cls:
                # vllm/v1/worker/worker_base.py WorkerWrapperBase.init_worker (resolve_obj_by_qualname + conflict check)
                module_name, _, class_name = self.engine_args.worker_extension_cls.rpartition(".")
                extension = getattr(importlib.import_module(module_name), class_name)
                for attr in dir(extension):
                    if not attr.startswith("__"):
                        assert not hasattr(GPUWorker, attr), f"worker already has {attr}"
                worker_class = type("ExtendedWorker", (GPUWorker, extension), {})
            self.worker = worker_class()
            self.asleep = False
            state.engines.append(self)

        def generate(
            self,
            prompts: Any,
            sampling_params: Any = None,
            *,
            use_tqdm: Any = True,
            lora_request: Any = None,
            priority: list[int] | None = None,
            tokenization_kwargs: dict | None = None,
        ) -> list[RequestOutput]:
            assert not self.asleep, "generate on a sleeping engine"
            prompts = list(prompts)
            if not isinstance(sampling_params, list):
                sampling_params = [sampling_params or SamplingParams()] * len(prompts)
            params = sampling_params
            if len(params) != len(prompts):
                raise ValueError("The lengths of prompts and sampling_params must be the same.")
            state.log.append(("generate", [dict(p) for p in prompts], list(params)))
            # vllm/entrypoints/llm.py: with skip_tokenizer_init there is no detokenizer; t2 asks for token ids only
            assert not (self.engine_args.skip_tokenizer_init and any(sp.detokenize for sp in params))
            outputs = []
            for i, (prompt, sp) in enumerate(zip(prompts, params)):
                ids = list(prompt["prompt_token_ids"])  # a TokensPrompt; anything else is a bug in the adapter
                assert set(prompt) <= {"prompt_token_ids", "multi_modal_data"}, prompt
                if "multi_modal_data" in prompt:
                    ids = self._process_images(ids, prompt["multi_modal_data"])
                tokens = list(state.respond(ids, sp))
                if state.honour_stops and sp.stop_token_ids:
                    stop = next((j + 1 for j, t in enumerate(tokens) if t in sp.stop_token_ids), len(tokens))
                    tokens = tokens[:stop]
                tokens = tokens[: sp.max_tokens]
                completion = CompletionOutput(0, f"<text of {tokens}>", tokens, None, None, "stop")
                outputs.append(RequestOutput(str(i), None, ids, None, [completion], True))
            return outputs

        def _process_images(self, ids: list[int], data: dict[str, Any]) -> list[int]:
            """vLLM's multimodal processing: the placeholders of ``ids`` expanded for the images."""
            # vllm/multimodal/processing/processor.py BaseMultiModalProcessor: no tokenizer, no processor
            if state.expand is None or self.engine_args.skip_tokenizer_init:
                raise ValueError("this engine's model takes no images, or was built with skip_tokenizer_init")
            (images,) = data.values() if set(data) == {"image"} else (None,)
            assert isinstance(images, list), data  # t2 sends a list of images per prompt
            limit = (self.engine_args.limit_mm_per_prompt or {}).get("image", 999)
            if len(images) > limit:  # vllm/multimodal/processing/context.py validate_num_items
                raise ValueError(f"At most {limit} image(s) may be provided in one prompt.")
            return state.expand(ids, images)

        def collective_rpc(
            self, method: Any, timeout: float | None = None, args: tuple = (), kwargs: dict | None = None
        ) -> list:
            state.log.append(("collective_rpc", method))
            # vllm/v1/serial_utils.py run_method: a name is looked up on the worker
            if isinstance(method, str):
                try:
                    func = getattr(self.worker, method)
                except AttributeError:
                    raise NotImplementedError(f"Method {method!r} is not implemented.") from None
            else:
                func = lambda *a, **k: method(self.worker, *a, **k)
            return [func(*args, **(kwargs or {}))]

        def reset_prefix_cache(self, reset_running_requests: bool = False, reset_connector: bool = False) -> bool:
            state.log.append(("reset_prefix_cache",))
            return state.reset_result

        def sleep(self, level: int = 1) -> None:
            assert self.engine_args.enable_sleep_mode, "Sleep mode is not enabled"
            state.log.append(("sleep", level))
            self.asleep = True

        def wake_up(self, tags: list[str] | None = None) -> None:
            state.log.append(("wake_up", tags))
            self.asleep = False

    for name in drop:
        delattr(LLM, name)

    def module(name: str, **attrs: Any) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)  # find_spec("vllm") finds it
        mod.__dict__.update(attrs)
        return mod

    return {
        "vllm": module(
            "vllm", LLM=LLM, SamplingParams=SamplingParams, RequestOutput=RequestOutput, __version__="0.10.2"
        ),
        "vllm.engine": module("vllm.engine"),
        "vllm.engine.arg_utils": module("vllm.engine.arg_utils", EngineArgs=EngineArgs),
        "vllm.outputs": module("vllm.outputs", RequestOutput=RequestOutput, CompletionOutput=CompletionOutput),
    }


@pytest.fixture()
def launcher_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No torchrun variables; whatever the adapter sets is removed after the test."""
    for var in LAUNCHER_VARS:
        monkeypatch.setenv(var, "placeholder")  # records the original value (or its absence) for teardown
        monkeypatch.delenv(var)


@pytest.fixture()
def fake_vllm(monkeypatch: pytest.MonkeyPatch, launcher_env: None) -> FakeVLLM:
    state = FakeVLLM()
    for name, mod in build_fake_vllm(state).items():
        monkeypatch.setitem(sys.modules, name, mod)
    return state


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the tiny tokenizer and a generation_config that ends on <|im_end|> or <unk>."""
    from transformers import GenerationConfig

    from tests.tiny_models import build_tiny_tokenizer

    folder = tmp_path_factory.mktemp("vllm-model")
    build_tiny_tokenizer(folder)
    GenerationConfig(eos_token_id=[EOS, UNK]).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path):
    from tokenizers import processors
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # Add a BOS with special tokens on, as Llama's tokenizer does, so that tokenising prompts
    # without add_special_tokens=False (not what the loss re-scores) would show.
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)]
    )
    assert tokenizer("a")["input_ids"] == [1, 14] and ids(tokenizer, "a") == [14]
    return tokenizer


def make_rollout(model_dir: Path, tokenizer, **overrides: Any):
    from t2cli.train.rollout_vllm import VLLMRollout

    args: dict[str, Any] = dict(dtype="bfloat16", seed=7, device="cpu")
    args.update(overrides)
    return VLLMRollout(model_dir, tokenizer, **args)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------- availability and refusals


def test_module_imports_and_reports_missing_without_vllm() -> None:
    """Importing t2cli.train.rollout_vllm never imports vllm; with vllm absent it says so instead of failing."""
    code = (
        "import sys; sys.modules['vllm'] = None\n"  # `import vllm` would now raise ImportError
        "import t2cli.train.rollout_vllm as r, t2cli.cli.app\n"
        "assert not r.vllm_available()\n"
        "print('ok')"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_check_backend_refuses_missing_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    from t2cli.train.rollout_vllm import RolloutBackendError, check_vllm_backend, vllm_available

    monkeypatch.setitem(sys.modules, "vllm", None)
    assert not vllm_available()
    with pytest.raises(RolloutBackendError) as caught:
        check_vllm_backend("cuda:0")
    assert isinstance(caught.value, T2Error)
    assert "vllm" in caught.value.message and "not installed" in caught.value.message
    assert "pip install 't2cli[vllm]'" in caught.value.hint
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_check_backend_refuses_non_cuda_devices(fake_vllm: FakeVLLM, device: str) -> None:
    from t2cli.train.rollout_vllm import RolloutBackendError, check_vllm_backend

    with pytest.raises(RolloutBackendError) as caught:
        check_vllm_backend(device)
    assert "CUDA" in caught.value.message and device in caught.value.message
    assert "--rollout vllm" in caught.value.hint


def test_check_backend_resolves_auto(fake_vllm: FakeVLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    from t2cli.train.rollout_vllm import RolloutBackendError, check_vllm_backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RolloutBackendError, match="no CUDA GPU"):
        check_vllm_backend("auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    check_vllm_backend("auto")
    check_vllm_backend("cuda")
    check_vllm_backend("cuda:1")


def test_constructor_refuses_missing_vllm(monkeypatch: pytest.MonkeyPatch, model_dir: Path, tokenizer) -> None:
    from t2cli.train.rollout_vllm import RolloutBackendError

    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(RolloutBackendError, match="not installed"):
        make_rollout(model_dir, tokenizer)


@pytest.mark.parametrize("drop", ["collective_rpc", "reset_prefix_cache"])
def test_an_older_vllm_without_the_api_is_named(
    monkeypatch: pytest.MonkeyPatch, launcher_env: None, model_dir: Path, tokenizer, drop: str
) -> None:
    from t2cli.train.rollout_vllm import MIN_VLLM, RolloutBackendError

    state = FakeVLLM()
    for name, mod in build_fake_vllm(state, drop=[drop]).items():
        monkeypatch.setitem(sys.modules, name, mod)
    with pytest.raises(RolloutBackendError) as caught:
        make_rollout(model_dir, tokenizer)
    assert f"LLM.{drop}" in caught.value.message and "0.10.2" in caught.value.message  # the installed version
    assert f"vllm>={MIN_VLLM}" in caught.value.hint
    assert state.engines == []  # refused before an engine (and its GPU memory) is created


def test_engine_args_without_worker_extension_are_named(fake_vllm: FakeVLLM, model_dir: Path, tokenizer) -> None:
    from t2cli.train.rollout_vllm import RolloutBackendError

    @dataclasses.dataclass
    class OldEngineArgs:  # a vLLM from before worker_extension_cls
        model: str
        distributed_executor_backend: str | None = None

    sys.modules["vllm.engine.arg_utils"].EngineArgs = OldEngineArgs
    with pytest.raises(RolloutBackendError, match="EngineArgs.worker_extension_cls"):
        make_rollout(model_dir, tokenizer)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"tensor_parallel_size": 2}, "tensor_parallel_size 2"),
        ({"dtype": "auto"}, "unknown vLLM dtype"),
        ({"gpu_memory_utilization": 0.0}, "gpu_memory_utilization"),
        ({"engine_kwargs": {"worker_extension_cls": "x.Y"}}, "engine_kwargs may not set worker_extension_cls"),
    ],
)
def test_unsupported_settings_are_refused(fake_vllm: FakeVLLM, model_dir: Path, tokenizer, overrides, message) -> None:
    from t2cli.train.rollout_vllm import RolloutBackendError

    with pytest.raises(RolloutBackendError, match=message):
        make_rollout(model_dir, tokenizer, **overrides)
    assert fake_vllm.engines == []


# --------------------------------------------------------------------------- the engine it builds


def test_engine_is_colocated_in_process_with_the_weight_loader(fake_vllm: FakeVLLM, model_dir: Path, tokenizer) -> None:
    make_rollout(
        model_dir, tokenizer, gpu_memory_utilization=0.25, max_model_len=512, engine_kwargs={"enforce_eager": True}
    )
    assert fake_vllm.engine.kwargs == {
        "model": str(model_dir),
        "dtype": "bfloat16",
        "seed": 7,
        "gpu_memory_utilization": 0.25,
        "max_model_len": 512,
        "tensor_parallel_size": 1,
        "distributed_executor_backend": "external_launcher",
        "worker_extension_cls": "t2cli.train.rollout_vllm.WeightLoaderExtension",
        "enforce_eager": True,
        "skip_tokenizer_init": True,
    }
    # Without a launcher: rank 0 of a world of 1, on a free port (what the external launcher reads).
    assert (os.environ["RANK"], os.environ["LOCAL_RANK"], os.environ["WORLD_SIZE"]) == ("0", "0", "1")
    assert int(os.environ["MASTER_PORT"]) > 0
    assert (fake_vllm.engine.rank, fake_vllm.engine.local_rank) == (0, 0)


def test_defaults_leave_optional_engine_settings_to_vllm(fake_vllm: FakeVLLM, model_dir: Path, tokenizer) -> None:
    make_rollout(model_dir, tokenizer)
    kwargs = fake_vllm.engine.kwargs
    assert kwargs["gpu_memory_utilization"] == 0.3
    assert "max_model_len" not in kwargs and "enable_sleep_mode" not in kwargs


def test_under_torchrun_the_launcher_variables_are_kept(
    fake_vllm: FakeVLLM, monkeypatch: pytest.MonkeyPatch, model_dir: Path, tokenizer
) -> None:
    from t2cli.train.rollout_vllm import RolloutBackendError

    torchrun = {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "MASTER_ADDR": "node0", "MASTER_PORT": "29500"}
    for var, value in torchrun.items():
        monkeypatch.setenv(var, value)
    rollout = make_rollout(model_dir, tokenizer, device="cuda")
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["MASTER_PORT"]) == ("5", "8", "29500")
    assert rollout.device == torch.device("cuda", 1)  # this rank's GPU, where vLLM puts its worker
    with pytest.raises(RolloutBackendError, match="not this rank's GPU"):
        make_rollout(model_dir, tokenizer, device="cuda:0")


# --------------------------------------------------------------------------- generation


def test_generate_sends_one_seeded_request_per_completion_in_output_order(
    fake_vllm: FakeVLLM, model_dir: Path, tokenizer
) -> None:
    rollout = make_rollout(model_dir, tokenizer)
    prompts = [render_prompt(tokenizer, "1+1=?"), render_prompt(tokenizer, "2+5=?", "be brief")]
    keys = [sample_key(0, 3, i, j) for i in range(2) for j in range(3)]
    fake_vllm.respond = lambda prompt_ids, params: [keys.index(params.seed) + 4, prompt_ids[-2], EOS]

    gens = rollout.generate(prompts, max_new_tokens=6, temperature=0.7, per_prompt=3, sample_keys=keys)

    ((_, requests, params),) = [entry for entry in fake_vllm.log if entry[0] == "generate"]
    expected_ids = [ids(tokenizer, p) for p in prompts for _ in range(3)]
    assert requests == [{"prompt_token_ids": e} for e in expected_ids]  # token ids, tokenised without specials
    assert [p.seed for p in params] == keys
    assert all((p.n, p.temperature, p.max_tokens, p.top_p) == (1, 0.7, 6, 1.0) for p in params)
    assert all(p.stop_token_ids == [EOS, UNK] for p in params)
    assert isinstance(gens, Generations)
    assert gens.prompt_ids == expected_ids and gens.per_prompt == 3
    # completion k is the k-th request's: per_prompt consecutive per prompt
    assert gens.completion_ids == [[k + 4, expected_ids[k][-2], EOS] for k in range(6)]
    assert gens.texts == tokenizer.batch_decode(gens.completion_ids, skip_special_tokens=True)
    assert gens.new_tokens == 18


def test_greedy_at_temperature_zero_ignores_the_keys(fake_vllm: FakeVLLM, model_dir: Path, tokenizer) -> None:
    rollout = make_rollout(model_dir, tokenizer)
    rollout.generate(["a", "b"], max_new_tokens=4, temperature=0.0, per_prompt=2, sample_keys=[11, 12, 13, 14])
    rollout.generate(["a"], max_new_tokens=4, temperature=1.0)  # sampled without keys: the engine's own stream
    (first, second) = [entry[2] for entry in fake_vllm.log if entry[0] == "generate"]
    assert [(p.temperature, p.seed) for p in first] == [(0.0, None)] * 4
    assert [(p.temperature, p.seed) for p in second] == [(1.0, None)]


def test_requests_do_not_depend_on_the_batch_split(fake_vllm: FakeVLLM, model_dir: Path, tokenizer) -> None:
    """Splitting the prompts over calls (or ranks) sends each completion the same prompt ids and seed."""
    rollout = make_rollout(model_dir, tokenizer)
    prompts = ["3+4=?", "9-2=?", "5*5=?", "8/2=?"]
    keys = [sample_key(1, 2, i, j) for i in range(4) for j in range(2)]
    fake_vllm.respond = lambda prompt_ids, params: [4 + params.seed % 7, 4 + (params.seed // 7) % 7, prompt_ids[0]]
    whole = rollout.generate(prompts, max_new_tokens=5, temperature=1.0, per_prompt=2, sample_keys=keys)
    first = rollout.generate(prompts[:1], max_new_tokens=5, temperature=1.0, per_prompt=2, sample_keys=keys[:2])
    rest = rollout.generate(prompts[1:], max_new_tokens=5, temperature=1.0, per_prompt=2, sample_keys=keys[2:])
    assert first.completion_ids + rest.completion_ids == whole.completion_ids
    assert first.prompt_ids + rest.prompt_ids == whole.prompt_ids
    calls = [entry for entry in fake_vllm.log if entry[0] == "generate"]
    sent = lambda call: [(r["prompt_token_ids"], p.seed) for r, p in zip(call[1], call[2])]
    assert sent(calls[1]) + sent(calls[2]) == sent(calls[0])


@pytest.mark.parametrize("honour_stops", [True, False])
def test_completions_are_cut_after_the_first_end_token(
    fake_vllm: FakeVLLM, model_dir: Path, tokenizer, honour_stops: bool
) -> None:
    """Cut after <|im_end|> or generation_config's <unk>, whether or not vLLM itself stopped there."""
    fake_vllm.honour_stops = honour_stops
    canned = {"a": [14, 15, EOS, 16, 17], "b": [18, UNK, EOS, 19], "c": [20, 21, 22, 23, 24, 25]}
    fake_vllm.respond = lambda prompt_ids, params: canned[tokenizer.decode(prompt_ids)]
    rollout = make_rollout(model_dir, tokenizer)  # end ids from the tokenizer and the folder's generation_config
    assert rollout.end_ids == {EOS, UNK}
    gens = rollout.generate(["a", "b", "c"], max_new_tokens=4, temperature=0.0)
    assert gens.completion_ids == [[14, 15, EOS], [18, UNK], [20, 21, 22, 23]]
    assert gens.texts == ["ab", "e", "ghij"]  # specials dropped, as the HF backend decodes
    assert gens.new_tokens == 9


def test_explicit_end_ids_replace_the_defaults(fake_vllm: FakeVLLM, model_dir: Path, tokenizer) -> None:
    fake_vllm.respond = lambda prompt_ids, params: [14, UNK, 15, EOS]
    rollout = make_rollout(model_dir, tokenizer, end_ids=[EOS])
    gens = rollout.generate(["a"], max_new_tokens=8)
    assert gens.completion_ids == [[14, UNK, 15, EOS]]


def test_an_empty_share_of_prompts_calls_no_engine(fake_vllm: FakeVLLM, model_dir: Path, tokenizer) -> None:
    rollout = make_rollout(model_dir, tokenizer)
    gens = rollout.generate([], max_new_tokens=4, temperature=1.0, per_prompt=4, sample_keys=[])
    assert gens == Generations([], [], [], 4, 0)
    assert not [entry for entry in fake_vllm.log if entry[0] == "generate"]


def test_wrong_number_of_keys_is_refused(fake_vllm: FakeVLLM, model_dir: Path, tokenizer) -> None:
    rollout = make_rollout(model_dir, tokenizer)
    with pytest.raises(ValueError, match="3 sample keys for 4 completions"):
        rollout.generate(["a", "b"], max_new_tokens=4, temperature=1.0, per_prompt=2, sample_keys=[1, 2, 3])


# --------------------------------------------------------------------------- weight pushes


def test_push_hands_the_exact_tensors_to_load_weights_then_resets_the_prefix_cache(
    fake_vllm: FakeVLLM, model_dir: Path, tokenizer
) -> None:
    rollout = make_rollout(model_dir, tokenizer)
    z = torch.tensor([1.5, 0.5], requires_grad=True)
    weights = {
        "model.layers.0.mlp.down_proj.weight": torch.randn(4, 6).to(torch.bfloat16),
        # a graph node, like W'(z)
        "model.layers.0.self_attn.q_proj.weight": (torch.randn(6, 2) * z).to(torch.bfloat16),
        "model.layers.1.mlp.up_proj.weight": torch.randn(3, 5),  # float32: converted to the engine's dtype
    }
    rollout.push_weights(weights)

    assert [entry[0] for entry in fake_vllm.log] == ["collective_rpc", "load_weights", "reset_prefix_cache"]
    assert fake_vllm.log[0] == ("collective_rpc", "t2_load_weights")
    _, pushed, grad_enabled = fake_vllm.log[1]
    assert [name for name, _ in pushed] == list(weights)
    assert not grad_enabled  # vLLM's in-place copies record no autograd graph
    for (_name, sent), original in zip(pushed, weights.values()):
        assert sent.dtype == torch.bfloat16 and sent.device == torch.device("cpu") and not sent.requires_grad
        assert sent.shape == original.shape
        assert torch.equal(sent, original.detach().to(torch.bfloat16))
    # Tensors already in the engine's dtype and device are not copied: the same storage reaches vLLM.
    assert pushed[0][1].data_ptr() == weights["model.layers.0.mlp.down_proj.weight"].data_ptr()
    assert pushed[1][1].data_ptr() == weights["model.layers.0.self_attn.q_proj.weight"].data_ptr()


def test_each_push_resets_the_cache_before_the_next_generation(fake_vllm: FakeVLLM, model_dir: Path, tokenizer) -> None:
    rollout = make_rollout(model_dir, tokenizer)
    for step in range(2):
        weight = torch.full((2, 2), float(step), dtype=torch.bfloat16)
        rollout.push_weights({"model.layers.0.mlp.down_proj.weight": weight})
        rollout.generate(["a"], max_new_tokens=2)
    assert [entry[0] for entry in fake_vllm.log if entry[0] != "load_weights"] == [
        "collective_rpc",
        "reset_prefix_cache",
        "generate",
    ] * 2


def test_non_finite_weights_are_refused_before_anything_is_written(
    fake_vllm: FakeVLLM, model_dir: Path, tokenizer
) -> None:
    from t2cli.train.rollout_vllm import RolloutBackendError

    rollout = make_rollout(model_dir, tokenizer)
    bad = torch.ones(2, 2, dtype=torch.bfloat16)
    bad[1, 0] = float("inf")
    with pytest.raises(RolloutBackendError, match="model.layers.1.mlp.up_proj.weight is not finite"):
        rollout.push_weights(
            {
                "model.layers.0.mlp.up_proj.weight": torch.ones(2, 2, dtype=torch.bfloat16),
                "model.layers.1.mlp.up_proj.weight": bad,
            }
        )
    assert fake_vllm.log == []


def test_a_failed_prefix_cache_reset_is_an_error(fake_vllm: FakeVLLM, model_dir: Path, tokenizer) -> None:
    from t2cli.train.rollout_vllm import RolloutBackendError

    rollout = make_rollout(model_dir, tokenizer)
    fake_vllm.reset_result = False
    with pytest.raises(RolloutBackendError, match="prefix cache"):
        rollout.push_weights({"model.layers.0.mlp.up_proj.weight": torch.ones(2, 2, dtype=torch.bfloat16)})


def test_a_worker_without_the_extension_is_a_clear_error(fake_vllm: FakeVLLM, model_dir: Path, tokenizer) -> None:
    from t2cli.train.rollout_vllm import RolloutBackendError

    rollout = make_rollout(model_dir, tokenizer)
    rollout.llm.worker = types.SimpleNamespace()  # as if vLLM had ignored worker_extension_cls
    with pytest.raises(RolloutBackendError, match="could not load the weights"):
        rollout.push_weights({"model.layers.0.mlp.up_proj.weight": torch.ones(2, 2, dtype=torch.bfloat16)})


# --------------------------------------------------------------------------- sleep mode


def test_sleep_mode_frees_the_engine_between_rollouts(fake_vllm: FakeVLLM, model_dir: Path, tokenizer) -> None:
    from t2cli.train.rollout_vllm import RolloutBackendError

    rollout = make_rollout(model_dir, tokenizer, enable_sleep_mode=True)
    assert fake_vllm.engine.kwargs["enable_sleep_mode"] is True
    rollout.sleep()
    with pytest.raises(RolloutBackendError, match="sleeping"):
        rollout.generate(["a"], max_new_tokens=2)
    with pytest.raises(RolloutBackendError, match="sleeping"):
        rollout.push_weights({"model.layers.0.mlp.up_proj.weight": torch.ones(2, 2, dtype=torch.bfloat16)})
    rollout.wake_up()
    rollout.generate(["a"], max_new_tokens=2)
    assert [entry[0] for entry in fake_vllm.log] == ["sleep", "wake_up", "generate"]
    assert fake_vllm.log[0] == ("sleep", 1)


def test_sleep_needs_sleep_mode(fake_vllm: FakeVLLM, model_dir: Path, tokenizer) -> None:
    from t2cli.train.rollout_vllm import RolloutBackendError

    rollout = make_rollout(model_dir, tokenizer)
    with pytest.raises(RolloutBackendError, match="enable_sleep_mode"):
        rollout.sleep()


# --------------------------------------------------------------------------- wired into t2 train


def test_training_with_vllm_rollouts_pushes_w_prime_of_the_current_z_every_step(
    fake_vllm: FakeVLLM, tiny_llama: Path, tmp_path: Path
) -> None:
    """``--rollout vllm``: each step pushes W'(z) of all targets, then rolls out through the engine with keyed seeds."""
    from safetensors.torch import load_file

    from t2cli.home import open_registry
    from t2cli.svf.adaptable import load_adaptable
    from t2cli.tasks import get_task
    from t2cli.train.loop import TrainConfig, train
    from tests.distributed_support import write_task

    task = get_task(str(write_task(tmp_path / "vowels.jsonl", "vowels")))
    # Canned completions: a vowel (correct) for even seeds, a digit otherwise, so groups get mixed rewards.
    fake_vllm.respond = lambda ids, params: [14 if (params.seed or 0) % 2 == 0 else 5, EOS]
    config = TrainConfig(
        task="vowels",
        name="via-vllm",
        steps=2,
        prompts_per_step=3,
        samples_per_prompt=2,
        eval_every=2,
        valid_size=4,
        max_new_tokens=5,
        lr=0.05,
        seed=11,
        device="cpu",
        rollout="vllm",
        vllm_memory=0.25,
    )
    with open_registry() as registry:
        adaptable = load_adaptable(registry, str(tiny_llama), device="cpu")
        result = train(registry, adaptable, task, config)
        base = {
            f"{name}.weight": w.detach().clone()
            for name, w in adaptable.svf.composed(
                {n: torch.ones_like(f.S) for n, f in adaptable.svf.factors.items()}
            ).items()
        }
    engine = fake_vllm.engine
    assert engine.kwargs["model"] == str(tiny_llama) and engine.kwargs["gpu_memory_utilization"] == 0.25
    assert engine.kwargs["dtype"] == "float32" and engine.kwargs["seed"] == 11

    kinds = [entry[0] for entry in fake_vllm.log if entry[0] in ("load_weights", "generate")]
    # validation at step 0, step 1 rollouts, step 2 rollouts, validation at step 2
    assert kinds == ["load_weights", "generate"] * 4
    pushes = [entry[1] for entry in fake_vllm.log if entry[0] == "load_weights"]
    assert all(len(push) == 21 for push in pushes)
    assert not any(entry[2] for entry in fake_vllm.log if entry[0] == "load_weights")  # pushed outside autograd
    for name, tensor in pushes[0] + pushes[1]:  # z = 1 at step 0 and for step 1's rollouts: W itself
        assert torch.equal(tensor, base[name])
    (checkpoint,) = (Path(tmp_path / "t2home") / "runs").glob("*/checkpoint.safetensors")
    final_z = {k.removeprefix("z/"): v for k, v in load_file(str(checkpoint)).items() if k.startswith("z/")}
    expected = adaptable.svf.composed(final_z)  # the last validation ran on the trained z
    assert all(torch.allclose(tensor, expected[name.removesuffix(".weight")]) for name, tensor in pushes[3])
    assert any(not torch.equal(tensor, base[name]) for name, tensor in pushes[2])  # step 2 rolled out with z moved

    rollouts = [entry for entry in fake_vllm.log if entry[0] == "generate"][1]
    assert [p.seed for p in rollouts[2]] == [sample_key(11, 1, i, j) for i in range(3) for j in range(2)]
    assert any(-1 < m.reward < 1 for m in result.history)  # the engine's completions were scored and trained on


def test_the_cli_refuses_vllm_rollouts_on_the_cpu_before_loading_anything(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from t2cli.cli.app import app

    result = CliRunner().invoke(app, ["train", "--task", "addition", "--rollout", "vllm", "--device", "cpu"])
    assert result.exit_code == 1
    assert "--rollout vllm needs a CUDA GPU; the training device is cpu" in result.output
    bad = CliRunner().invoke(app, ["train", "--task", "addition", "--vllm-memory", "1.5"])
    assert bad.exit_code == 2 and "--vllm-memory must be a fraction in (0, 1]" in bad.output
    assert not (tmp_path / "t2home" / "runs").exists()  # refused before any run was started
