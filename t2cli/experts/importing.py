"""Import expert folders written elsewhere: validate everything first, then register.

An expert folder from another machine or from the Hub is untrusted input. Before
anything is registered, ``import_expert`` checks, in this order:

1. the folder's entries: only ``expert.safetensors``, ``expert_config.json`` and
   ``README.md`` (plus the Hub's ``.gitattributes``, never read); pickle files
   (``.bin .pt .pth .pkl .pickle .ckpt .joblib``) and code or executables are
   refused by name, other unknown files, sub-folders and symlinks too (a Hub
   snapshot's links must point into that repo's own blob folder in the HF cache);
2. ``expert_config.json``: at most 1 MiB of JSON, a known ``format_version``,
   every field of the right type, a safe expert name;
3. the ``expert.safetensors`` header, read by hand before the tensors: at most
   ``MAX_MATRICES`` entries, each a 1-D float32/float16/bfloat16 vector of at most
   ``MAX_Z_LENGTH`` values whose byte range lies inside the file, the
   ``t2-expert/N`` format tag; then the values themselves must be finite;
4. the base model: the fingerprint in the config must be a registered base model,
   or the model named with ``--model`` (or found at the recorded local location);
5. the shapes: every z names a matrix t2 adapts in that model and has its rank.

Only then is the expert registered, with kind ``imported`` (see docs/sharing.md).
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file

from registry.queries import base_models, decompositions, experts
from t2cli.decompose.engine import register_base_model
from t2cli.errors import T2Error
from t2cli.models.hashing import HashCache, sha256_file
from t2cli.models.identity import config_depths, model_identity
from t2cli.models.resolve import ALIASES, resolve_model
from t2cli.models.targets import candidate_matrices, is_vision_language
from t2cli.svf import names
from t2cli.svf.expert import (
    CARD_FILE,
    CONFIG_FILE,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    BaseModelRef,
    ExpertConfig,
    base_hub_id,
    check_base_model,
    register_expert,
)

if TYPE_CHECKING:
    from registry import Registry
    from t2cli.models.identity import ModelIdentity

EXPERT_FILES = (CARD_FILE, WEIGHTS_FILE, CONFIG_FILE)
IGNORED_FILES = frozenset({".gitattributes"})  # Hub housekeeping: allowed, never read
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"})
CODE_SUFFIXES = frozenset(
    {".py", ".pyc", ".pyo", ".so", ".dll", ".dylib", ".exe", ".sh", ".bat", ".cmd", ".ps1", ".js"}
)

# A z has rank = min(m, n) values: 8,192 at most for Llama-3-70B, 16,384 for Llama-3.1-405B.
MAX_Z_LENGTH = 16_384
MAX_MATRICES = 8_192  # 126 layers x 7 matrices is 882
MAX_HEADER_BYTES = 2 << 20
MAX_TEXT_BYTES = 1 << 20  # expert_config.json and README.md
FLOAT_DTYPES = {"F32": 4, "F16": 2, "BF16": 2}
_MATRIX_NAME = re.compile(r"^[A-Za-z0-9_.]{1,256}$")
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


class ExpertRefused(T2Error):
    """An expert folder or Hub repo that failed validation; nothing was registered."""


# --------------------------------------------------------------------------- the folder


@dataclass(frozen=True)
class ExpertFolder:
    """A validated expert folder's contents, not yet checked against a base model."""

    z: dict[str, torch.Tensor]
    config: ExpertConfig
    sha256: str  # of expert.safetensors
    unknown_keys: list[str]  # config keys this t2 does not know (a newer t2 wrote them); ignored


