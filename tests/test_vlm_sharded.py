"""FSDP-sharded training of vision-language models (``--shard fsdp`` on image tasks, CPU, gloo).

The sharded loader builds the image-text model class, fills it from a checkpoint stored under
older names (the tiny LLaVA is saved as ``language_model.model.*``, as llava-hf checkpoints are)
through transformers' renaming rules, shards the language model's decoder layers and keeps the
vision tower and projector whole on every rank. In process (a one-rank gloo group) it must give
the one-process model's logits and z gradients with pictures; under torchrun 2 sharded ranks
must train the z of one plain process on ``shapes``, each rank feeding its own pictures.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from t2cli.home import open_registry
from t2cli.runtime.distributed import Dist
from tests.distributed_support import assert_resumes_in_one_process, assert_same_training, torchrun, train_args


def _shape_batch(adaptable, n: int = 2) -> dict[str, torch.Tensor]:
    """``n`` shapes prompts with their pictures, each followed by a short answer, as the loss batches them."""
    from t2cli.runtime.multimodal import batch_inputs
    from t2cli.tasks import get_task

    task = get_task("shapes")
    prompts = task.image_prompts(adaptable.processor(), task.split("train")[:n])
    rows = [p.ids + [5 + i, 6, 7] for i, p in enumerate(prompts)]
    batch = batch_inputs(prompts, rows, pad_id=adaptable.tokenizer.pad_token_id, left=False)
    return {key: value.to(adaptable.device) for key, value in batch.items()}


# --------------------------------------------------------------------------- one rank, in process


@pytest.mark.parametrize("family", ["llava", "idefics3", "gemma3"])
def test_a_sharded_vlm_gives_the_one_process_logits_and_z_gradients_with_pictures(
    one_rank_group: Dist, tiny_vlm_dirs: dict[str, Path], family: str
) -> None:
    from safetensors import safe_open
    from torch.distributed.tensor import DTensor

    from t2cli.svf.adaptable import load_adaptable
    from t2cli.svf.sharded import load_sharded_adaptable

    folder = tiny_vlm_dirs[family]
    if family == "llava":  # stored under the names llava-hf checkpoints have, not the modules' own
        with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
            assert "language_model.model.layers.0.self_attn.q_proj.weight" in set(handle.keys())
    device = one_rank_group.device
    with open_registry() as registry:
        sharded = load_sharded_adaptable(registry, str(folder), targets="all", dtype=None, dist=one_rank_group)
        plain = load_adaptable(registry, str(folder), targets="all", device=device)
    svf, net = sharded.svf, sharded.model
    assert type(net).__name__.removeprefix("FSDP") == type(plain.model).__name__  # the image-text class
    assert len(svf.layers) == 14 and len(svf.units) == 2  # the language model's 2 decoder layers, 7 matrices each
    unit_ids = {id(p) for unit in svf.units for p in unit.parameters()}
    params = dict(net.named_parameters())
    image_side = [n for n in params if "vision" in n or "projector" in n or "connector" in n]
    assert image_side and not any(isinstance(params[n], DTensor) for n in image_side)  # replicated, outside FSDP
    assert not any(id(params[n]) in unit_ids for n in image_side)
    assert all(isinstance(p, DTensor) for n, p in params.items() if n not in image_side)

    batch = _shape_batch(sharded)
    assert "pixel_values" in batch
    with torch.no_grad():
        expected = plain.model(**batch).logits
        assert torch.equal(net(**batch).logits, expected)  # every tensor loaded, renamed ones included
        # Grey pictures (Idefics3 takes all-zero ones for padding and drops them): other logits
        grey = {**batch, "pixel_values": torch.full_like(batch["pixel_values"], 0.5)}
        assert not torch.allclose(net(**grey).logits, expected, atol=1e-4)  # the pictures reach the model

    generator = torch.Generator().manual_seed(3)
    z = {n: (1 + 0.3 * torch.randn(f.rank, generator=generator)).to(device) for n, f in plain.svf.factors.items()}
    svf.refresh(z)
    mine = {n: v.clone().requires_grad_(True) for n, v in z.items()}
    with svf.bound(mine):
        adapted = net(**batch).logits
        adapted.float().pow(2).mean().backward()
    theirs = {n: v.clone().requires_grad_(True) for n, v in z.items()}
    logits = plain.svf.forward_with(plain.svf.differentiable_weights(theirs), **batch).logits
    logits.float().pow(2).mean().backward()
    assert torch.allclose(adapted, logits, atol=1e-5)
    scale = max(float(v.grad.abs().max()) for v in theirs.values())
    assert scale > 0
    assert max(float((mine[n].grad - theirs[n].grad).abs().max()) for n in z) < 1e-5 * scale
    with torch.no_grad():  # the KL reference reads W with the pictures
        assert torch.equal(svf.base_forward(**batch).logits, expected)
    svf.restore()


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_a_sharded_qwen_vl_gives_the_one_process_logits_with_its_image_grid(
    one_rank_group: Dist, tiny_vlm_dirs: dict[str, Path], family: str
) -> None:
    """Qwen2-VL's inputs (``image_grid_thw``, multimodal RoPE) through the sharded model; its processor
    needs torchvision, so the inputs are built by its image processor (tests/vlm_models.py)."""
    from t2cli.svf.adaptable import load_adaptable
    from t2cli.svf.sharded import load_sharded_adaptable
    from tests.vlm_models import image_inputs

    device = one_rank_group.device
    with open_registry() as registry:
        sharded = load_sharded_adaptable(
            registry, str(tiny_vlm_dirs[family]), targets="attn", dtype=None, dist=one_rank_group
        )
        plain = load_adaptable(registry, str(tiny_vlm_dirs[family]), targets="attn", device=device)
    assert len(sharded.svf.units) == 2
    inputs = {key: value.to(device) for key, value in image_inputs(family).items()}
    generator = torch.Generator().manual_seed(5)
    z = {n: (1 + 0.3 * torch.randn(f.rank, generator=generator)).to(device) for n, f in plain.svf.factors.items()}
    with torch.no_grad():
        assert torch.equal(sharded.model(**inputs).logits, plain.model(**inputs).logits)
        sharded.svf.refresh(z)
        plain.svf.apply(z)
        assert torch.allclose(sharded.model(**inputs).logits, plain.model(**inputs).logits, atol=1e-5)
    plain.svf.restore()
    sharded.svf.restore()


def test_fsdp_refuses_vision_tower_targets_before_anything_loads(tiny_vlm_dirs: dict[str, Path]) -> None:
    from t2cli.errors import T2Error
    from t2cli.svf.sharded import load_sharded_adaptable

    dist = Dist()  # refused while rank 0 prepares, before the model is built: no process group is reached
    with open_registry() as registry:
        with pytest.raises(T2Error, match="adapts the language model only.*vision tower") as refused:
            load_sharded_adaptable(registry, str(tiny_vlm_dirs["llava"]), targets="vision", dtype=None, dist=dist)
        assert "without --shard" in (refused.value.hint or "")
        with pytest.raises(T2Error, match="projector"):
            load_sharded_adaptable(registry, str(tiny_vlm_dirs["llava"]), targets="linear_1", dtype=None, dist=dist)
        assert registry.status().rows["decompositions"] == 0  # nothing was decomposed or loaded


# --------------------------------------------------------------------------- two ranks


def _rank_outputs(rank: int, world: int, store_file: str, home: str, model: str, out: str) -> None:
    """One rank of 2: greedy completions and their log-probs for this rank's own shapes prompts, sharded.

    Rank 0 takes item 0, rank 1 items 1 and 2 (uneven: rank 0 pads its generate call). A second
    pass greys rank 1's pictures only; a third gives rank 0 a text prompt (no picture: its forwards
    skip the vision tower that rank 1's run). Written to ``out/rank{rank}.pt``.
    """
    import os
    import sys

    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "T2_HOME": home})
    torch.set_num_threads(1)
    import torch.distributed as td

    from t2cli.eval.accuracy import item_prompts
    from t2cli.runtime.distributed import TIMEOUT, init_distributed, open_registry_ranked
    from t2cli.runtime.generation import completion_logprobs, generate, render_prompt
    from t2cli.svf.sharded import load_sharded_adaptable
    from t2cli.tasks import get_task

    td.init_process_group("gloo", store=td.FileStore(store_file, world), rank=rank, world_size=world, timeout=TIMEOUT)
    try:
        with init_distributed("cpu") as dist, open_registry_ranked(dist) as registry:
            adaptable = load_sharded_adaptable(registry, model, targets="all", dtype=None, dist=dist)
            task = get_task("shapes")
            mine = task.split("train")[:3][slice(0, 1) if rank == 0 else slice(1, 3)]
            own = item_prompts(adaptable, task, mine)
            text = [render_prompt(adaptable.tokenizer, "Name a shape.")]
            passes = {
                "own": own,
                "grey": [_greyed(p) for p in own] if rank == 1 else own,
                "text": text if rank == 0 else own,
            }
            results = {}
            for name, prompts in passes.items():
                gens = generate(adaptable.model, adaptable.tokenizer, prompts, max_new_tokens=4, sync=dist)
                logprobs, _, _ = completion_logprobs(
                    adaptable.model,
                    gens.prompt_ids,
                    gens.completion_ids,
                    pad_id=adaptable.tokenizer.pad_token_id,
                    image_prompts=gens.image_prompts,
                )
                results[name] = (gens.completion_ids, logprobs.sum(dim=1))
            torch.save(results, Path(out) / f"rank{rank}.pt")
        td.barrier()
    finally:
        td.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # as tests/distributed_support.py's workers: gloo's threads may abort interpreter finalisation


def _greyed(prompt):
    """``prompt`` with grey pictures (the same ids and sizes; Idefics3 would drop all-zero ones as padding)."""
    from dataclasses import replace

    return replace(
        prompt, tensors={**prompt.tensors, "pixel_values": torch.full_like(prompt.tensors["pixel_values"], 0.5)}
    )


def test_each_sharded_rank_generates_and_scores_with_its_own_pictures(
    tiny_vlm_dirs: dict[str, Path], tmp_path: Path, t2_home: Path
) -> None:
    import tempfile
    import time

    import torch.multiprocessing as mp

    from t2cli.eval.accuracy import item_prompts
    from t2cli.runtime.generation import completion_logprobs, generate
    from t2cli.svf.adaptable import load_adaptable
    from t2cli.tasks import get_task
    from tests.distributed_support import LAUNCH_TIMEOUT_S

    model = str(tiny_vlm_dirs["llava"])
    rendezvous = Path(tempfile.mkdtemp(prefix="t2-rendezvous-"))
    args = (2, str(rendezvous / "store"), str(t2_home), model, str(tmp_path))
    context = mp.start_processes(_rank_outputs, args=args, nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    try:
        while not context.join(timeout=5):
            if time.monotonic() > deadline:
                pytest.fail(f"the 2-process run did not finish in {LAUNCH_TIMEOUT_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]

    # One plain process, each item alone: what every rank must have computed for its own items.
    task = get_task("shapes")
    with open_registry() as registry:
        plain = load_adaptable(registry, model, device="cpu")
    expected = []
    for prompts in ([item_prompts(plain, task, [item])[0]] for item in task.split("train")[:3]):
        gens = generate(plain.model, plain.tokenizer, prompts, max_new_tokens=4)
        logprobs, _, _ = completion_logprobs(
            plain.model,
            gens.prompt_ids,
            gens.completion_ids,
            pad_id=plain.tokenizer.pad_token_id,
            image_prompts=gens.image_prompts,
        )
        expected.append((gens.completion_ids[0], float(logprobs.sum())))
    got = [(ids, float(lp)) for rank in ranks for ids, lp in zip(*rank["own"])]
    assert [ids for ids, _ in got] == [ids for ids, _ in expected]
    assert [lp for _, lp in got] == pytest.approx([lp for _, lp in expected], abs=1e-4)
    # Rank 1's grey pictures change its scores; rank 0's, with its own pictures, do not move.
    assert ranks[0]["grey"][0] == ranks[0]["own"][0] and torch.equal(ranks[0]["grey"][1], ranks[0]["own"][1])
    assert not torch.allclose(ranks[1]["grey"][1], ranks[1]["own"][1], atol=1e-3)
    # A rank without pictures (a text prompt) runs beside one with pictures: nothing waits, nothing moves.
    assert ranks[1]["text"][0] == ranks[1]["own"][0] and torch.equal(ranks[1]["text"][1], ranks[1]["own"][1])
    assert len(ranks[0]["text"][0]) == 1


@pytest.mark.parametrize(
    ("family", "settings", "flags"),
    [
        # 5 pictures split 2 + 3, sampled rollouts (4 and 6 sequences), batches of 4: rank 0 pads its
        # generate calls (with a picture prompt) and its loss micro-batches (with a text dummy) to meet
        # every collective of rank 1's second batch.
        ("llava", {"prompts-per-step": 5, "temperature": 1.0, "micro-batch": 4, "batch-size": 4}, []),
        # Greedy rollouts with a KL penalty (its reference forward reads W with the pictures), rollouts and
        # validation on the gathered language model.
        ("idefics3", {"temperature": 0.0, "kl-coef": 0.2}, ["--fsdp-gather-rollouts"]),
    ],
    ids=["llava-sampled-uneven", "idefics3-kl-gathered"],
)
def test_two_fsdp_ranks_train_the_z_of_one_process_on_shapes_and_only_rank_0_writes(
    family: str, settings: dict, flags: list[str], tiny_vlm_dirs: dict[str, Path], tmp_path: Path, t2_home: Path
) -> None:
    from typer.testing import CliRunner

    from registry import Registry
    from t2cli.cli.app import app

    # The raw +/-1 reward: every rollout has a gradient, though a random model rarely names a shape right.
    args = train_args(Path("shapes"), tiny_vlm_dirs[family], "shapes-fsdp", advantage="raw", **settings)
    args[args.index("--task") + 1] = "shapes"
    two_home = tmp_path / "home-fsdp"
    two = torchrun([*args, "--shard", "fsdp", *flags], two_home, tmp_path)
    assert "FSDP-sharded model: 2 processes (gloo)" in two.stderr
    single = CliRunner().invoke(app, args + ["--json"])
    assert single.exit_code == 0, single.output
    result2, result1 = json.loads(two.stdout.splitlines()[-1]), json.loads(single.stdout.splitlines()[-1])
    assert_same_training(result2, result1, two_home, t2_home)
    with Registry.open(two_home) as registry:  # rank 1 opened it read-only: a write would have failed the run
        rows = registry.status().rows
    assert rows["training_runs"] == 1 and rows["experts"] == 1 and rows["decompositions"] == 1
    assert len(list((two_home / "runs").glob("*/checkpoint.safetensors"))) == 1
    if "kl-coef" in settings:
        assert any(m["kl"] > 0 for m in result1["history"][1:])  # the penalty was live after the first step


def test_an_fsdp_checkpoint_on_shapes_resumes_in_one_unsharded_process(
    tiny_vlm_dirs: dict[str, Path], tmp_path: Path, t2_home: Path
) -> None:
    # 2 sharded ranks (spawned) stop after step 2; one plain process resumes and ends where an
    # uninterrupted plain run does: the checkpoint holds z, not the layout.
    assert_resumes_in_one_process(
        tiny_vlm_dirs["llava"], tmp_path, t2_home, task_name="shapes", advantage="raw", shard="fsdp"
    )
