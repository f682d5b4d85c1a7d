"""`t2 ask --image`: every strategy with a picture, pass 1 and pass 2 see it, the base weights come back, bad input.

Tiny random LLaVA and Idefics3 models from tests/vlm_models.py, each with a processor built from
local parts (Qwen2-VL's needs torchvision, not installed). Nothing of the model is mocked: a random
model's answers and features change with the picture it is shown, which is what these tests read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from t2cli.ask import engine
from t2cli.ask.engine import Asker, AskSettings
from t2cli.ask.strategies import DispatchContext, _router_probabilities, greedy_answer, score_categories
from t2cli.cli.app import app
from t2cli.home import open_registry
from t2cli.router.features import prompt_features
from t2cli.router.store import current_router, register_router
from t2cli.router.train import select_experts, train_router
from t2cli.runtime.multimodal import batch_inputs, encode_plain_image_prompt
from t2cli.svf.adaptable import load_adaptable
from t2cli.svf.model import compose_weight
from t2cli.tasks.images import ImageFile
from tests.ask_support import add_expert, math_and_code_experts, registry_snapshot
from tests.vlm_models import IMAGE_SIZE, PROCESSOR_FAMILIES, drawn_image

runner = CliRunner()
SHORT = ["--max-new-tokens", "8", "--device", "cpu"]
QUESTION = "What is in the picture?"


def t2(*args: str):
    return runner.invoke(app, list(args))


def _pictures(folder: Path) -> dict[str, Path]:
    """The drawn picture, a blank one, one of seeded noise, and files that are not images."""
    folder.mkdir(exist_ok=True)
    paths = {name: folder / f"{name}.png" for name in ("shapes", "blank", "noise", "corrupt", "notes")}
    drawn_image().save(paths["shapes"])
    Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), "white").save(paths["blank"])
    noise = torch.randint(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), generator=torch.Generator().manual_seed(0))
    Image.fromarray(noise.to(torch.uint8).numpy()).save(paths["noise"])
    whole = paths["shapes"].read_bytes()
    paths["corrupt"].write_bytes(whole[: len(whole) // 2])  # a truncated PNG
    paths["notes"].write_text("not a picture\n")
    return paths


@pytest.fixture()
def pictures(tmp_path: Path) -> dict[str, Path]:
    return _pictures(tmp_path / "pictures")


@pytest.fixture(params=PROCESSOR_FAMILIES)
def vlm(request, tiny_vlm_dirs: dict[str, Path], tmp_path: Path, pictures: dict[str, Path]):
    """A tiny VLM loaded in the test's registry with experts m (math), c (code), ident (z = 1), a CEM
    mixture of m and c, a dispatch classifier, and a router r1 over m and c; plus the pictures."""
    model = tiny_vlm_dirs[request.param]
    with math_and_code_experts(model, tmp_path) as (registry, adaptable, zs, _):
        zs["ident"] = add_expert(registry, adaptable, "ident", category=None, scale=0.0)
        zs["cem"] = add_expert(
            registry,
            adaptable,
            "cem",
            category=None,
            kind="mixture",
            task="sums",
            seed=3,
            parametrization={"stored": "effective_multiplier", "adaptation": "cem"},
            parents=[
                {"name": "m", "weight": 0.5, "relation": "mixed"},
                {"name": "c", "weight": 0.5, "relation": "mixed"},
            ],
        )
        add_expert(registry, adaptable, "dispatcher", category="dispatch", task="dispatch", seed=9)
        experts = select_experts(registry, adaptable.base_model_id, None)
        router = train_router(
            registry, adaptable, name="r1", experts=experts, per_class={"train": 16, "valid": 4}, pool="expert"
        ).router
        register_router(registry, router, base_model_id=adaptable.base_model_id)
        yield registry, adaptable, zs, model, pictures


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _assert_base_weights(adaptable, snapshot) -> None:
    for name, tensor in adaptable.model.state_dict().items():
        assert torch.equal(tensor, snapshot[name]), name
    assert adaptable.svf.active is None


def _images(*paths: Path) -> tuple[ImageFile, ...]:
    return tuple(ImageFile(path) for path in paths)


@contextmanager
def vision_runs(model) -> Iterator[list[int]]:
    """Counts the forward passes of the model's vision tower (a hook: the model itself is untouched)."""
    tower = next(m for name, m in model.named_modules() if name.endswith(("vision_tower", "vision_model", "visual")))
    runs: list[int] = []
    handle = tower.register_forward_hook(lambda module, args, output: runs.append(1))
    try:
        yield runs
    finally:
        handle.remove()


