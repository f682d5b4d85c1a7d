"""Load: 8 processes x 50 registry writes against one T2_HOME; every row lands, no "database is locked".

Each worker registers experts (tiny z, a real blob), tags them, stores evaluation rows and removes
every fifth expert again. Workers are spawned (a forked child of a process whose OpenMP pool
has run can hang at its first parallel op) and each opens its own registry, as separate `t2`
commands would, all on the same blank home (so they also race to create and migrate it). Counts are printed (-s) and asserted.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import torch

WORKERS = 8
OPS_PER_WORKER = 50


def _worker(home: str, worker: int, results) -> None:
    """One process: OPS_PER_WORKER writes, each counted as done or as failed with its error text."""
    from sqlalchemy import select

    from registry import Registry
    from registry.schema import Evaluation, Expert, ExpertTag
    from t2cli.experts.catalog import remove_expert
    from t2cli.svf.expert import ExpertConfig, register_expert
    from tests.registry_support import add_base_model

    done, errors = 0, []
    # all workers open the same blank home at once: one migrates it (under a file lock), the rest wait
    registry = Registry.open(Path(home))
    try:
        base_id = add_base_model(registry, f"{worker:x}" * 64, f"tiny-{worker}").id
        for op in range(OPS_PER_WORKER):
            name = f"w{worker}-e{op}"
            try:
                kind = op % 5
                if kind in (0, 1):  # register an expert (blob + rows)
                    z = {"model.layers.0.mlp.down_proj": torch.full((4,), 1.0 + worker + op / 100)}
                    config = ExpertConfig(name=name, base_model={"name": "tiny"}, targets="all", num_matrices=1)
                    register_expert(registry, z, config, base_model_id=base_id, decomposition_id=None)
                elif kind == 2:  # tag the expert registered two ops ago
                    with registry.session() as session:
                        expert_id = session.scalars(
                            select(Expert.id).where(Expert.name == f"w{worker}-e{op - 2}")
                        ).one()
                        session.add(ExpertTag(expert_id=expert_id, tag=f"tag-{worker}"))
                elif kind == 3:  # an evaluation row
                    with registry.session() as session:
                        session.add(
                            Evaluation(
                                base_model_id=base_id,
                                expert_id=None,
                                task=f"load-{worker}-{op}",
                                split="test",
                                n=10,
                                correct=worker,
                                accuracy=worker / 10,
                                ci_low=0.0,
                                ci_high=1.0,
                                seconds=0.01,
                                config_json="{}",
                            )
                        )
                else:  # remove the second expert of this group of five
                    remove_expert(registry, f"w{worker}-e{op - 3}")
                done += 1
            except Exception as exc:  # counted, never swallowed: the parent asserts there are none
                errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        registry.close()
    results.put((worker, done, errors))


def test_eight_processes_fifty_writes_each_lose_nothing(t2_home: Path, capsys) -> None:
    assert not t2_home.exists()
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(t2_home), w, results)) for w in range(WORKERS)]
    for proc in procs:
        proc.start()
    reports = [results.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0

    done = sum(r[1] for r in reports)
    errors = [e for r in reports for e in r[2]]
    locked = [e for e in errors if "locked" in e]

    from sqlalchemy import func, select

    from registry import Registry
    from registry.schema import Evaluation, Expert, ExpertTag

    with Registry.open(t2_home) as registry:
        with registry.session(readonly=True) as session:
            experts = set(session.scalars(select(Expert.name)))
            tags = session.scalar(select(func.count()).select_from(ExpertTag))
            evals = session.scalar(select(func.count()).select_from(Evaluation))
        report = registry.verify()

    expected_experts = {f"w{w}-e{op}" for w in range(WORKERS) for op in range(0, OPS_PER_WORKER, 5)}
    lost = (
        len(expected_experts - experts)
        + (WORKERS * OPS_PER_WORKER // 5 - tags)
        + (WORKERS * OPS_PER_WORKER // 5 - evals)
        + len(experts - expected_experts)
    )
    with capsys.disabled():
        print(
            f"\n[reliability] concurrent writes: {WORKERS} processes x {OPS_PER_WORKER} ops: "
            f"{done} done, {len(errors)} errors ({len(locked)} 'database is locked'), {lost} rows lost"
        )
    assert errors == [] and locked == []
    assert done == WORKERS * OPS_PER_WORKER
    assert experts == expected_experts  # every 2nd-of-5 expert removed, every 1st kept
    assert tags == WORKERS * OPS_PER_WORKER // 5 and evals == WORKERS * OPS_PER_WORKER // 5
    assert lost == 0
    assert report.ok and report.missing == [] and report.corrupt == []
    # removed experts leave their blobs unreferenced: exactly what gc is for
    assert len(report.unreferenced) == WORKERS * OPS_PER_WORKER // 5
