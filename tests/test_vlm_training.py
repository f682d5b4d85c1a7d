"""Training and evaluation on image tasks: prompts through the model's processor, images in rollouts and loss.

Tiny random VLMs from tests/vlm_models.py (LLaVA and Idefics3 carry a processor built from local
parts). The learning test fits one briefly on a simpler subset of ``shapes`` (what colour the
shapes are), then trains an SVF expert with t2's own loop, once with the pictures and once with
every picture replaced by a blank one: only the run that sees the pictures gains.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from t2cli.cli.app import app
from t2cli.eval.accuracy import evaluate
from t2cli.home import open_registry
from t2cli.runtime.generation import completion_logprobs, generate
from t2cli.runtime.multimodal import batch_inputs
from t2cli.svf.adaptable import Adaptable, load_adaptable
from t2cli.tasks import get_task
from t2cli.tasks.shapes import COLOURS, SHAPES, SIZE, Scene, Shape
from t2cli.tasks.types import Task, TaskItem
from t2cli.train.loop import CHECKPOINT_FILE, TrainConfig, train
from tests.vlm_models import IMAGE_TOKEN, PROCESSOR_FAMILIES, build_tiny_vlm


@pytest.mark.parametrize("family", PROCESSOR_FAMILIES)
def test_identity_expert_gives_the_base_logits_through_the_processor(
    family: str, tiny_vlm_dirs: dict[str, Path]
) -> None:
    task = get_task("shapes")
    with open_registry() as registry:
        adaptable = load_adaptable(registry, str(tiny_vlm_dirs[family]), device="cpu")
        prompts = task.image_prompts(adaptable.processor(), task.split("test")[:3])
        inputs = batch_inputs(prompts, [p.ids for p in prompts], pad_id=0, left=True)
        # One picture per prompt, all in the batch (Qwen2-VL's pixel rows are patches: one grid per picture).
        assert len(inputs.get("image_grid_thw", inputs["pixel_values"])) == 3
        with torch.no_grad():
            base = adaptable.model(**inputs).logits
            ones = {name: torch.ones_like(f.S) for name, f in adaptable.svf.factors.items()}
            with adaptable.svf.adapted(ones):
                identity = adaptable.model(**inputs).logits
            # The pictures reach the model: the same ids with the pictures swapped between rows give other logits.
            swapped = dict(inputs, pixel_values=inputs["pixel_values"].roll(1, dims=0))
            other = adaptable.model(**swapped).logits
    assert torch.equal(base, identity)
    assert not torch.allclose(base, other)


@pytest.mark.parametrize("family", PROCESSOR_FAMILIES)  # Gemma 3: the placeholder is not its processor's image_token_id
def test_rollouts_never_write_an_image_placeholder(family: str, tiny_vlm_dirs: dict[str, Path]) -> None:
    # A random model samples any id; a placeholder in a completion would make the loss forward look for
    # image features it does not have. Without the suppression some of these 64 do, and the forward below raises.
    task = get_task("shapes")
    with open_registry() as registry:
        adaptable = load_adaptable(registry, str(tiny_vlm_dirs[family]), device="cpu")
        prompts = task.image_prompts(adaptable.processor(), task.split("test")[:8])
        gens = generate(
            adaptable.model,
            adaptable.tokenizer,
            prompts,
            max_new_tokens=8,
            temperature=1.0,
            per_prompt=8,
            sample_keys=list(range(64)),
        )
        logprobs, mask, _ = completion_logprobs(
            adaptable.model, gens.prompt_ids, gens.completion_ids, pad_id=0, image_prompts=gens.image_prompts
        )
    assert not any(IMAGE_TOKEN in ids for ids in gens.completion_ids)
    assert len(gens.image_prompts) == 64 and torch.isfinite(logprobs).all() and mask.sum() > 0


def test_eval_scores_shapes_on_a_tiny_vlm_through_the_cli(tiny_vlm_dirs: dict[str, Path]) -> None:
    model = str(tiny_vlm_dirs["llava"])
    result = CliRunner().invoke(
        app, ["eval", "--task", "shapes", "--base", "--model", model, "--limit", "8", "--max-new-tokens", "4", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["n"] == 8 and report["split"] == "test" and len(report["samples"]) == 8
    assert 0.0 <= report["accuracy"] <= 1.0 and report["correct"] == sum(s["correct"] for s in report["samples"])


def test_train_on_shapes_resumes_after_an_interrupt(tiny_vlm_dirs: dict[str, Path], monkeypatch) -> None:
    import t2cli.train.loop as loop

    command = ["train", "--task", "shapes", "--model", str(tiny_vlm_dirs["idefics3"]), "--name", "shapes-tiny"]
    command += ["--steps", "2", "--prompts-per-step", "2", "--samples-per-prompt", "2", "--valid-size", "4"]
    command += ["--max-new-tokens", "4", "--eval-every", "1"]
    record = loop._record_metrics

    def interrupt_at_step_2(registry, run_id, metrics) -> None:
        record(registry, run_id, metrics)
        if metrics.step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_record_metrics", interrupt_at_step_2)
    first = CliRunner().invoke(app, command)
    assert first.exit_code == 130, first.output
    assert "--resume" in first.output
    monkeypatch.setattr(loop, "_record_metrics", record)
    resumed = CliRunner().invoke(app, [*command, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "resumed run-" in resumed.output and "at step 2" in resumed.output
    assert "expert shapes-tiny registered" in " ".join(resumed.output.split())


# --------------------------------------------------------------------------- learning through the image

FIT_UNTIL = 0.27  # the fit stops once the gold answer's mean probability on training pictures reaches this
FIT_MAX_STEPS = 1500
RL = dict(steps=24, prompts_per_step=16, samples_per_prompt=8, lr=0.02, eval_every=24, valid_size=64)


@dataclass(frozen=True)
class BlankPicture:
    """A white picture of the task's size, in place of an item's scene (an ``ItemImage``)."""

    source: str = "blank"

    def open(self) -> Image.Image:
        return Image.new("RGB", (SIZE, SIZE), "white")


class ShapeColours(Task):
    """A simpler subset of ``shapes``: every shape of a scene has one colour; which? (4 answers, 25% by chance).

    ``blank``: the same items, each picture replaced by a white one (the answer is then unknowable).
    """

    name = "shape-colours"
    category = "vision"
    max_new_tokens = 8

    def __init__(self, *, blank: bool = False) -> None:
        super().__init__()
        self.blank = blank

    def _build_splits(self) -> dict[str, list[TaskItem]]:
        return {
            split: self._items(split, n, seed)
            for split, n, seed in (("train", 256, 1), ("valid", 64, 2), ("test", 64, 3))
        }

    def _items(self, split: str, n: int, seed: int) -> list[TaskItem]:
        rng = random.Random(f"colours:{seed}")
        items = []
        for i in range(n):
            colour = rng.choice(sorted(COLOURS))
            cells = sorted(rng.sample(range(9), 9))  # a shape in every cell of the 3 x 3 grid
            scene = Scene(
                tuple(Shape(rng.choice(SHAPES), colour, 16 + 32 * (c % 3), 16 + 32 * (c // 3)) for c in cells)
            )
            picture = BlankPicture() if self.blank else scene
            items.append(TaskItem(f"{split}/{i}", "What colour are the shapes?", colour, "exact", images=(picture,)))
        return items


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread for this module: the fit stops at a threshold crossed in a sharp transition, and
    float reductions split over other thread counts move where (measured: with 2 threads, image
    0.327 -> 0.420, blank 0.226 -> 0.240; the figures below are one thread's)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fitted_vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LLaVA fitted on ShapeColours' training pictures until it begins to read the colour (~10 s).

    Supervised steps on the answer tokens, stopped once the gold answer's mean probability on 64
    training items reaches ``FIT_UNTIL`` (chance: 0.25). Measured: the fit goes through a sharp
    transition from ignoring the picture to reading it (~90% greedy accuracy a few dozen steps
    later), whose step moves with the data and seed; stopping at the threshold rather than at a
    fixed step leaves the model answering with colour words, reading the picture a little, and
    with room for SVF-RL to gain.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    root = tmp_path_factory.mktemp("fitted-vlm")
    base = build_tiny_vlm("llava", root / "random", seed=0)
    processor = AutoProcessor.from_pretrained(base)
    model = AutoModelForImageTextToText.from_pretrained(base)
    items = ShapeColours().split("train")
    prompts = ShapeColours().image_prompts(processor, items)
    answers = [processor.tokenizer(i.answer + "<|im_end|>", add_special_tokens=False)["input_ids"] for i in items]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    draws = torch.Generator().manual_seed(0)
    for step in range(FIT_MAX_STEPS):
        if step % 5 == 0:
            with torch.no_grad():
                logprobs, _, _ = completion_logprobs(
                    model, [p.ids for p in prompts[:64]], answers[:64], pad_id=0, image_prompts=prompts[:64]
                )
            if float(logprobs.sum(dim=1).exp().mean()) >= FIT_UNTIL:
                break
        batch = torch.randint(len(items), (16,), generator=draws).tolist()
        rows = [prompts[i].ids + answers[i] for i in batch]
        inputs = batch_inputs([prompts[i] for i in batch], rows, pad_id=0, left=False)
        labels = torch.full_like(inputs["input_ids"], -100)  # the loss is on the answer tokens only
        for row, i in enumerate(batch):
            start = len(prompts[i].ids)
            labels[row, start : start + len(answers[i])] = torch.tensor(answers[i])
        loss = model(**inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    else:
        raise AssertionError(f"the tiny VLM did not learn to read the colour in {FIT_MAX_STEPS} steps")
    fitted = root / "fitted"
    model.eval().save_pretrained(fitted)
    for file in base.iterdir():  # tokenizer, processor and chat template as they were
        if not (fitted / file.name).exists():
            shutil.copy(file, fitted / file.name)
    return fitted


def expected_accuracy(adaptable: Adaptable, task: Task, z: dict[str, torch.Tensor] | None) -> float:
    """Mean probability of the gold answer on the test split: the accuracy of the policy sampling at T = 1, exactly.

    This is what REINFORCE raises; greedy decoding takes only each item's top answer, which
    a few SVF steps on this tiny model move little (the before/after greedy figures are in docs/vlm.md).
    """
    items = task.split("test")
    prompts = task.image_prompts(adaptable.processor(), items)
    gold = [adaptable.tokenizer(i.answer + "<|im_end|>", add_special_tokens=False)["input_ids"] for i in items]
    with torch.no_grad(), adaptable.svf.adapted(z):
        logprobs, _, _ = completion_logprobs(
            adaptable.model, [p.ids for p in prompts], gold, pad_id=0, image_prompts=prompts
        )
    return float(logprobs.sum(dim=1).exp().mean())


def test_svf_rl_gains_through_the_image_and_not_without_it(fitted_vlm: Path, capsys) -> None:
    figures: dict[str, tuple[float, float]] = {}
    greedy: dict[str, tuple[float, ...]] = {}  # for docs/vlm.md: greedy test accuracy, base and last z
    for blank in (False, True):
        task = ShapeColours(blank=blank)
        label = "blank" if blank else "image"
        with open_registry() as registry:
            adaptable = load_adaptable(registry, str(fitted_vlm), device="cpu")
            config = TrainConfig(
                task=task.name, name=label, max_new_tokens=8, micro_batch=64, gen_batch=64, device="cpu", seed=0, **RL
            )
            result = train(registry, adaptable, task, config)
            # The z of the last step (the registered expert is the best on greedy validation, see expected_accuracy).
            checkpoint = load_file(str(registry.home / "runs" / result.run_id / CHECKPOINT_FILE))
            z = {name[2:]: value for name, value in checkpoint.items() if name.startswith("z/")}
            figures[label] = (expected_accuracy(adaptable, task, None), expected_accuracy(adaptable, task, z))
            greedy[label] = tuple(evaluate(registry, adaptable, task, z=w, record=False).accuracy for w in (None, z))
    with capsys.disabled():
        print(f"\nexpected accuracy before -> after SVF-RL: {figures}; greedy: {greedy}")
    (image_before, image_after), (blank_before, blank_after) = figures["image"], figures["blank"]
    # Measured: image 0.285 -> 0.378, blank 0.239 -> 0.241. Rollouts without the pictures: image
    # 0.285 -> 0.246, blank -> 0.172; the loss forward without them: image -> 0.339, blank -> 0.175.
    assert image_after > image_before + 0.07, figures
    # With blank pictures nothing can be learnt (the colours are balanced) and, the loss scoring the rollouts
    # as they were generated, nothing is lost either; scoring them without the pictures they were
    # generated from is an off-policy gradient that drives this figure down.
    assert abs(blank_after - blank_before) < 0.03, figures