# --------------------------------------------------------------------------- the engine, strategy by strategy

STRATEGIES = [
    ("none", {}, {}),
    ("expert:m", {}, {"m": 1.0}),
    ("cem", {"task": "sums"}, {"m": 0.5, "c": 0.5}),
    ("prompt", {"pass1": "score"}, None),
    ("prompt", {"pass1": "generate"}, None),
    ("classifier", {"pass1": "score", "classifier": "dispatcher"}, None),
    ("router", {}, None),
    ("router-soft", {}, None),
    ("auto", {}, None),
]


def test_every_strategy_answers_a_prompt_with_an_image(vlm, monkeypatch) -> None:
    registry, adaptable, zs, _, pictures = vlm
    seen: list[dict] = []  # what pass 2 was given, and the weights bound when it started
    real = engine.stream_generate

    def recording(adaptable, prompt, **kwargs):
        seen.append({"prompt": prompt, "weights": {n: p.data.clone() for n, p in adaptable.svf._params.items()}})
        return real(adaptable, prompt, **kwargs)

    monkeypatch.setattr(engine, "stream_generate", recording)
    snapshot = _snapshot(adaptable.model)
    svf = adaptable.svf
    for strategy, options, weights in STRATEGIES:
        seen.clear()
        asker = Asker(registry, AskSettings(strategy=strategy, max_new_tokens=4, **options), adaptable=adaptable)
        with vision_runs(adaptable.model) as runs:
            result = asker.ask(QUESTION, images=_images(pictures["shapes"]))
        reads_prompt = strategy not in ("none", "expert:m", "cem")
        assert len(runs) == (2 if reads_prompt else 1), strategy  # pass 1 (when it reads the prompt) and pass 2
        _assert_base_weights(adaptable, snapshot)
        assert result.images == (str(pictures["shapes"]),) and 1 <= result.tokens <= 4, strategy
        if weights is not None:
            assert result.weights == weights, strategy
        if strategy.startswith("router") or strategy == "auto":
            assert "router r1 (" in result.reason, (strategy, result.reason)
        if options.get("pass1") == "score":
            assert "scored the categories" in result.reason, (strategy, result.reason)
        (call,) = seen
        assert "pixel_values" in call["prompt"].tensors, strategy  # pass 2 got the picture
        if result.weights == {"m": 1.0}:  # the chosen expert's weights were bound for pass 2
            for name, weight in call["weights"].items():
                assert torch.equal(weight, compose_weight(svf._base[name], svf.factors[name], zs["m"][name])), name


def test_identity_expert_answers_exactly_like_the_base_weights_with_the_image(vlm) -> None:
    registry, adaptable, _, _, pictures = vlm
    askers = {
        strategy: Asker(registry, AskSettings(strategy=strategy, max_new_tokens=24), adaptable=adaptable)
        for strategy in ("none", "expert:ident", "expert:m")
    }
    # Two pictures: a random model's answer may happen to match its text-only answer for one of them
    # (the drawing, for the tiny LLaVA; the noise, for the tiny Idefics3), never for both.
    for picture in ("shapes", "noise"):
        answers = {
            strategy: asker.ask(QUESTION, images=_images(pictures[picture])) for strategy, asker in askers.items()
        }
        base, identity = answers["none"], answers["expert:ident"]
        assert identity.choice == "ident" and base.choice == "base"
        assert (identity.answer, identity.tokens) == (base.answer, base.tokens), picture
        assert answers["expert:m"].answer != base.answer  # an expert that is not the identity changes the answer


