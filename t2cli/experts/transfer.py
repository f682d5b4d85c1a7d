"""Move an expert to another base model (docs/method.md §5).

z vectors are ordered by singular value, so an expert made for one model can be
applied to another whose blocks hold the same roles (q, k, v, o, gate, up, down):

* **same shapes** (same depth, same rank per matrix): z is copied as is;
* **different depth**: target layer j sits at relative depth j / (L_t - 1); its z is
  interpolated linearly between the two source layers around that depth, per role;
* **different rank**: z is resampled over the relative position in the singular
  spectrum (position k / (r_t - 1) of the target reads the source at that position,
  linearly interpolated), so "the top 10% of directions" maps to the top 10%.

Roles the source expert does not cover get z = 1 (the target's own weights). A
vision-language model's language model has the same seven roles as a text model, so
language-model experts move between VLMs and text models both ways; its vision tower and
projector have roles of their own (``vision.attn.q``, ``projector.linear_1``...), mapped by
the vision tower's relative depth. An expert adapting a role the target model lacks (a vision
tower expert onto a text model, Qwen2-VL's fused ``qkv`` onto a CLIP tower) is refused: part
of it would be dropped. The ``shuffled`` control permutes every transferred vector (seeded): same values, singular
order destroyed; the paper reports that this hurts where the ordered transfer helps.
Pure functions over dicts of tensors; ``transfer_expert`` is the registry-facing engine.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from registry.queries import base_models
from t2cli.errors import T2Error
from t2cli.experts.mixing import check_name_free
from t2cli.models.identity import read_config, stored_config_depths
from t2cli.models.resolve import resolve_model
from t2cli.models.targets import PART_NAMES, TargetMatrix, candidate_matrices, layout_for, roles_pattern
from t2cli.svf.adaptable import load_adaptable
from t2cli.svf.expert import BaseModelRef, ExpertConfig, load_expert, register_expert

if TYPE_CHECKING:
    from registry import Registry


class TransferError(T2Error):
    """An expert that cannot be mapped onto the requested model."""


@dataclass(frozen=True)
class MatrixMapping:
    """Where one target matrix's z comes from."""

    target: str
    role: str
    sources: tuple[tuple[str, float], ...]  # (source matrix, interpolation weight), one or two entries
    source_rank: int
    target_rank: int

    @property
    def interpolated(self) -> bool:
        return len(self.sources) > 1

    @property
    def resampled(self) -> bool:
        return self.source_rank != self.target_rank


@dataclass
class TransferPlan:
    """Every target matrix, mapped or left at z = 1."""

    mappings: list[MatrixMapping]
    uncovered: dict[str, int]  # target matrix -> rank, for roles the expert does not adapt anywhere (z = 1)

    def summary(self) -> dict[str, Any]:
        total = len(self.mappings) + len(self.uncovered)
        return {
            "target_matrices": total,
            "mapped": len(self.mappings),
            "coverage": len(self.mappings) / total if total else 0.0,
            "direct": sum(1 for m in self.mappings if not m.interpolated and not m.resampled),
            "depth_interpolated": sum(1 for m in self.mappings if m.interpolated),
            "rank_resampled": sum(1 for m in self.mappings if m.resampled),
            "uncovered": len(self.uncovered),
        }


def resample_spectrum(z: torch.Tensor, rank: int) -> torch.Tensor:
    """z (length r_s) read at ``rank`` evenly spaced relative positions of the spectrum, linearly interpolated."""
    if rank < 1:
        raise TransferError(f"cannot resample to rank {rank}")
    source_rank = z.shape[0]
    if source_rank == rank:
        return z.clone()
    if source_rank == 1 or rank == 1:
        return z[:1].expand(rank).clone() if rank > 1 else z[:1].clone()
    positions = torch.linspace(0, source_rank - 1, rank, dtype=torch.float64)
    low = positions.floor().long().clamp(max=source_rank - 2)
    frac = (positions - low.double()).to(z.dtype)
    return z[low] * (1 - frac) + z[low + 1] * frac


def source_roles(
    source: Iterable[str], source_model_type: str, source_layers: int, *, source_vision_layers: int = 0
) -> dict[str, dict[int, TargetMatrix]]:
    """The expert's matrices by role, then layer; TransferError for a name its base model's layout lacks."""
    by_role: dict[str, dict[int, TargetMatrix]] = {}
    names = set(source)
    for matrix in candidate_matrices(source_model_type, source_layers, vision_layers=source_vision_layers):
        if matrix.name in names:
            by_role.setdefault(matrix.role, {})[matrix.layer] = matrix
    unknown = sorted(names - {m.name for role in by_role.values() for m in role.values()})
    if unknown:
        raise TransferError(
            f"the expert adapts {unknown[0]!r}, which is not part of a {source_model_type} block",
            "the expert's base model record does not match its matrices",
        )
    return by_role


