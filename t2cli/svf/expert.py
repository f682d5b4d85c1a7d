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
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from t2cli import __version__
from t2cli.errors import ExpertNotFound, T2Error
from t2cli.svf.names import check_expert_name, expert_not_found

if TYPE_CHECKING:
    from registry import Registry

FORMAT_VERSION = 1
WEIGHTS_FILE = "expert.safetensors"
CONFIG_FILE = "expert_config.json"
CARD_FILE = "README.md"


@dataclass
class ExpertConfig:
    """Everything needed to reproduce and trust an expert besides its z vectors."""

    name: str
    base_model: dict[str, Any]  # name, fingerprint, architecture, model_type, num_layers, source, location
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
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise T2Error(f"invalid expert name {self.name!r}", "use letters, digits, '-', '_' and '.'")
        if self.format_version > FORMAT_VERSION:
            raise T2Error(
                f"expert {self.name!r} uses format version {self.format_version}; this t2 reads up to {FORMAT_VERSION}",
                "upgrade t2",
            )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ExpertConfig:
        import warnings

        data = json.loads(text)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:  # a newer t2 may add fields: keep going, but say so
            warnings.warn(f"ignoring unknown expert config keys: {', '.join(unknown)}", stacklevel=2)
        return cls(**{k: v for k, v in data.items() if k in known})


def save_z(z: dict[str, torch.Tensor], path: Path, *, name: str) -> None:
    """Write z vectors as float32 safetensors (sorted keys, so identical z give identical bytes)."""
    from safetensors.torch import save_file

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
    from safetensors.torch import load_file

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


def base_hub_id(base: dict[str, Any]) -> str | None:
    """The Hub id of an expert's base model, when it has one (Hub models and the embedded alias)."""
    from t2cli.models.resolve import ALIASES

    if base.get("hub_id"):
        return str(base["hub_id"])
    if base.get("source") == "hub":
        return base.get("location")
    alias = ALIASES.get(str(base.get("name", "")).lower())
    if base.get("source") == "embedded" and alias is not None:
        return alias.hub_id
    return None


def model_card(config: ExpertConfig) -> str:
    """A Hugging Face model card (YAML front matter + prose) for the expert folder.

    ``base_model`` is written only when the base has a Hub id (the Hub refuses other values);
    ``base_model_relation: adapter`` files the expert under its base model's adapters.
    """
    base = config.base_model
    hub_id = base_hub_id(base)
    lines = ["---", "library_name: t2"]
    if hub_id:
        lines += [f"base_model: {hub_id}", "base_model_relation: adapter"]
    lines += ["pipeline_tag: text-generation", "tags:", "- t2", "- transformer-squared", "- svf", f"- {config.kind}"]
    if config.task:
        lines.append(f"- task:{config.task}")
    lines += ["---", "", f"# {config.name}", ""]
    lines.append(
        f"A Transformer-Squared SVF expert ({config.kind}) for **{base.get('name')}** "
        f"({base.get('architecture')}), adapting {config.num_matrices} matrices (targets `{config.targets}`)."
    )
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
        f"Base model fingerprint: `{base.get('fingerprint')}`. Format version {config.format_version}, t2 {config.t2_version}.",
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
        (tmp / CARD_FILE).write_text(model_card(config))
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
    from sqlalchemy import select

    from registry.schema import Expert, ExpertParent

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
    with registry.session() as session:
        existing = session.scalars(select(Expert).where(Expert.name == config.name)).first()
        if existing is not None:
            if not replace:
                raise T2Error(f"an expert named {config.name!r} already exists", "pick another --name or remove it")
            session.delete(existing)
            session.flush()
        registry.add_blob(session, info, "expert")
        expert = Expert(
            name=config.name,
            base_model_id=base_model_id,
            decomposition_id=decomposition_id,
            kind=config.kind,
            task=config.task,
            category=config.category,
            description=config.description,
            targets_json=json.dumps({"spec": config.targets, "matrices": sorted(z)}),
            blob_sha256=info.sha256,
            config_json=config.to_json(),
        )
        session.add(expert)
        session.flush()
        for parent in config.parents if link_parents else []:
            parent_row = session.scalars(select(Expert).where(Expert.name == parent["name"])).first()
            if parent_row is None:
                raise ExpertNotFound(f"parent expert {parent['name']!r} is not registered")
            session.add(
                ExpertParent(
                    expert_id=expert.id,
                    parent_id=parent_row.id,
                    weight=parent.get("weight"),
                    relation=parent["relation"],
                )
            )
        return expert.id


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
    from sqlalchemy import select

    from registry.schema import Expert

    with registry.session(readonly=True) as session:
        row = session.scalars(select(Expert).where(Expert.name == name)).first()
        if row is None:
            raise expert_not_found(name, list(session.scalars(select(Expert.name).order_by(Expert.name))))
        sha, config_json, base_id, dec_id = row.blob_sha256, row.config_json, row.base_model_id, row.decomposition_id
    registry.blobs.check(sha)
    return LoadedExpert(name, load_z(registry.blobs.path(sha)), ExpertConfig.from_json(config_json), base_id, dec_id)
