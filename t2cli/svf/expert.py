"""The expert format: a folder with ``expert.safetensors``, ``expert_config.json`` and a model card.

``expert.safetensors`` holds one float32 vector z per adapted matrix, keyed by the
matrix name (``model.layers.3.mlp.down_proj``): the *effective* multiplier, so
W' = U diag(S * z) Vh exactly, whatever parametrisation trained it. That keeps
experts mixable and transferable. ``expert_config.json`` says which base model,
which targets, how z was trained, the task, metrics and parents. The registry
stores the safetensors file as a blob and the config as JSON; ``export_expert``
writes the folder back out. See docs/experts.md.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from safetensors.torch import load_file, save_file

from registry.queries import experts
from registry.records import NewExpert, ParentLink
from t2cli import __version__
from t2cli.errors import T2Error
from t2cli.models.resolve import ALIASES, model_argument
from t2cli.svf import vlm_card
from t2cli.svf.names import check_expert_name, expert_not_found

if TYPE_CHECKING:
    from registry import Registry
    from t2cli.models.identity import ModelIdentity

FORMAT_VERSION = 1
WEIGHTS_FILE = "expert.safetensors"
CONFIG_FILE = "expert_config.json"
CARD_FILE = "README.md"


@dataclass(frozen=True)
class BaseModelRef:
    """The base model an expert was made for: the ``base_model`` block of ``expert_config.json``.

    ``fingerprint`` (the identity hash of the weights) is what decides whether a loaded model
    is that base model; the other fields say how to find it again and what shape it has.
    """

    name: str | None = None  # display name or alias, e.g. "smollm2-135m"
    fingerprint: str | None = None  # identity hash of the weights (64 hex)
    source: str | None = None  # "embedded" | "local" | "hub" | "gguf"
    location: str | None = None  # local path or Hub repo id
    revision: str | None = None  # Hub commit, when from the Hub
    architecture: str | None = None  # e.g. "LlamaForCausalLM"
    model_type: str | None = None  # e.g. "llama"
    num_layers: int | None = None
    hub_id: str | None = None  # the base's Hub id, kept by `t2 import` when the local copy is not on the Hub
    vision_layers: int | None = None  # a vision-language model's vision tower blocks (None: a text model)

    # Always written (as null when unknown), as t2 always has; hub_id and vision_layers only when set.
    _ALWAYS: ClassVar[tuple[str, ...]] = (
        "name",
        "source",
        "location",
        "revision",
        "fingerprint",
        "architecture",
        "model_type",
        "num_layers",
    )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``expert_config.json``'s ``base_model``."""
        data = {key: getattr(self, key) for key in self._ALWAYS}
        for optional in ("hub_id", "vision_layers"):
            if getattr(self, optional) is not None:
                data[optional] = getattr(self, optional)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BaseModelRef:
        """Read a ``base_model`` block; keys a newer t2 added are dropped with a warning."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"ignoring unknown base_model keys in an expert config: {', '.join(unknown)}", stacklevel=3)
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclass
class ExpertConfig:
    """Everything needed to reproduce and trust an expert besides its z vectors."""

    name: str
    base_model: BaseModelRef
    targets: str  # the --targets spec the decomposition used
    num_matrices: int
    kind: str = "trained"  # trained | mixture | transferred | imported | merged
    task: str | None = None
    category: str | None = None
    description: str | None = None
    # How z was produced. The stored z is always the effective multiplier; these flags are records.
    parametrization: dict[str, Any] = field(default_factory=lambda: {"stored": "effective_multiplier"})
    metrics: dict[str, Any] = field(default_factory=dict)
    parents: list[dict[str, Any]] = field(default_factory=list)  # {"name", "weight", "relation"}
    training: dict[str, Any] = field(default_factory=dict)
    # Where an imported expert came from: {"kind" (its kind before import), "name", "source"
    # ("folder" | "hub"), "location", "revision", "sha256" of expert.safetensors}. Empty otherwise.
    origin: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    t2_version: str = __version__
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def __post_init__(self) -> None:
        if isinstance(self.base_model, Mapping):  # a plain dict, as code written for older t2 passes it
            self.base_model = BaseModelRef.from_dict(self.base_model)
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise T2Error(f"invalid expert name {self.name!r}", "use letters, digits, '-', '_' and '.'")
        if self.format_version > FORMAT_VERSION:
            raise T2Error(
                f"expert {self.name!r} uses format version {self.format_version}; this t2 reads up to {FORMAT_VERSION}",
                "upgrade t2",
            )

    def to_json(self) -> str:
        data = asdict(self)
        data["base_model"] = self.base_model.to_dict()
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ExpertConfig:
        data = json.loads(text)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:  # a newer t2 may add fields: keep going, but say so
            warnings.warn(f"ignoring unknown expert config keys: {', '.join(unknown)}", stacklevel=2)
        values = {k: v for k, v in data.items() if k in known}
        values["base_model"] = BaseModelRef.from_dict(values.get("base_model") or {})
        return cls(**values)


def save_z(z: dict[str, torch.Tensor], path: Path, *, name: str) -> None:
    """Write z vectors as float32 safetensors (sorted keys, so identical z give identical bytes)."""
    tensors = {key: z[key].detach().to("cpu", torch.float32).contiguous() for key in sorted(z)}
    save_file(tensors, str(path), metadata={"format": f"t2-expert/{FORMAT_VERSION}", "name": name})
    _canonical_header(path)


def _canonical_header(path: Path) -> None:
    """Rewrite a safetensors file's JSON header with sorted keys.

    safetensors writes ``__metadata__`` in hash-map order, which differs between processes, so
    the same z would get a different sha256 (and a second blob) each time it is saved.
    """
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads the header to 8 bytes with spaces
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + length :])


def load_z(path: Path) -> dict[str, torch.Tensor]:
    """Read z vectors; refuses anything but 1-D float tensors."""
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise T2Error(f"cannot read expert weights {path}: {exc}", "the file is truncated or corrupt") from exc
    for key, tensor in tensors.items():
        if tensor.ndim != 1 or not tensor.is_floating_point():
            raise T2Error(
                f"expert weights {path} hold {key} with shape {tuple(tensor.shape)} {tensor.dtype}",
                "an expert holds one 1-D float vector per matrix",
            )
    return {key: tensor.to(torch.float32) for key, tensor in tensors.items()}


def base_hub_id(base: BaseModelRef) -> str | None:
    """The Hub id of an expert's base model, when it has one (Hub models and the embedded alias)."""
    if base.hub_id:
        return str(base.hub_id)
    if base.source == "hub":
        return base.location
    alias = ALIASES.get(str(base.name or "").lower())
    if base.source == "embedded" and alias is not None:
        return alias.hub_id
    return None