def check_roles_line_up(
    roles: Mapping[str, Mapping[int, TargetMatrix]], target_model_type: str, target_name: str | None = None
) -> None:
    """Refuse, in one line, an expert with roles the target architecture has no matrix for (it would lose them)."""
    layout = layout_for(target_model_type)
    # Every role the target has, whatever its depth: one layer of each stack lists them all.
    offered = {m.role for m in candidate_matrices(target_model_type, 1, vision_layers=1)}
    missing = sorted(set(roles) - offered)
    if not missing:
        return
    count = sum(len(roles[role]) for role in missing)
    parts = sorted({next(iter(roles[role].values())).part for role in missing}, key=list(PART_NAMES).index)
    where = " and ".join(PART_NAMES[p] for p in parts)
    target = target_name or f"a {target_model_type} model"
    if layout.vision is None:
        raise TransferError(
            f"the expert adapts the {where} ({count} matrices), and {target} is a text-only model "
            f"({target_model_type}): it has no {where} to take them",
            "transfer an expert trained on the language model only (--targets all, attn or mlp), "
            "or transfer to a vision-language model",
        )
    raise TransferError(
        f"the expert adapts {count} {where} matrices of roles {', '.join(missing)}, which {target} "
        f"({target_model_type}) does not have",
        "transfer between models whose blocks share those roles (e.g. two CLIP-like vision towers), "
        "or an expert on the language model only",
    )


def plan_transfer(
    source: Mapping[str, int],
    source_model_type: str,
    source_layers: int,
    target: Mapping[str, int],
    target_model_type: str,
    target_layers: int,
    *,
    source_vision_layers: int = 0,
    target_vision_layers: int = 0,
) -> TransferPlan:
    """Map each target matrix (name -> rank) onto the source expert's matrices (name -> rank).

    Depth is relative within each stack: the language model's blocks map onto the language
    model's, the vision tower's onto the vision tower's (``*_vision_layers``, 0 for a text model).
    """
    source_by_role = source_roles(source, source_model_type, source_layers, source_vision_layers=source_vision_layers)
    check_roles_line_up(source_by_role, target_model_type)
    depths = {
        "source": {"language": source_layers, "vision": source_vision_layers, "projector": 1},
        "target": {"language": target_layers, "vision": target_vision_layers, "projector": 1},
    }
    mappings: list[MatrixMapping] = []
    uncovered: dict[str, int] = {}
    for matrix in candidate_matrices(target_model_type, target_layers, vision_layers=target_vision_layers):
        if matrix.name not in target:
            continue
        layers = source_by_role.get(matrix.role)
        part = matrix.part
        sources = _depth_sources(matrix.layer, depths["target"][part], depths["source"][part], layers) if layers else ()
        if not sources:
            uncovered[matrix.name] = target[matrix.name]
            continue
        ranks = {source[name] for name, _ in sources}
        if len(ranks) != 1:  # two source layers of one role always share a shape; guard anyway
            raise TransferError(f"source matrices for {matrix.name} have different ranks {sorted(ranks)}")
        mappings.append(MatrixMapping(matrix.name, matrix.role, sources, ranks.pop(), target[matrix.name]))
    return TransferPlan(mappings, uncovered)


def _depth_sources(
    layer: int, target_layers: int, source_layers: int, available: Mapping[int, TargetMatrix]
) -> tuple[tuple[str, float], ...]:
    """The source layer(s) at the same relative depth, with linear weights; only layers the expert adapts."""
    depth = layer / (target_layers - 1) if target_layers > 1 else 0.0
    position = depth * (source_layers - 1)
    below, above = math.floor(position + 1e-9), math.ceil(position - 1e-9)
    frac = position - below
    if below == above or frac < 1e-9:
        pairs = [(below, 1.0)]
    else:
        pairs = [(below, 1.0 - frac), (above, frac)]
    present = [(available[i].name, w) for i, w in pairs if i in available]
    if len(present) < len(pairs) and present:  # one neighbour missing: use the other alone
        present = [(present[0][0], 1.0)]
    return tuple(present)


def transfer_z(
    z: Mapping[str, torch.Tensor], plan: TransferPlan, *, shuffle_seed: int | None = None
) -> dict[str, torch.Tensor]:
    """The target's z vectors: depth-interpolated, rank-resampled, optionally shuffled (the control)."""
    out: dict[str, torch.Tensor] = {}
    generator = torch.Generator().manual_seed(shuffle_seed) if shuffle_seed is not None else None
    for mapping in plan.mappings:
        mixed = sum(weight * z[name].to(torch.float32) for name, weight in mapping.sources)
        if not isinstance(mixed, torch.Tensor):  # sum() of nothing is 0; plan_transfer gives every mapping a source
            raise TransferError(f"no source matrices for {mapping.target}")
        vector = resample_spectrum(mixed, mapping.target_rank)
        if generator is not None:
            vector = vector[torch.randperm(vector.shape[0], generator=generator)]
        out[mapping.target] = vector.contiguous()
    for name, rank in plan.uncovered.items():
        out[name] = torch.ones(rank)
    return out


