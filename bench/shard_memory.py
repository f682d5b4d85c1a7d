"""Per-rank memory and step time of ``t2 train --shard fsdp`` (with and without ``--fsdp-gather-rollouts``) against data parallelism.

    python bench/shard_memory.py                      # the embedded SmolLM2-135M, 2 ranks, gloo on the CPU
    python bench/shard_memory.py --model ./folder --ranks 2 --steps 2

Every layout trains the same expert with the same settings; each rank runs in its own
spawned process, so its peak resident memory (``ru_maxrss``) is its own. The baseline
is data parallelism, where every rank holds the whole model and its factors. Reported
per rank: peak RSS, the part above the process after importing torch and transformers
(what the layout costs), load seconds and mean step seconds. The decomposition and
the dequantised GGUF copy are made once beforehand, so neither layout pays for them.
All layouts run with ``MALLOC_MMAP_THRESHOLD_=1048576`` (see ``main``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


LAYOUTS = {"none": "--shard none", "fsdp": "--shard fsdp", "fsdp-gathered": "--shard fsdp --fsdp-gather-rollouts"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _worker(
    rank: int, world: int, port: int, home: str, layout: str, model: str | None, settings: dict, out: str
) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "T2_HOME": home,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    import torch

    torch.set_num_threads(1)
    import transformers  # noqa: F401  (counted in the starting footprint, like torch)

    from t2cli.runtime.distributed import init_distributed, open_registry_ranked
    from t2cli.svf.adaptable import load_adaptable
    from t2cli.svf.sharded import load_sharded_adaptable
    from t2cli.tasks import get_task
    from t2cli.train.loop import TrainConfig, train

    start_rss = _rss_mib()
    shard = "none" if layout == "none" else "fsdp"
    with init_distributed("cpu") as dist, open_registry_ranked(dist) as registry:
        started = time.perf_counter()
        if shard == "fsdp":
            adaptable = load_sharded_adaptable(registry, model, targets="all", dtype=None, dist=dist)
        else:
            adaptable = load_adaptable(registry, model, device="cpu", dist=dist)
        load_s = time.perf_counter() - started
        config = TrainConfig(
            name=f"bench-{layout}",
            shard=shard,
            fsdp_gather_rollouts=layout == "fsdp-gathered",
            device="cpu",
            **settings,
        )
        result = train(registry, adaptable, get_task(settings["task"]), config, dist=dist)
    steps = [m.seconds for m in result.history]
    Path(out, f"{layout}-{rank}.json").write_text(
        json.dumps(
            {
                "rank": rank,
                "start_rss_mib": start_rss,
                "peak_rss_mib": _peak_mib(),
                "load_s": load_s,
                "step_s": sum(steps) / len(steps),
                "rewards": [m.reward for m in result.history],
            }
        )
    )


def _run(layout: str, world: int, home: str, model: str | None, settings: dict, out: str) -> list[dict]:
    import torch.multiprocessing as mp

    mp.start_processes(
        _worker,
        args=(world, _free_port(), home, layout, model, settings, out),
        nprocs=world,
        join=True,
        start_method="spawn",
    )
    return [json.loads(Path(out, f"{layout}-{rank}.json").read_text()) for rank in range(world)]


def _prepare(home: str, model: str | None) -> None:
    """Decompose (and dequantise) once, outside the measured runs."""
    os.environ["T2_HOME"] = home
    from t2cli.home import open_registry
    from t2cli.svf.adaptable import load_adaptable

    with open_registry() as registry:
        load_adaptable(registry, model, targets="all", device="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--prompts-per-step", type=int, default=4)
    args = parser.parse_args()
    settings = dict(
        task="addition",
        steps=args.steps,
        prompts_per_step=args.prompts_per_step,
        samples_per_prompt=2,
        eval_every=args.steps,
        valid_size=2,
        max_new_tokens=16,
        micro_batch=4,
        gen_batch=8,
        temperature=1.0,
        seed=0,
    )
    # glibc's dynamic mmap threshold keeps FSDP's freed all-gather buffers (one layer each, tens of MiB)
    # in the heap, so RSS climbs towards the whole model; CUDA's caching allocator reuses them instead.
    # Both layouts run with a fixed threshold, set before the workers start (glibc reads it at start-up).
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 20))
    with tempfile.TemporaryDirectory(prefix="t2-shard-bench-") as tmp:
        home = str(Path(tmp, "home"))
        print("decomposing once (not measured)...", flush=True)
        _prepare(home, args.model)
        rows = {}
        for layout in LAYOUTS:
            print(f"{LAYOUTS[layout]}: {args.ranks} ranks...", flush=True)
            rows[layout] = _run(layout, args.ranks, home, args.model, settings, tmp)
    base = rows["none"]
    print(
        f"\n{args.model or 'SmolLM2-135M-Instruct (embedded, float32)'}: {args.ranks} ranks (gloo, 1 thread each), "
        f"all targets, {args.steps} steps of {args.prompts_per_step} prompts x 2 samples, 16 new tokens"
    )
    others = [layout for layout in LAYOUTS if layout != "none"]
    print(
        f"| per rank | {LAYOUTS['none']} (baseline) | "
        + " | ".join(f"{LAYOUTS[o]} | / baseline" for o in others)
        + " |"
    )
    print("|---|---|" + "---|---|" * len(others))

    def row(label: str, value) -> None:
        for rank in range(args.ranks):
            a = value(base[rank])
            cells = " | ".join(f"{value(rows[o][rank]):,.2f} | {value(rows[o][rank]) / a:.2f}x" for o in others)
            print(f"| {label}, rank {rank} | {a:,.2f} | {cells} |")

    row("peak RSS MiB", lambda r: r["peak_rss_mib"])
    row("peak above torch + transformers MiB", lambda r: r["peak_rss_mib"] - r["start_rss_mib"])
    row("load s", lambda r: r["load_s"])
    row("mean step s", lambda r: r["step_s"])
    same = all([r["rewards"] for r in rows[o]] == [r["rewards"] for r in base] for o in others)
    print(f"\nrewards per step: {base[0]['rewards']} (identical in every layout: {same})")


if __name__ == "__main__":
    main()