def base_model_argument(config: ExpertConfig, model: str | None = None) -> str | None:
    """What to load for an expert: ``model`` when given, else its base model's alias or location."""
    return model or model_argument(config.base_model.name, config.base_model.location)


class BaseModelMismatch(T2Error):
    """An expert used with a model whose weights are not those of its base model."""


def check_base_model(name: str, base: BaseModelRef, identity: ModelIdentity) -> None:
    """Refuse to use expert ``name`` (made for ``base``) with the model ``identity`` names, unless the weights match."""
    if base.fingerprint == identity.fingerprint:
        return
    own = model_argument(base.name, base.location)
    other = model_argument(identity.ref.name, identity.ref.location) or identity.ref.name
    raise BaseModelMismatch(
        f"expert {name!r} was made for {base.name}; the model found is {identity.ref.name}, whose weights differ "
        f"(fingerprint {identity.fingerprint[:12]}, not {str(base.fingerprint)[:12]})",
        (f"use --model {own}" if own and own != other else f"load {base.name} (the model it was made for) with --model")
        + f", or `t2 transfer {name} --to {other}` to make a copy for {identity.ref.name}",
    )


def model_card(config: ExpertConfig, matrices: Iterable[str] = ()) -> str:
    """A Hugging Face model card (YAML front matter + prose) for the expert folder.

    ``base_model`` is written only when the base has a Hub id (the Hub refuses other values);
    ``base_model_relation: adapter`` files the expert under its base model's adapters.
    ``matrices``: the adapted matrices' names; for a vision-language base the card says which
    parts (language model, vision tower, projector) they are in.
    """
    base = config.base_model
    hub_id = base_hub_id(base)
    lines = ["---", "library_name: t2"]
    if hub_id:
        lines += [f"base_model: {hub_id}", "base_model_relation: adapter"]
    lines += [f"pipeline_tag: {vlm_card.pipeline_tag(base)}", "tags:", "- t2", "- transformer-squared", "- svf"]
    lines += ["- vision-language"] if vlm_card.is_vlm(base) else []
    lines.append(f"- {config.kind}")
    if config.task:
        lines.append(f"- task:{config.task}")
    lines += ["---", "", f"# {config.name}", ""]
    lines.append(
        f"A Transformer-Squared SVF expert ({config.kind}) for **{base.name}** "
        f"({base.architecture}), adapting {config.num_matrices} matrices (targets `{config.targets}`)."
    )
    lines += vlm_card.vlm_section(base, matrices, hub_id)
    if config.description:
        lines += ["", config.description]
    if config.task:
        lines += ["", f"Task: `{config.task}`" + (f" (category {config.category})" if config.category else "")]
    if config.metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in sorted(config.metrics.items())]
    if config.parents or config.origin:
        lines += ["", "## Lineage", ""]
        lines += [
            f"- {p['relation']} from `{p['name']}`"
            + (f" (weight {p['weight']})" if p.get("weight") is not None else "")
            for p in config.parents
        ]
        if config.origin:
            where = config.origin.get("location") or "?"
            lines.append(
                f"- imported from `{where}` (originally a {config.origin.get('kind', '?')} expert "
                f"named `{config.origin.get('name', '?')}`)"
            )
    lines += [
        "",
        "## Use",
        "",
        "```bash",
        f't2 ask "..." --strategy expert:{config.name}',
        "```",
        "",
        f"Base model fingerprint: `{base.fingerprint}`. Format version {config.format_version}, t2 {config.t2_version}.",
        "",
    ]
    return "\n".join(lines)