@dataclass
class TransferResult:
    name: str
    source: str
    target_model: str
    shuffled: bool
    summary: dict[str, Any]
    mappings: list[dict[str, Any]] = field(default_factory=list)


def transfer_expert(
    registry: Registry,
    expert: str,
    model: str,
    *,
    name: str | None = None,
    shuffle: bool = False,
    seed: int = 0,
    device: str = "cpu",
) -> TransferResult:
    """Map ``expert`` onto ``model`` (decomposing it if needed) and register the result (kind transferred)."""
    loaded = load_expert(registry, expert)
    name = name or f"{expert}-to-{_short(model)}" + ("-shuffled" if shuffle else "")
    check_name_free(registry, name)
    base = loaded.config.base_model
    if not base.model_type or not base.num_layers:
        raise TransferError(f"expert {expert!r} does not record its base model's architecture and depth")
    source_vision = _source_vision_layers(registry, base)
    roles = source_roles(loaded.z, base.model_type, int(base.num_layers), source_vision_layers=source_vision)
    # The target's architecture from its config alone: a misfit is refused before any weight is read.
    ref = resolve_model(model)
    target_type = read_config(ref).model_type
    check_roles_line_up(roles, target_type, ref.name)
    spec = _target_spec(loaded.config.targets, roles, target_type)
    adaptable = load_adaptable(registry, model, targets=spec, device=device)
    if adaptable.identity.fingerprint == base.fingerprint:
        raise TransferError(
            f"expert {expert!r} already belongs to {adaptable.identity.ref.name}",
            f"use it directly: t2 eval --expert {expert} (transfer is for another base model)",
        )
    target_ranks = {n: f.rank for n, f in adaptable.svf.factors.items()}
    plan = plan_transfer(
        {n: int(v.shape[0]) for n, v in loaded.z.items()},
        base.model_type,
        int(base.num_layers),
        target_ranks,
        adaptable.identity.model_type,
        adaptable.identity.num_layers,
        source_vision_layers=source_vision,
        target_vision_layers=adaptable.identity.vision_layers,
    )
    if not plan.mappings:
        raise TransferError(
            f"no matrix of {adaptable.identity.ref.name} has a role that expert {expert!r} adapts",
            "transfer needs models whose blocks share roles (q, k, v, o, gate, up, down)",
        )
    z = transfer_z(loaded.z, plan, shuffle_seed=seed if shuffle else None)
    summary = {**plan.summary(), "source_layers": base.num_layers, "target_layers": adaptable.identity.num_layers}
    if source_vision or adaptable.identity.vision_layers:
        summary |= {"source_vision_layers": source_vision, "target_vision_layers": adaptable.identity.vision_layers}
    config = ExpertConfig(
        name=name,
        base_model=adaptable.base_model_record(),
        targets=spec,
        num_matrices=len(z),
        kind="transferred",
        task=loaded.config.task,
        category=loaded.config.category,
        description=f"{expert} transferred from {base.name}" + (" (shuffled-order control)" if shuffle else ""),
        parametrization={
            **loaded.config.parametrization,
            "transfer": {
                "from": base.name,
                "from_fingerprint": base.fingerprint,
                "shuffled": shuffle,
                "shuffle_seed": seed if shuffle else None,
                "depth_map": "relative, linear",
                "rank_map": "relative spectrum position, linear",
                **summary,
            },
        },
        parents=[{"name": expert, "weight": None, "relation": "transferred"}],
    )
    register_expert(
        registry, z, config, base_model_id=adaptable.base_model_id, decomposition_id=adaptable.decomposition_id
    )
    return TransferResult(
        name=name,
        source=expert,
        target_model=adaptable.identity.ref.name,
        shuffled=shuffle,
        summary=summary,
        mappings=[{**asdict(m), "interpolated": m.interpolated, "resampled": m.resampled} for m in plan.mappings],
    )


def _source_vision_layers(registry: Registry, base: BaseModelRef) -> int:
    """The expert's base model's vision tower depth: recorded in the expert, else in the registered base's config."""
    if base.vision_layers is not None:
        return int(base.vision_layers)
    row = base_models.by_fingerprint(registry, str(base.fingerprint))
    return stored_config_depths(row.config)[1] if row is not None else 0


def _target_spec(source_spec: str, roles: Mapping[str, Mapping[int, TargetMatrix]], target_type: str) -> str:
    """Which of the target's matrices to decompose: the expert's own named group, else exactly its roles.

    A language-model expert keeps the old rule (its group, a regex becoming ``all``: the roles it
    did not adapt stay at z = 1); one that reaches the vision tower or projector names the roles it adapts.
    """
    parts = {m.part for layers in roles.values() for m in layers.values()}
    if parts == {"language"}:
        return source_spec if source_spec in ("attn", "mlp", "all") else "all"
    if source_spec in ("vision", "projector"):
        return source_spec
    return roles_pattern(target_type, roles)


def _short(model: str) -> str:
    """A name-safe short form of a model argument (alias, folder or file)."""
    stem = Path(model).name.removesuffix(".gguf") or "model"
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in stem)[:40]
