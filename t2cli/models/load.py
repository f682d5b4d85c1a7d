"""Load a resolved model and its tokenizer with transformers (a GGUF file dequantised once, cached).

A vision-language model loads whole (vision tower, projector and language model) as an
image-text-to-text model; t2 adapts matrices inside it by their module names.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from t2cli.errors import ModelLoadError, first_line
from t2cli.models.resolve import ModelRef
from t2cli.models.targets import is_vision_language

if TYPE_CHECKING:
    from types import TracebackType

    from transformers import PreTrainedModel, PreTrainedTokenizerBase, ProcessorMixin


def load_model(
    ref: ModelRef, *, device: str = "cpu", dtype: str | None = None, dequantised_cache: Path | None = None
) -> PreTrainedModel:
    """Load the model for inference with transformers (GGUF is dequantised), in eval mode.

    ``dequantised_cache``: for a GGUF model, a folder for its dequantised float32 weights
    (safetensors). The first load fills it; later loads read it instead of dequantising
    again (seconds instead of ~25 s for the embedded model). Bit-identical either way.
    """
    kwargs: dict[str, Any] = {"trust_remote_code": False}
    if dtype:
        kwargs["dtype"] = getattr(torch, dtype)
    if ref.is_gguf and dequantised_cache is not None:
        model = _load_dequantised(ref, dequantised_cache, kwargs)
    else:
        model = _from_pretrained(ref, ref.path, {**kwargs, "gguf_file": ref.gguf_file} if ref.is_gguf else kwargs)
    return model.to(device).eval()  # type: ignore[arg-type]  # transformers wraps .to in functools.wraps, whose stub loses the method's self


def _from_pretrained(ref: ModelRef, path: Path, kwargs: dict[str, Any]) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText  # noqa: PLC0415 - heavy: transformers (~2 s), only when loading a model

    # transformers 5 maps most vision-language configs to no causal-LM class at all.
    model_type = _model_type(path, kwargs)
    auto = AutoModelForImageTextToText if model_type and is_vision_language(model_type) else AutoModelForCausalLM
    try:
        with _quiet_transformers():
            return auto.from_pretrained(path, **kwargs)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load model {ref.location}: {first_line(exc)}",
            "check that the file is complete (re-download or re-copy it) and of a supported architecture",
        ) from exc


def _model_type(path: Path, kwargs: dict[str, Any]) -> str | None:
    """``model_type`` from a folder's config.json, read as plain JSON (None for a GGUF file: text models only)."""
    if kwargs.get("gguf_file"):
        return None
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None  # transformers reports the unreadable config in its own words
    return model_type if isinstance(model_type, str) else None


def _load_dequantised(ref: ModelRef, folder: Path, kwargs: dict[str, Any]) -> PreTrainedModel:
    """Load a GGUF model through its dequantised copy in ``folder``, writing the copy on first use."""
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
    from transformers import AutoTokenizer  # noqa: PLC0415 - heavy: transformers (~2 s), only when loading a model

    kwargs: dict[str, Any] = {"trust_remote_code": False}
    if ref.is_gguf:
        kwargs["gguf_file"] = ref.gguf_file
    try:
        with _quiet_transformers():
            return AutoTokenizer.from_pretrained(ref.path, **kwargs)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the tokenizer of {ref.location}: {first_line(exc)}") from exc


def load_processor(ref: ModelRef) -> ProcessorMixin:
    """Load a vision-language model's processor: image processor, tokenizer and chat template with image parts."""
    from transformers import AutoProcessor  # noqa: PLC0415 - heavy: transformers (~2 s), only when loading a model

    try:
        with _quiet_transformers():
            processor = AutoProcessor.from_pretrained(ref.path, trust_remote_code=False)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load the processor of {ref.location}: {first_line(exc)}",
            "a vision-language model folder needs its processor files (preprocessor_config.json or "
            "processor_config.json, with the tokenizer and chat template) to be shown images",
        ) from exc
    if not hasattr(processor, "image_processor"):  # AutoProcessor falls back to the bare tokenizer
        raise ModelLoadError(
            f"{ref.location} has no image processor (AutoProcessor gave a {type(processor).__name__})",
            "copy the model's preprocessor_config.json / processor_config.json next to its config.json",
        )
    return processor


class _quiet_transformers:
    """Silence transformers' own progress bars and info logs (t2 draws its own)."""

    def __enter__(self) -> None:
        from transformers.utils import logging as hf_logging  # noqa: PLC0415 - heavy: transformers (~2 s), only when loading a model

        self._verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        # The GGUF loader draws a plain tqdm bar that ignores the switch above; errors are
        # raised as exceptions, not printed, so nothing of value is lost.
        self._stderr = contextlib.redirect_stderr(io.StringIO())
        self._stderr.__enter__()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        from transformers.utils import logging as hf_logging  # noqa: PLC0415 - heavy: transformers (~2 s), only when loading a model

        self._stderr.__exit__(exc_type, exc, traceback)
        hf_logging.set_verbosity(self._verbosity)
        hf_logging.enable_progress_bar()