def read_expert_folder(folder: Path, *, links_into: Path | None = None) -> ExpertFolder:
    """Validate and read an untrusted expert folder (steps 1-3 of the module docstring).

    ``links_into``: symlinks are allowed when they resolve to a regular file inside this
    folder (a Hub snapshot, whose files link into the repo's ``blobs/``); otherwise any
    symlink is refused.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ExpertRefused(f"{folder} is not a folder", "pass the folder `t2 export` wrote")
    present = _check_entries(folder, links_into)
    for required in (WEIGHTS_FILE, CONFIG_FILE):
        if required not in present:
            raise ExpertRefused(
                f"{folder} has no {required}: it is not a t2 expert",
                "an expert folder holds expert.safetensors, expert_config.json and README.md (`t2 export` writes one)",
            )
    if CARD_FILE in present:
        _check_size(folder / CARD_FILE, MAX_TEXT_BYTES)
    config, unknown = parse_config(folder / CONFIG_FILE)
    weights = folder / WEIGHTS_FILE
    _check_header(weights)
    z = _load_vectors(weights)
    if len(z) != config.num_matrices:
        raise ExpertRefused(
            f"{WEIGHTS_FILE} holds {len(z)} vectors but {CONFIG_FILE} says num_matrices = {config.num_matrices}",
            "the two files do not belong together; export the expert again",
        )
    return ExpertFolder(z, config, sha256_file(weights), unknown)


def _check_entries(folder: Path, links_into: Path | None) -> set[str]:
    """Refuse anything but the expert's own plain files; return the names present."""
    present = set()
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        name = entry.name
        path = Path(entry.path)
        suffix = Path(name).suffix.lower()
        if suffix in PICKLE_SUFFIXES:
            raise ExpertRefused(
                f"{name} is a pickle file: loading a pickle can run arbitrary code",
                "t2 never loads pickles; an expert folder holds expert.safetensors, expert_config.json and README.md",
            )
        if suffix in CODE_SUFFIXES:
            raise ExpertRefused(
                f"{name} is code or a program", "an expert folder holds data files only; t2 runs nothing"
            )
        if entry.is_symlink():
            _check_link(path, links_into)
        elif entry.is_dir(follow_symlinks=False):
            raise ExpertRefused(f"{name}/ is a sub-folder", "an expert folder holds three plain files and nothing else")
        elif not entry.is_file(follow_symlinks=False):
            raise ExpertRefused(f"{name} is not a regular file", "an expert folder holds three plain files")
        if name in IGNORED_FILES:
            continue
        if name not in EXPERT_FILES:
            if os.stat(path).st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH):
                raise ExpertRefused(f"{name} is an executable file", "an expert folder holds data files only")
            raise ExpertRefused(
                f"unexpected file {name}",
                f"an expert folder holds only {', '.join(EXPERT_FILES)}; remove anything else",
            )
        present.add(name)
    return present


def _check_link(path: Path, links_into: Path | None) -> None:
    if links_into is None:
        raise ExpertRefused(
            f"{path.name} is a symlink (to {os.readlink(path)})",
            "copy the real files into the folder: t2 does not follow links out of an expert folder",
        )
    target = Path(os.path.realpath(path))
    root = Path(os.path.realpath(links_into))
    if root not in target.parents or not target.is_file():
        raise ExpertRefused(
            f"{path.name} links to {os.readlink(path)}, outside the repo's files in the HF cache",
            "the cached snapshot has been tampered with: delete it from the HF cache and pull again",
        )


def _check_size(path: Path, limit: int) -> int:
    size = path.stat().st_size
    if size > limit:
        raise ExpertRefused(f"{path.name} is {size:,} bytes (limit {limit:,})", "this is not a t2 expert file")
    return size


# --------------------------------------------------------------------------- expert_config.json

_NONE = type(None)
# field -> (accepted types, required)
_CONFIG_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "name": ((str,), True),
    "base_model": ((dict,), True),
    "targets": ((str,), True),
    "num_matrices": ((int,), True),
    "kind": ((str,), False),
    "task": ((str, _NONE), False),
    "category": ((str, _NONE), False),
    "description": ((str, _NONE), False),
    "parametrization": ((dict,), False),
    "metrics": ((dict,), False),
    "parents": ((list,), False),
    "training": ((dict,), False),
    "origin": ((dict,), False),
    "t2_version": ((str,), False),
    "created_at": ((str,), False),
}