def test_the_image_reaches_both_passes(vlm) -> None:
    registry, adaptable, _, _, pictures = vlm
    # A random model barely looks at a clean drawing (the drawn and the blank picture get the same greedy
    # answer from the tiny Idefics3); seeded noise against a blank picture moves every pass on both families.
    noise, blank = (Image.open(pictures[name]).convert("RGB") for name in ("noise", "blank"))
    # Pass 2: the same question with another picture is answered otherwise.
    asker = Asker(registry, AskSettings(strategy="none", max_new_tokens=12), adaptable=adaptable)
    answers = [asker.ask(QUESTION, images=_images(pictures[name])).answer for name in ("noise", "blank")]
    assert answers[0] != answers[1], answers
    # Pass 1: scoring and generating the classification see the picture.
    message = "Classify: " + QUESTION
    names = ["code", "math", "other"]
    scored = [score_categories(adaptable, message, names, images=[image]) for image in (noise, blank)]
    assert scored[0] != scored[1] and scored[0] != score_categories(adaptable, message, names)
    generated = [greedy_answer(adaptable, message, images=[image]) for image in (noise, blank)]
    assert generated[0] != generated[1], generated
    # The router's class probabilities move with the picture.
    router = Asker(registry, AskSettings(strategy="router"), adaptable=adaptable)
    ctx = DispatchContext(
        registry=registry,
        base_model_id=adaptable.base_model_id,
        model_name="tiny",
        tokenizer=adaptable.tokenizer,
        context_limit=None,
        adaptable=lambda: adaptable,
    )
    loaded = current_router(registry, "r1", adaptable.base_model_id, "tiny")[1]
    probabilities = [_router_probabilities(ctx, loaded, QUESTION, images) for images in ([noise], [blank], [])]
    assert probabilities[0] != probabilities[1] and probabilities[0] != probabilities[2]
    assert router.dispatch(QUESTION, images=[noise]).category in loaded.config.classes


@pytest.mark.parametrize("family", PROCESSOR_FAMILIES)
def test_router_features_read_the_prompt_with_its_image(family: str, tiny_vlm_dirs, pictures) -> None:
    with open_registry() as registry:
        adaptable = load_adaptable(registry, str(tiny_vlm_dirs[family]), device="cpu")
    model, tokenizer, processor = adaptable.model, adaptable.tokenizer, adaptable.processor()
    blank = Image.open(pictures["blank"]).convert("RGB")
    shown = encode_plain_image_prompt(processor, QUESTION, [drawn_image()])
    rows = [QUESTION, encode_plain_image_prompt(processor, QUESTION, []), shown]
    rows.append(encode_plain_image_prompt(processor, QUESTION, [blank]))
    features = prompt_features(model, tokenizer, rows, layers=[0, 1], pooling="mean")
    assert torch.equal(features[0], features[1])  # without images: the text's features, exactly
    assert not torch.allclose(features[2], features[0]) and not torch.allclose(features[2], features[3])
    # The mean is over the prompt's tokens, image placeholders left out, from a forward that saw the pixels.
    inputs = batch_inputs([shown], [shown.ids], pad_id=0, left=False)
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states
    keep = ~torch.isin(inputs["input_ids"][0], torch.tensor(shown.placeholders))
    assert 0 < int(keep.sum()) < len(shown.ids)
    width = hidden[1].shape[-1]  # hidden_states[1]: decoder layer 0's output (the last entry is after the norm)
    assert torch.allclose(features[2, :width], hidden[1][0][keep].mean(0), atol=1e-5)


PASS1 = [  # the strategies whose pass 1 reads the prompt
    ("prompt", {"pass1": "score"}),
    ("prompt", {"pass1": "generate"}),
    ("classifier", {"pass1": "score", "classifier": "dispatcher"}),
    ("classifier", {"pass1": "generate", "classifier": "dispatcher"}),
    ("router", {}),
    ("router-soft", {}),
    ("auto", {}),
]


def test_pass_1_of_every_strategy_that_reads_the_prompt_runs_the_vision_tower(vlm) -> None:
    registry, adaptable, _, _, pictures = vlm
    noise = Image.open(pictures["noise"]).convert("RGB")
    with vision_runs(adaptable.model) as runs:  # pass 1 encodes the picture; for a text prompt, nothing
        for strategy, options in PASS1:
            asker = Asker(registry, AskSettings(strategy=strategy, **options), adaptable=adaptable)
            runs.clear()
            asker.dispatch(QUESTION, images=[noise])
            assert len(runs) == 1, (strategy, options, len(runs))
            runs.clear()
            asker.dispatch(QUESTION)
            assert not runs, (strategy, options)


# --------------------------------------------------------------------------- the command


def test_ask_image_through_the_command(vlm) -> None:
    _, _, _, model, pictures = vlm
    shapes = str(pictures["shapes"])
    for strategy in ("none", "expert:m", "router"):
        ask = ["ask", QUESTION, "--image", shapes, "--model", str(model), "--strategy", strategy, *SHORT]
        result = t2(*ask, "--json")
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["images"] == [shapes] and data["strategy"] == strategy and data["prompt"] == QUESTION
        assert data["choice"] == {"none": "base", "expert:m": "m"}.get(strategy, data["choice"])
        assert strategy != "router" or data["reason"].startswith("router r1 (")
        streamed = t2(*ask, "-v")  # streamed: the same answer
        assert streamed.exit_code == 0, streamed.output
        assert streamed.stdout == data["answer"] + "\n" and f"pass 1 ({strategy}, " in streamed.stderr
    two = t2("ask", QUESTION, "-i", shapes, "-i", str(pictures["blank"]), "--model", str(model), "--json", *SHORT)
    assert two.exit_code == 0, two.output
    assert json.loads(two.stdout)["images"] == [shapes, str(pictures["blank"])]


