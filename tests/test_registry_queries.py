"""registry.queries: the named queries the engine calls, and the records they return."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from registry import Registry, RegistryError
from registry.blobs import BlobInfo
from registry.errors import ExpertNotFound, NameTaken
from registry.queries import base_models, decompositions, evaluations, experts, runs
from registry.records import (
    BaseModelRecord,
    DecompositionRecord,
    ExpertRecord,
    MatrixRecord,
    NewEvaluation,
    NewExpert,
    ParentLink,
)
from t2cli.tasks.dispatch_task import category_experts
from tests.registry_support import add_base_model


def _blob(reg: Registry, tmp_path: Path, content: bytes) -> BlobInfo:
    path = tmp_path / f"blob-{len(list(tmp_path.iterdir()))}"
    path.write_bytes(content)
    return reg.blobs.put_file(path, move=True)


def _add(
    reg: Registry,
    tmp_path: Path,
    base: BaseModelRecord,
    name: str,
    *,
    kind: str = "trained",
    task: str | None = "math",
    category: str | None = None,
    parents: tuple[ParentLink, ...] = (),
    replace: bool = False,
) -> int:
    expert = NewExpert(
        name=name,
        base_model_id=base.id,
        decomposition_id=None,
        kind=kind,
        task=task,
        category=category,
        description=f"the {name} expert",
        targets_spec="mlp",
        matrices=("model.layers.0.mlp.down_proj", "model.layers.0.mlp.up_proj"),
        config_json=json.dumps({"name": name}),
        parents=parents,
    )
    return experts.add(reg, expert, _blob(reg, tmp_path, name.encode()), replace=replace)


def test_base_model_is_added_once_per_fingerprint_and_reads_back(reg: Registry) -> None:
    first = add_base_model(reg)
    again = add_base_model(reg, name="another-name")  # same weights: the registered row, not a second one
    assert again == first
    assert first.name == "tiny-llama" and first.config == {"model_type": "llama", "num_hidden_layers": 2}
    assert base_models.by_fingerprint(reg, "f" * 64) == first
    assert base_models.by_id(reg, first.id) == first
    assert base_models.by_fingerprint(reg, "0" * 64) is None
    other = add_base_model(reg, "e" * 64, "other")
    assert [b.id for b in base_models.all_base_models(reg)] == [first.id, other.id]


def test_records_are_frozen(reg: Registry) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        add_base_model(reg).name = "x"  # type: ignore[misc]


def test_expert_round_trip(reg: Registry, tmp_path: Path) -> None:
    base = add_base_model(reg)
    expert_id = _add(reg, tmp_path, base, "math-v1", category="math")
    record = experts.get(reg, "math-v1")
    assert isinstance(record, ExpertRecord)
    assert record.id == expert_id and record.base_model_id == base.id
    assert (record.base_model_name, record.base_model_location) == ("tiny-llama", "/models/tiny-llama")
    assert (record.kind, record.task, record.category) == ("trained", "math", "math")
    assert record.targets_spec == "mlp"
    assert record.matrices == ("model.layers.0.mlp.down_proj", "model.layers.0.mlp.up_proj")
    assert json.loads(record.config_json) == {"name": "math-v1"}
    assert reg.blobs.path(record.blob_sha256).read_bytes() == b"math-v1"
    assert experts.exists(reg, "math-v1") and not experts.exists(reg, "nope")
    assert experts.get(reg, "nope") is None


def test_adding_a_taken_name_is_refused_unless_replacing(reg: Registry, tmp_path: Path) -> None:
    base = add_base_model(reg)
    _add(reg, tmp_path, base, "a", task="math")
    with pytest.raises(NameTaken, match="an expert named 'a' already exists"):
        _add(reg, tmp_path, base, "a", task="code")
    assert [(e.name, e.task) for e in experts.all_experts(reg)] == [("a", "math")]
    _add(reg, tmp_path, base, "a", task="code", replace=True)
    assert [(e.name, e.task) for e in experts.all_experts(reg)] == [("a", "code")]


def test_parents_are_linked_and_a_missing_parent_is_refused(reg: Registry, tmp_path: Path) -> None:
    base = add_base_model(reg)
    a, b = _add(reg, tmp_path, base, "a"), _add(reg, tmp_path, base, "b")
    mix = _add(
        reg,
        tmp_path,
        base,
        "mix",
        kind="mixture",
        parents=(ParentLink("a", 0.25, "mixed"), ParentLink("b", 0.75, "mixed")),
    )
    assert sorted(experts.parents(reg, mix), key=lambda p: p.name) == [
        ParentLink("a", 0.25, "mixed"),
        ParentLink("b", 0.75, "mixed"),
    ]
    assert experts.children(reg, a) == ["mix"] and experts.children(reg, b) == ["mix"]
    with pytest.raises(ExpertNotFound, match="parent expert 'ghost'"):
        _add(reg, tmp_path, base, "orphan", parents=(ParentLink("ghost", None, "mixed"),))
    assert not experts.exists(reg, "orphan")  # the whole insert was rolled back


def test_remove_refuses_a_parent_then_removes_in_order(reg: Registry, tmp_path: Path) -> None:
    base = add_base_model(reg)
    _add(reg, tmp_path, base, "a")
    _add(reg, tmp_path, base, "mix", kind="mixture", parents=(ParentLink("a", 1.0, "mixed"),))
    with pytest.raises(RegistryError, match="expert 'a' is a parent of mix"):
        experts.remove(reg, "a")
    assert experts.exists(reg, "a")
    experts.remove(reg, "mix")
    experts.remove(reg, "a")
    assert experts.all_experts(reg) == []
    with pytest.raises(ExpertNotFound):
        experts.remove(reg, "a")


def test_latest_for_task_is_the_newest_non_mixture_of_that_base(reg: Registry, tmp_path: Path) -> None:
    base, other = add_base_model(reg), add_base_model(reg, "e" * 64, "other")
    _add(reg, tmp_path, base, "math-old")
    _add(reg, tmp_path, base, "math-new")
    _add(reg, tmp_path, base, "math-mix", kind="mixture")  # newer, but a mixture
    _add(reg, tmp_path, other, "math-other")  # newer, but another base model
    _add(reg, tmp_path, base, "code", task="code")
    assert experts.latest_for_task(reg, base.id, "math") == "math-new"
    assert experts.latest_for_task(reg, base.id, "gsm8k") is None
    assert [e.name for e in experts.mixtures_for_task(reg, base.id, "math")] == ["math-mix"]
    assert experts.latest_of_kind(reg, "trained") == "code"


def test_experts_by_base_model_and_fingerprint_oldest_first(reg: Registry, tmp_path: Path) -> None:
    base, other = add_base_model(reg), add_base_model(reg, "e" * 64, "other")
    for name, owner in (("x", base), ("y", other), ("z", base)):
        _add(reg, tmp_path, owner, name)
    assert [e.name for e in experts.of_base_model(reg, base.id)] == ["x", "z"]
    assert [e.name for e in experts.of_fingerprint(reg, "e" * 64)] == ["y"]
    assert base_models.expert_counts(reg) == {base.id: 2, other.id: 1}
    assert experts.names(reg, limit=2) == ["x", "y"]
    assert experts.names_starting_with(reg, "x") == {"x"}


def test_category_experts_skip_mixtures_other_and_dispatch_latest_wins(reg: Registry, tmp_path: Path) -> None:
    base = add_base_model(reg)
    _add(reg, tmp_path, base, "math-old", category="math")
    _add(reg, tmp_path, base, "math-new", category="math")
    _add(reg, tmp_path, base, "code-v1", task="code", category="code")
    _add(reg, tmp_path, base, "mix", kind="mixture", category="reasoning")
    _add(reg, tmp_path, base, "misc", task="misc", category="other")
    _add(reg, tmp_path, base, "router", task="dispatch", category="dispatch")
    _add(reg, tmp_path, base, "plain", task="plain")  # no category
    found = category_experts(reg, base.id)
    assert [(c.category, c.expert) for c in found] == [("code", "code-v1"), ("math", "math-new")]
    assert category_experts(reg, None) == []


def test_decomposition_matrices_round_trip(reg: Registry, tmp_path: Path) -> None:
    base = add_base_model(reg)

    def get_or_add(spec: str, key: str, num_matrices: int) -> DecompositionRecord:
        return decompositions.get_or_add(
            reg,
            base_model_id=base.id,
            targets_spec=spec,
            targets_key=key,
            dtype="float32",
            method="m",
            num_matrices=num_matrices,
        )

    dec = get_or_add("mlp", "k" * 64, 2)
    assert (dec.status, dec.stored_matrices, dec.num_matrices) == ("partial", 0, 2)
    assert get_or_add("mlp", "k" * 64, 2) == dec
    blobs = [_blob(reg, tmp_path, b"one"), _blob(reg, tmp_path, b"three")]
    rows = [
        MatrixRecord("model.layers.0.mlp.up_proj", 0, "mlp.up", 4, 3, 3, blobs[0].sha256, 1e-7, 0.5),
        MatrixRecord("model.layers.0.mlp.down_proj", 0, "mlp.down", 3, 4, 3, blobs[1].sha256, 2e-7, 0.5),
    ]
    decompositions.add_matrices(reg, dec.id, rows, new_blobs=blobs)
    assert decompositions.factor_blobs(reg, dec.id) == {r.name: r.blob_sha256 for r in rows}  # stored order
    held = decompositions.summary(reg, dec.id)
    assert (held.count, held.max_rel_error, held.size_bytes) == (2, 2e-7, 3 + 5)
    assert decompositions.find_complete(reg, base.fingerprint, "k" * 64) is None
    decompositions.mark_complete(reg, dec.id, size_bytes=8, max_rel_error=2e-7, seconds=1.5)
    decompositions.mark_complete(reg, dec.id, size_bytes=8, max_rel_error=2e-7, seconds=1.0)
    done = decompositions.find_complete(reg, base.fingerprint, "k" * 64)
    assert done is not None and done.id == dec.id and done.status == "complete" and done.seconds == 2.5
    assert done.stored_matrices == 2 and done.size_bytes == 8
    other = get_or_add("all", "a" * 64, 4)
    reusable = decompositions.reusable_matrices(
        reg, base_model_id=base.id, dtype="float32", other_than=other.id, names={"model.layers.0.mlp.up_proj", "x"}
    )
    assert reusable == [rows[0]]
    assert (
        decompositions.reusable_matrices(
            reg, base_model_id=base.id, dtype="float64", other_than=other.id, names={"model.layers.0.mlp.up_proj"}
        )
        == []
    )
    decompositions.forget_matrices(reg, dec.id, ["model.layers.0.mlp.up_proj"])
    assert list(decompositions.factor_blobs(reg, dec.id)) == ["model.layers.0.mlp.down_proj"]
    assert [d.id for d in decompositions.of_base_model(reg, base.id, complete_only=True)] == [dec.id]


def test_evaluations_of_expert_and_of_base_weights(reg: Registry, tmp_path: Path) -> None:
    base = add_base_model(reg)
    expert_id = _add(reg, tmp_path, base, "math-v1")

    def evaluate(expert: int | None, n: int, accuracy: float) -> int:
        return evaluations.add(
            reg,
            NewEvaluation(base.id, expert, "math", "test", n, int(n * accuracy), accuracy, 0.1, 0.9, {"limit": n}, 2.0),
        )

    old, new, other_n = evaluate(None, 10, 0.5), evaluate(None, 10, 0.6), evaluate(None, 20, 0.7)
    mine = evaluate(expert_id, 10, 0.8)
    assert [e.id for e in evaluations.of_base_weights(reg, base.id, task="math", split="test", n=10)] == [new, old]
    assert [e.id for e in evaluations.of_base_weights(reg, base.id, task="math", split="test", n=20)] == [other_n]
    (record,) = evaluations.of_expert(reg, expert_id)
    assert record.id == mine and record.accuracy == 0.8 and record.config == {"limit": 10}


def test_run_lifecycle(reg: Registry, tmp_path: Path) -> None:
    base = add_base_model(reg)
    runs.start(
        reg, run_id="run-1", base_model_id=base.id, task="math", config_json='{"name": "m"}', checkpoint_dir="/x"
    )
    runs.start(
        reg, run_id="run-2", base_model_id=base.id, task="code", config_json='{"name": "c"}', checkpoint_dir="/y"
    )
    runs.record_metrics(reg, "run-1", 1, {"reward": 0.5, "loss": 1.0})
    runs.record_metrics(reg, "run-1", 1, {"reward": 0.25})  # the same step again overwrites
    runs.record_metrics(reg, "run-1", 2, {"reward": 0.75})
    assert runs.metrics(reg, "run-1") == {"reward": {1: 0.25, 2: 0.75}, "loss": {1: 1.0}}
    runs.set_status(reg, "run-2", "failed")
    runs.set_status(reg, "no-such-run", "failed")  # nothing to update, no error
    assert [r.run_id for r in runs.unfinished(reg)] == ["run-2", "run-1"]
    expert_id = _add(reg, tmp_path, base, "m")
    runs.finish(reg, "run-1", expert_id)
    record = runs.get(reg, "run-1")
    assert record is not None and record.status == "finished" and record.expert_name == "m"
    assert record.finished_at is not None and record.checkpoint_dir == "/x"
    assert [r.run_id for r in runs.unfinished(reg)] == ["run-2"]
    assert [r.run_id for r in runs.all_runs(reg)] == runs.recent_ids(reg) == ["run-2", "run-1"]
    assert runs.get(reg, "nope") is None