def parse_config(path: Path) -> tuple[ExpertConfig, list[str]]:
    """Read an untrusted expert_config.json; returns the config and the keys it ignored."""
    _check_size(path, MAX_TEXT_BYTES)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExpertRefused(
            f"{CONFIG_FILE} is not valid JSON ({exc})", "the file is damaged; export it again"
        ) from None
    if not isinstance(data, dict):
        raise ExpertRefused(f"{CONFIG_FILE} is not a JSON object", "the file is damaged; export it again")
    version = data.get("format_version")
    if type(version) is not int or version < 1:
        raise ExpertRefused(f"{CONFIG_FILE} has an unknown format_version {version!r}", "this is not a t2 expert")
    if version > FORMAT_VERSION:
        raise ExpertRefused(
            f"the expert uses format version {version}; this t2 reads up to {FORMAT_VERSION}", "upgrade t2"
        )
    for key, (types, required) in _CONFIG_FIELDS.items():
        if key not in data:
            if required:
                raise ExpertRefused(f"{CONFIG_FILE} lacks the field {key!r}", "the file is damaged; export it again")
            continue
        value = data[key]
        # bool is an int to isinstance; a count must not be True.
        if not isinstance(value, types) or (int in types and isinstance(value, bool)):
            raise ExpertRefused(
                f"{CONFIG_FILE} field {key!r} is {type(value).__name__}, expected {' or '.join(t.__name__ for t in types)}",
                "the file is damaged; export it again",
            )
    check_expert_name(data["name"])
    fingerprint = data["base_model"].get("fingerprint")
    if not isinstance(fingerprint, str) or not _FINGERPRINT.match(fingerprint):
        raise ExpertRefused(f"{CONFIG_FILE} has no valid base_model.fingerprint", "this is not a t2 expert")
    for parent in data.get("parents", []):
        if not (
            isinstance(parent, dict)
            and isinstance(parent.get("name"), str)
            and isinstance(parent.get("relation"), str)
            and isinstance(parent.get("weight"), (int, float, _NONE))
        ):
            raise ExpertRefused(
                f"{CONFIG_FILE} has a malformed parents entry {str(parent)[:80]!r}",
                "each parent is {name, relation, weight}",
            )
    known = set(ExpertConfig.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    return ExpertConfig(**{k: v for k, v in data.items() if k in known}), unknown


def check_expert_name(name: str) -> str:
    """The name in an expert folder's config follows the one rule (``t2cli.svf.names``); the folder is refused if not."""
    try:
        return names.check_expert_name(name)
    except names.InvalidExpertName as exc:
        raise ExpertRefused(exc.message, f"{names.NAME_RULE}; or pass --name") from None


# --------------------------------------------------------------------------- expert.safetensors


def _check_header(path: Path) -> dict[str, Any]:
    """Parse and check the safetensors header by hand, before any tensor is read."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ExpertRefused(f"{WEIGHTS_FILE} is {size} bytes: truncated", "export the expert again")
        header_len = int.from_bytes(prefix, "little")
        if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            raise ExpertRefused(
                f"{WEIGHTS_FILE} declares a {header_len:,}-byte header in a {size:,}-byte file",
                "the file is damaged or not a t2 expert",
            )
        raw = handle.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ExpertRefused(
            f"{WEIGHTS_FILE} has an unreadable header", "the file is damaged or not safetensors"
        ) from None
    if not isinstance(header, dict):
        raise ExpertRefused(f"{WEIGHTS_FILE} has an unreadable header", "the file is damaged or not safetensors")
    metadata = header.pop("__metadata__", None) or {}
    tag = metadata.get("format") if isinstance(metadata, dict) else None
    if not (isinstance(tag, str) and tag.startswith("t2-expert/")):
        raise ExpertRefused(
            f"{WEIGHTS_FILE} is not tagged as a t2 expert (format {tag!r})",
            "t2 writes format 't2-expert/N' into every expert file",
        )
    version = tag.split("/", 1)[1]
    if not version.isdigit() or not 1 <= int(version) <= FORMAT_VERSION:
        raise ExpertRefused(
            f"{WEIGHTS_FILE} has format {tag!r}; this t2 reads up to t2-expert/{FORMAT_VERSION}", "upgrade t2"
        )
    if not header:
        raise ExpertRefused(f"{WEIGHTS_FILE} holds no vectors", "export the expert again")
    if len(header) > MAX_MATRICES:
        raise ExpertRefused(
            f"{WEIGHTS_FILE} holds {len(header):,} tensors (limit {MAX_MATRICES:,})", "this is not a t2 expert"
        )
    data_bytes = size - 8 - header_len
    for key, info in header.items():
        if not _MATRIX_NAME.match(key):
            raise ExpertRefused(
                f"{WEIGHTS_FILE} holds a tensor with the name {key[:80]!r}",
                "z vectors are named by their matrix, like model.layers.3.mlp.down_proj",
            )
        if not isinstance(info, dict):
            raise ExpertRefused(f"{WEIGHTS_FILE} entry {key} is malformed", "the file is damaged")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in FLOAT_DTYPES:
            raise ExpertRefused(
                f"{WEIGHTS_FILE} holds {key} as {dtype}", "an expert holds float32, float16 or bfloat16 vectors only"
            )
        if not (isinstance(shape, list) and all(type(d) is int for d in shape)) or len(shape) != 1:
            raise ExpertRefused(
                f"{WEIGHTS_FILE} holds {key} with shape {shape}", "an expert holds one 1-D vector z per matrix"
            )
        if not 1 <= shape[0] <= MAX_Z_LENGTH:
            raise ExpertRefused(
                f"{WEIGHTS_FILE} holds {key} with {shape[0]:,} values (limit {MAX_Z_LENGTH:,})",
                "a z has one value per singular value of its matrix; this file is not a t2 expert",
            )
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_bytes
            and offsets[1] - offsets[0] == shape[0] * FLOAT_DTYPES[dtype]
        ):
            raise ExpertRefused(
                f"{WEIGHTS_FILE} entry {key} points outside its data ({offsets})", "the file is damaged or truncated"
            )
    return header


def _load_vectors(path: Path) -> dict[str, torch.Tensor]:
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own SafetensorError for damaged files
        raise ExpertRefused(f"cannot read {WEIGHTS_FILE}: {exc}", "the file is damaged; export it again") from None
    z = {}
    for key, tensor in tensors.items():
        vector = tensor.to(torch.float32)
        if not torch.isfinite(vector).all():
            raise ExpertRefused(f"z for {key} holds NaN or inf", "the expert file is damaged")
        z[key] = vector
    return z


# --------------------------------------------------------------------------- the base model


@dataclass(frozen=True)
class BaseMatch:
    """The local base model an expert's fingerprint names."""

    name: str
    source: str
    location: str
    revision: str | None
    config: dict[str, Any]  # the model's config.json, as stored in the registry
    base_model_id: int | None  # None: found by --model or location, registered when the import goes through
    identity: ModelIdentity | None


def match_base_model(registry: Registry, config: ExpertConfig, model: str | None = None) -> BaseMatch:
    """Find the base model whose fingerprint the expert names: registered, ``model``, or the recorded location."""
    fingerprint = str(config.base_model.fingerprint)
    wanted = config.base_model.name or "an unnamed model"
    if model is None:
        row = base_models.by_fingerprint(registry, fingerprint)
        if row is not None:
            return BaseMatch(row.name, row.source, row.location, row.revision, row.config, row.id, None)
        model = _local_candidate(config.base_model)
        if model is None:
            location = config.base_model.location or wanted
            raise ExpertRefused(
                f"expert {config.name!r} was made for base model {wanted} (fingerprint {fingerprint[:12]}), "
                "which is not registered here",
                f"register that model first (`t2 decompose {location}`) or name your copy of it with --model; "
                f"for another model, import it where {wanted} is and use `t2 transfer {config.name} --to MODEL`",
            )
    identity = identify_model(registry, model)
    check_base_model(config.name, config.base_model, identity)
    registered = base_models.by_fingerprint(registry, fingerprint)
    base_id = registered.id if registered is not None else None
    ref = identity.ref
    return BaseMatch(ref.name, ref.source, ref.location, ref.revision, identity.config, base_id, identity)


def _local_candidate(base: BaseModelRef) -> str | None:
    """The expert's recorded base model, when it is on this machine without downloading anything."""
    alias = ALIASES.get(str(base.name or "").lower())
    if base.source == "embedded" and alias is not None and alias.embedded:
        return alias.name
    location = base.location
    if base.source in ("local", "gguf") and isinstance(location, str) and Path(location).exists():
        return location
    return None


def identify_model(registry: Registry, model: str | None) -> ModelIdentity:
    """Resolve a model and fingerprint its weights (file hashes are cached), without loading it."""
    return model_identity(resolve_model(model), HashCache(registry.home / "cache" / "file-hashes.json"))


def matrix_ranks(model_config: dict[str, Any]) -> dict[str, int]:
    """rank = min(rows, cols) of every matrix t2 can adapt in a model with this config.

    Built on PyTorch's meta device from the config alone: no weights are read or allocated.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText  # noqa: PLC0415 - heavy: transformers (~2 s), only when checking shapes

    data = dict(model_config)
    model_type = data.pop("model_type")
    config = AutoConfig.for_model(model_type, **data)
    # A vision-language model is built whole (as t2 loads it), so its vision tower and projector have shapes too.
    auto = AutoModelForImageTextToText if is_vision_language(model_type) else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(config)
    num_layers, vision_layers = config_depths(config)
    modules = dict(model.named_modules())
    ranks = {}
    for matrix in candidate_matrices(model_type, num_layers, vision_layers=vision_layers):
        weight = getattr(modules.get(matrix.name), "weight", None)
        if weight is not None:
            ranks[matrix.name] = int(min(weight.shape))
    return ranks


def check_fits(z: dict[str, torch.Tensor], ranks: dict[str, int], *, expert: str, base: str) -> None:
    """Every z names a matrix t2 adapts in the base model and has that matrix's rank."""
    unknown = sorted(set(z) - set(ranks))
    if unknown:
        raise ExpertRefused(
            f"expert {expert!r} adapts {unknown[0]!r}, which {base} does not have "
            f"({len(unknown)} of {len(z)} matrix names unknown)",
            "the expert does not belong to this base model",
        )
    for key in sorted(z):
        if z[key].shape[0] != ranks[key]:
            raise ExpertRefused(
                f"z for {key} has {z[key].shape[0]} values, but that matrix of {base} has rank {ranks[key]}",
                "the expert was made for a model of other shapes: import it with that model, then `t2 transfer`",
            )


# --------------------------------------------------------------------------- import


@dataclass(frozen=True)
class ImportResult:
    """What ``import_expert`` registered."""

    name: str
    expert_id: int
    base_model: str
    num_matrices: int
    original_name: str
    original_kind: str
    source: str  # "folder" | "hub"
    location: str
    revision: str | None
    sha256: str
    unknown_keys: list[str]


def import_expert(
    registry: Registry,
    folder: Path,
    *,
    name: str | None = None,
    model: str | None = None,
    source: str = "folder",
    location: str | None = None,
    revision: str | None = None,
    links_into: Path | None = None,
) -> ImportResult:
    """Validate an expert folder against a local base model, then register it with kind ``imported``.

    The registered config keeps everything the folder said (task, metrics, parents as
    lineage) except: ``kind`` becomes ``imported``, ``origin`` records where it came from and
    what it was (``origin.kind``), and ``base_model`` points at the local copy of the base
    (same fingerprint). Parents are not linked to local experts of the same name.
    """
    read = read_expert_folder(folder, links_into=links_into)
    new_name = names.check_expert_name(name) if name else read.config.name
    if experts.exists(registry, new_name):
        raise T2Error(f"an expert named {new_name!r} already exists", "import it under another --name")
    base = match_base_model(registry, read.config, model)
    check_fits(read.z, matrix_ranks(base.config), expert=read.config.name, base=base.name)

    base_model_id = base.base_model_id
    if base_model_id is None:
        base_model_id = register_base_model(registry, base.identity).id  # type: ignore[arg-type]
    original = read.config
    original_kind = original.origin.get("kind", original.kind) if original.kind == "imported" else original.kind
    local_base = replace(
        original.base_model,
        name=base.name,
        source=base.source,
        location=base.location,
        revision=base.revision,
        hub_id=base_hub_id(original.base_model) or None,
    )
    where = location or str(Path(folder).absolute())
    config = replace(
        original,
        name=new_name,
        kind="imported",
        base_model=local_base,
        origin={
            "kind": original_kind,
            "name": original.name,
            "source": source,
            "location": where,
            "revision": revision,
            "sha256": read.sha256,
            "t2_version": original.t2_version,
        },
    )
    expert_id = register_expert(
        registry,
        read.z,
        config,
        base_model_id=base_model_id,
        decomposition_id=covering_decomposition(registry, base_model_id, set(read.z), original.targets),
        link_parents=False,
    )
    return ImportResult(
        name=new_name,
        expert_id=expert_id,
        base_model=base.name,
        num_matrices=len(read.z),
        original_name=original.name,
        original_kind=original_kind,
        source=source,
        location=where,
        revision=revision,
        sha256=read.sha256,
        unknown_keys=read.unknown_keys,
    )


def covering_decomposition(registry: Registry, base_model_id: int, names: set[str], targets: str) -> int | None:
    """A complete decomposition of the base that holds every matrix the expert adapts (its own targets first)."""
    complete = decompositions.of_base_model(registry, base_model_id, complete_only=True)
    for dec in sorted(complete, key=lambda d: (d.targets_spec != targets, d.id)):
        if names <= set(decompositions.factor_blobs(registry, dec.id)):
            return dec.id
    return None