def write_expert_folder(folder: Path, z: dict[str, torch.Tensor], config: ExpertConfig) -> Path:
    """Write the three files into a new folder atomically (temp folder, then rename)."""
    folder = folder.absolute()
    if folder.exists():
        raise T2Error(f"{folder} already exists", "choose another folder or remove it first")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".expert-", dir=folder.parent))
    try:
        save_z(z, tmp / WEIGHTS_FILE, name=config.name)
        (tmp / CONFIG_FILE).write_text(config.to_json())
        (tmp / CARD_FILE).write_text(model_card(config, z))
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def register_expert(
    registry: Registry,
    z: dict[str, torch.Tensor],
    config: ExpertConfig,
    *,
    base_model_id: int,
    decomposition_id: int | None,
    replace: bool = False,
    link_parents: bool = True,
) -> int:
    """Store z as a blob and insert the expert row with its parent links; returns the expert id.

    ``link_parents=False`` keeps the lineage in the config only (imported experts: a local expert
    that happens to share a parent's name is not that parent).
    """
    check_expert_name(config.name)  # the one rule, whichever command registers it
    tmp_dir = registry.home / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix="expert-", suffix=".safetensors", dir=tmp_dir)
    os.close(fd)
    try:
        save_z(z, Path(tmp_name), name=config.name)
        info = registry.blobs.put_file(Path(tmp_name), move=True)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    parents = (
        tuple(ParentLink(p["name"], p.get("weight"), p["relation"]) for p in config.parents) if link_parents else ()
    )
    new = NewExpert(
        name=config.name,
        base_model_id=base_model_id,
        decomposition_id=decomposition_id,
        kind=config.kind,
        task=config.task,
        category=config.category,
        description=config.description,
        targets_spec=config.targets,
        matrices=tuple(sorted(z)),
        config_json=config.to_json(),
        parents=parents,
    )
    return experts.add(registry, new, info, replace=replace)


@dataclass(frozen=True)
class LoadedExpert:
    """An expert read back from the registry."""

    name: str
    z: dict[str, torch.Tensor]
    config: ExpertConfig
    base_model_id: int
    decomposition_id: int | None


def load_expert(registry: Registry, name: str) -> LoadedExpert:
    """Read an expert's z vectors (hash-checked) and config from the registry."""
    row = experts.get(registry, name)
    if row is None:
        raise expert_not_found(name, experts.names(registry))
    registry.blobs.check(row.blob_sha256)
    return LoadedExpert(
        name,
        load_z(registry.blobs.path(row.blob_sha256)),
        ExpertConfig.from_json(row.config_json),
        row.base_model_id,
        row.decomposition_id,
    )