@pytest.mark.parametrize("family", PROCESSOR_FAMILIES)
def test_ask_jsonl_with_image_fields(family: str, tiny_vlm_dirs, pictures, tmp_path: Path) -> None:
    model = tiny_vlm_dirs[family]
    questions = tmp_path / "questions.jsonl"
    lines = [
        {"prompt": QUESTION, "image": "pictures/shapes.png"},
        {"prompt": "What is 2 + 3?"},
        {"prompt": QUESTION, "image": ["pictures/blank.png", "pictures/shapes.png"]},
    ]
    questions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = t2("ask", "-f", str(questions), "--model", str(model), "--strategy", "none", "--json", *SHORT)
    assert result.exit_code == 0, result.output
    answers = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert answers[0]["images"] == [str(pictures["shapes"])] and "images" not in answers[1]
    assert answers[2]["images"] == [str(pictures["blank"]), str(pictures["shapes"])]


def _one_error_line(result) -> str:
    text = result.stderr
    assert "Traceback" not in text, text
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: "), text
    assert len(lines) <= 2 and all(line.startswith(("error: ", "hint: ")) for line in lines), text
    return lines[0]


BAD = [  # (what, the command given the pictures, the models and a folder, exit code, the error line holds)
    (
        "missing image",
        lambda p, m, t: ["ask", "hi", "--image", str(t / "absent.png"), "--model", m["vlm"]],
        1,
        "does not exist",
    ),
    (
        "corrupt image",
        lambda p, m, t: ["ask", "hi", "--image", str(p["corrupt"]), "--model", m["vlm"]],
        1,
        "is not a readable image",
    ),
    (
        "not an image",
        lambda p, m, t: ["ask", "hi", "-i", str(p["notes"]), "--model", m["vlm"]],
        1,
        "is not an image Pillow can read",
    ),
    (
        "text model",
        lambda p, m, t: ["ask", "hi", "--image", str(p["shapes"]), "--model", m["text"]],
        2,
        "is a text-only model",
    ),
    (
        "image with -f",
        lambda p, m, t: ["ask", "-f", str(_jsonl(t, {"prompt": "a"})), "-i", str(p["shapes"]), "--model", m["vlm"]],
        2,
        "--image goes with a PROMPT",
    ),
    (
        "bad image in a JSONL line",
        lambda p, m, t: [
            "ask",
            "-f",
            str(_jsonl(t, {"prompt": "a"}, {"prompt": "b", "image": "pictures/corrupt.png"})),
            "--model",
            m["vlm"],
        ],
        1,
        "q.jsonl line 2: image 'pictures/corrupt.png'",
    ),
    (
        "image field not a path",
        lambda p, m, t: ["ask", "-f", str(_jsonl(t, {"prompt": "a", "image": 3})), "--model", m["vlm"]],
        1,
        "q.jsonl line 1: 'image' must be a path",
    ),
]


def _jsonl(folder: Path, *lines: dict) -> Path:
    path = folder / "q.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_image_input_is_one_clear_line_and_writes_nothing(
    case, tiny_vlm_dirs, tiny_llama: Path, pictures, tmp_path: Path, t2_home: Path
) -> None:
    _, make_args, code, expected = case
    model = tiny_vlm_dirs["llava"]
    assert t2("decompose", str(model), "--device", "cpu").exit_code == 0  # a registry with something in it
    before = registry_snapshot(t2_home)
    result = t2(*make_args(pictures, {"vlm": str(model), "text": str(tiny_llama)}, tmp_path))
    assert result.exit_code == code, result.output
    assert expected in _one_error_line(result)
    assert registry_snapshot(t2_home) == before


def test_image_on_the_embedded_text_model_is_refused_before_the_bank_installs(tmp_path: Path, t2_home: Path) -> None:
    picture = tmp_path / "shapes.png"
    drawn_image().save(picture)
    result = t2("ask", "What is this?", "--image", str(picture))  # the default model, strategy auto
    assert result.exit_code == 2, result.output
    line = _one_error_line(result)
    assert "images need a vision-language model" in line and "text-only model" in line
    assert not (t2_home / "bank-installed.json").exists()
