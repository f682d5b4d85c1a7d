"""Pass 1: the category parser, the classification prompt, each strategy's routing, the dispatch task."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from t2cli.ask import strategies as dispatch
from t2cli.ask.strategies import (
    BASE,
    DispatchContext,
    DispatchError,
    build_dispatcher,
    parse_strategy,
)
from t2cli.errors import ExpertNotFound
from t2cli.home import open_registry
from t2cli.svf.adaptable import load_adaptable
from t2cli.tasks import TaskError, get_task, needs_registry
from t2cli.tasks.dispatch_task import (
    CATEGORY_GUIDES,
    OTHER,
    PER_CATEGORY,
    category_experts,
    classification_prompt,
    dispatch_task,
    parse_category,
)
from tests.ask_support import add_expert, math_and_code_experts, write_task

CATEGORIES = ["code", "math", "reasoning", OTHER]

# --------------------------------------------------------------------------- the parser


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Classification: \\boxed{math}", "math"),  # the asked-for format
        ("MaTh", "math"),  # mixed case
        ("  \\boxed{ Code }.", "code"),  # spaces and punctuation
        ("I think this is a **reasoning** question, since it asks why the sky is blue.", "reasoning"),  # extra words
        ("math or code? The question mentions both.", "math"),  # two categories: the earliest mentioned
        ("It looks like code at first, but: \\boxed{math}", "math"),  # a box naming a category wins
        ("\\boxed{<category name>} ... I would say reasoning", "reasoning"),  # an empty-looking box is skipped
        ("Others.", OTHER),  # the paper's spelling of "other"
        ("The answer is 42, obviously!", None),  # garbage: no category
        ("mathematics and coding", None),  # whole words only: no guessing from stems
        ("", None),
    ],
)
def test_parse_category_on_hand_written_answers(answer: str, expected: str | None) -> None:
    assert parse_category(answer, CATEGORIES) == expected


def test_parse_category_multiword_and_longest_at_same_place() -> None:
    assert parse_category("ARC easy, I'd say", ["arc-easy", "math", OTHER]) == "arc-easy"
    assert parse_category("\\boxed{arc_easy}", ["arc-easy", OTHER]) == "arc-easy"
    assert parse_category("math-hard", ["math", "math-hard", OTHER]) == "math-hard"


def test_pass_one_stops_generating_at_the_first_box_that_names_a_category(monkeypatch) -> None:
    """What follows that box cannot change ``parse_category``'s answer, so pass 1 does not generate it."""
    from types import SimpleNamespace

    seen = {}

    def fake_generate(model, tokenizer, prompts, *, max_new_tokens, stop_when=None, **kwargs):
        seen["stop"] = stop_when
        return SimpleNamespace(texts=["Classification: \\boxed{math}"])

    # the strategies call generation through their own bindings
    monkeypatch.setattr(dispatch, "generate", fake_generate)
    monkeypatch.setattr(dispatch, "render_prompt", lambda tokenizer, message: message)
    adaptable = SimpleNamespace(model=None, tokenizer=None)
    assert dispatch.greedy_answer(adaptable, "classify this", categories=CATEGORIES) == "Classification: \\boxed{math}"
    stop = seen["stop"]
    assert stop("Classification: \\boxed{Math}")
    assert stop("\\boxed{42}, no: \\boxed{code}")
    assert not stop("Classification: \\boxed{mat")  # the box is not closed yet
    assert not stop("\\boxed{42} so far")  # a box naming no category: keep going
    assert not stop("I think math")  # no box yet: the model may still write one
    dispatch.greedy_answer(adaptable, "classify this")
    assert seen["stop"] is None  # without categories: the whole budget, as before


def test_classification_prompt_lists_categories_with_descriptions_and_other() -> None:
    text = classification_prompt("What is 17 * 3?", {"code": CATEGORY_GUIDES["code"], "math": CATEGORY_GUIDES["math"]})
    assert "1. code: " + CATEGORY_GUIDES["code"] in text and "2. math: " + CATEGORY_GUIDES["math"] in text
    assert "3. other: " in text and "\\boxed{" in text
    assert text.rstrip().endswith("Question: What is 17 * 3?")


# --------------------------------------------------------------------------- strategy names


def test_parse_strategy_names_and_errors() -> None:
    info, arg = parse_strategy("expert:math-v1")
    assert info.name == "expert" and arg == "math-v1"
    assert parse_strategy(" Prompt ")[0].name == "prompt"
    with pytest.raises(DispatchError) as unknown:
        parse_strategy("magic")
    assert "unknown strategy 'magic'" in unknown.value.message
    assert unknown.value.hint == "use one of: none, expert:NAME, prompt, classifier, cem, router, router-soft, auto"
    with pytest.raises(DispatchError, match="needs a name"):
        parse_strategy("expert")
    with pytest.raises(DispatchError, match="takes no argument"):
        parse_strategy("none:x")


def test_strategy_decorator_registers_and_refuses_duplicates(monkeypatch) -> None:
    monkeypatch.setattr(dispatch, "_STRATEGIES", dict(dispatch._STRATEGIES))

    @dispatch.strategy("always-a", help="test")
    def _always(ctx, arg):
        return lambda prompt: dispatch.Dispatch("a", {"a": 1.0}, "always a")

    assert "always-a" in dispatch.strategy_names()
    assert build_dispatcher(None, "always-a")("hi").choice == "a"  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="already registered"):
        dispatch.strategy("prompt")(_always)


# --------------------------------------------------------------------------- strategies on a tiny model


@pytest.fixture()
def env(tiny_llama: Path, tmp_path: Path):
    """A registry with the tiny model loaded and two category experts (math, code) on custom tasks."""
    with math_and_code_experts(tiny_llama, tmp_path) as (registry, adaptable, _, tasks):
        yield registry, adaptable, tasks


def _context(registry, adaptable, **options) -> DispatchContext:
    return DispatchContext(
        registry=registry,
        base_model_id=adaptable.base_model_id,
        model_name="tiny",
        tokenizer=adaptable.tokenizer,
        context_limit=None,
        adaptable=lambda: adaptable,
        **options,
    )


class StubModel:
    """A pass-1 'model' that answers with a fixed text and records what it saw."""

    def __init__(self, answer: str) -> None:
        self.answer, self.messages, self.active = answer, [], []

    def __call__(self, adaptable, message: str) -> str:
        self.messages.append(message)
        self.active.append(adaptable.svf.active)
        return self.answer


def test_category_experts_one_per_category_latest_wins(env, tiny_model_dirs) -> None:
    registry, adaptable, tasks = env
    add_expert(registry, adaptable, "m2", category="math", task=tasks["math"], seed=3)  # newer math expert
    add_expert(registry, adaptable, "mixed", category="math", kind="mixture", task=tasks["math"])
    add_expert(registry, adaptable, "router", category="dispatch", task="dispatch")
    add_expert(registry, adaptable, "nocat", category=None)
    experts = category_experts(registry, adaptable.base_model_id)
    assert [(e.category, e.expert) for e in experts] == [("code", "c"), ("math", "m2")]
    assert experts[1].description == CATEGORY_GUIDES["math"] and experts[1].task_source == tasks["math"]
    assert category_experts(registry, None) == []


@pytest.mark.parametrize(
    ("answer", "choice", "category"),
    [("Classification: \\boxed{math}", "m", "math"), ("CODE.", "c", "code"), ("other", BASE, OTHER)],
)
def test_prompt_strategy_routes_the_category_the_base_model_names(env, answer, choice, category) -> None:
    registry, adaptable, _ = env
    stub = StubModel(answer)
    from t2cli.svf.expert import load_expert

    adaptable.svf.apply(load_expert(registry, "c").z, key="c")  # whatever was applied before, pass 1 uses base
    decision = build_dispatcher(_context(registry, adaptable, complete=stub), "prompt")("What is 2 + 3?")
    assert (decision.choice, decision.category) == (choice, category)
    assert decision.weights == ({} if choice == BASE else {choice: 1.0})
    assert stub.active == [None]  # pass 1 of `prompt` runs on the base weights
    (message,) = stub.messages
    assert "code: " in message and "math: " in message and "other: " in message
    assert message.endswith("Question: What is 2 + 3?")
    assert adaptable.svf.active is None


def test_prompt_strategy_falls_back_to_base_on_an_unreadable_answer_and_says_so(env) -> None:
    registry, adaptable, _ = env
    decision = build_dispatcher(_context(registry, adaptable, complete=StubModel("h0Ao0Ao!")), "prompt")("2 + 3?")
    assert decision.choice == BASE and decision.weights == {} and decision.category is None
    assert (
        "names no category" in decision.reason and "base weights" in decision.reason and "h0Ao0Ao!" in decision.reason
    )


def test_scored_pass_one_equals_scoring_each_full_sequence(env) -> None:
    """The KV-cache shortcut of ``score_categories`` gives each candidate's full-sequence log-probability."""
    from t2cli.runtime.generation import completion_logprobs, render_prompt
    from t2cli.tasks.dispatch_task import ANSWER_PREFIX

    _, adaptable, _ = env
    names = ["math", "code", "reasoning", OTHER]
    scores = dispatch.score_categories(adaptable, "classify: What is 2 + 3?", names)
    tokenizer = adaptable.tokenizer
    prompt = tokenizer(render_prompt(tokenizer, "classify: What is 2 + 3?") + ANSWER_PREFIX, add_special_tokens=False)[
        "input_ids"
    ]
    completions = [tokenizer(name + "}", add_special_tokens=False)["input_ids"] for name in names]
    with torch.no_grad():
        logprobs, mask, _ = completion_logprobs(adaptable.model, [prompt] * len(names), completions, pad_id=0)
    for name, total in zip(names, (logprobs * mask).sum(1).tolist()):
        assert scores[name] == pytest.approx(total, abs=1e-4), name
    # the instructions' KV cached once and reused: the same scores, also for another question
    cache = {}
    for question in ("classify: What is 2 + 3?", "classify: Why is the sky blue?", "classify: What is 2 + 3?"):
        cached = dispatch.score_categories(adaptable, question + "\nQuestion: " + question, names, prefix_cache=cache)
        plain = dispatch.score_categories(adaptable, question + "\nQuestion: " + question, names)
        assert cached == pytest.approx(plain, abs=1e-4)
    assert len(cache) == 2  # one entry per distinct instructions text (the part before "Question:"), same weights


@pytest.mark.parametrize(("best", "choice"), [("code", "c"), ("math", "m"), (OTHER, BASE)])
def test_scored_pass_one_routes_the_likeliest_category(env, monkeypatch, best: str, choice: str) -> None:
    registry, adaptable, _ = env
    seen = []

    def fake_scores(adaptable, message, names, **kwargs):
        seen.append((adaptable.svf.active, list(names)))
        return {name: (-0.5 if name == best else -3.0) for name in names}

    monkeypatch.setattr(dispatch, "score_categories", fake_scores)
    decision = build_dispatcher(_context(registry, adaptable, pass1="score"), "prompt")("What is 2 + 3?")
    assert decision.choice == choice and decision.weights == ({} if choice == BASE else {choice: 1.0})
    assert decision.category == best and "scored the categories" in decision.reason
    assert seen == [(None, ["code", "math", OTHER])]  # pass 1 of `prompt` on the base weights, every category


def test_scored_pass_one_on_a_real_model_always_names_a_category(env) -> None:
    registry, adaptable, _ = env
    decision = build_dispatcher(_context(registry, adaptable, pass1="score"), "prompt")("h0Ao0Ao!")
    assert decision.category in ("code", "math", OTHER) and "names no category" not in decision.reason


def test_prompt_strategy_cuts_a_long_question_to_fit_the_window(env) -> None:
    registry, adaptable, _ = env
    stub = StubModel("math")
    ctx = _context(registry, adaptable, complete=stub)
    ctx.context_limit = 900  # the tokenizer is char-level: the template alone is ~750 tokens
    decision = build_dispatcher(ctx, "prompt")("What is " + "1 + " * 200 + "1?")
    assert "pass 1 saw the first" in decision.reason
    question = stub.messages[0].split("Question: ", 1)[1]
    assert 32 <= len(question) < 200


def test_prompt_and_classifier_need_category_experts(tiny_llama: Path) -> None:
    with open_registry() as registry:
        adaptable = load_adaptable(registry, str(tiny_llama), device="cpu")
        for name in ("prompt", "classifier"):
            with pytest.raises(DispatchError) as info:
                build_dispatcher(_context(registry, adaptable), name)
            assert "no experts with a category are registered" in info.value.message
            assert "--strategy none" in info.value.hint


def test_classifier_strategy_runs_pass_1_with_the_dispatch_expert(env) -> None:
    registry, adaptable, _ = env
    with pytest.raises(DispatchError, match="no dispatch classifier expert"):
        build_dispatcher(_context(registry, adaptable), "classifier")
    add_expert(registry, adaptable, "router-v1", category="dispatch", task="dispatch", seed=4)
    add_expert(registry, adaptable, "router-v2", category="dispatch", task="dispatch", seed=5)
    stub = StubModel("\\boxed{code}")
    decision = build_dispatcher(_context(registry, adaptable, complete=stub), "classifier")("Write f(x).")
    assert decision.choice == "c" and "classifier router-v2" in decision.reason
    assert stub.active == ["router-v2"]  # the latest dispatch expert was applied during pass 1
    assert adaptable.svf.active is None  # and removed afterwards
    named = StubModel("reasoning??")
    decision = build_dispatcher(_context(registry, adaptable, complete=named, classifier="router-v1"), "classifier")(
        "x"
    )
    assert named.active == ["router-v1"] and decision.choice == BASE and "names no category" in decision.reason


def test_expert_strategy_checks_the_expert_exists_and_fits_the_model(env, tiny_model_dirs) -> None:
    registry, adaptable, _ = env
    assert build_dispatcher(_context(registry, adaptable), "expert:m")("hi").weights == {"m": 1.0}
    assert build_dispatcher(_context(registry, adaptable), "none")("hi").weights == {}
    with pytest.raises(ExpertNotFound, match="no expert named 'nope'"):
        build_dispatcher(_context(registry, adaptable), "expert:nope")
    other = load_adaptable(registry, str(tiny_model_dirs["qwen2"]), device="cpu")
    add_expert(registry, other, "qwen-math", category="math")
    with pytest.raises(DispatchError, match="belongs to base model qwen2"):
        build_dispatcher(_context(registry, adaptable), "expert:qwen-math")


def test_cem_strategy_reuses_the_latest_cem_mixture_of_the_task(env) -> None:
    registry, adaptable, tasks = env
    with pytest.raises(DispatchError, match="needs --task"):
        build_dispatcher(_context(registry, adaptable), "cem")
    with pytest.raises(DispatchError) as missing:
        build_dispatcher(_context(registry, adaptable, task="sums"), "cem")
    assert missing.value.message == "no CEM mixture for task sums; run `t2 adapt --task sums` first"
    cem = {"stored": "effective_multiplier", "adaptation": "cem"}
    parents = [{"name": "m", "weight": 0.7, "relation": "mixed"}, {"name": "c", "weight": 0.3, "relation": "mixed"}]
    add_expert(
        registry,
        adaptable,
        "sums-cem",
        category=None,
        kind="mixture",
        task="sums",
        parametrization=cem,
        parents=parents,
    )
    add_expert(registry, adaptable, "sums-linear", category=None, kind="mixture", task="sums", parents=parents)
    add_expert(registry, adaptable, "other-cem", category=None, kind="mixture", task="funcs", parametrization=cem)
    decision = build_dispatcher(_context(registry, adaptable, task="sums"), "cem")("What is 1 plus 1?")
    assert decision.choice == "sums-cem" and decision.stored == "sums-cem"
    assert decision.weights == {"m": 0.7, "c": 0.3} and "0.7 m + 0.3 c" in decision.reason
    # the task may be named by the path it was trained from: its name is the file's stem
    assert build_dispatcher(_context(registry, adaptable, task=tasks["math"]), "cem")("x").choice == "sums-cem"
    per_role = {**cem, "mixture": {"granularity": "role", "alphas": [[0.9, 0.1], [0.5, 0.5]]}}
    add_expert(
        registry,
        adaptable,
        "sums-cem-roles",
        category=None,
        kind="mixture",
        task="sums",
        parametrization=per_role,
        parents=parents,
    )
    decision = build_dispatcher(_context(registry, adaptable, task="sums"), "cem")("x")
    assert decision.stored == "sums-cem-roles" and "per matrix role" in decision.reason


# --------------------------------------------------------------------------- the dispatch task


def test_dispatch_task_needs_the_registry() -> None:
    assert needs_registry("dispatch") and needs_registry(" Dispatch ") and not needs_registry("gsm8k")
    with pytest.raises(TaskError) as info:
        get_task("dispatch")
    assert "built from the experts registered" in info.value.message and "t2 train --task dispatch" in info.value.hint


def test_dispatch_task_draws_labelled_prompts_from_the_experts_tasks(env) -> None:
    registry, adaptable, tasks = env
    task = get_task("dispatch", registry=registry, base_model_id=adaptable.base_model_id)
    again = dispatch_task(registry, adaptable.base_model_id)
    assert task.name == "dispatch" and task.category == "dispatch"
    assert task.split_sizes() == {"train": 16, "valid": 4, "test": 4}  # 8/2/2 per source task, under PER_CATEGORY
    assert PER_CATEGORY["train"] >= 8
    categories = {"code": CATEGORY_GUIDES["code"], "math": CATEGORY_GUIDES["math"]}
    sources = {"math": get_task(tasks["math"]), "code": get_task(tasks["code"])}
    for split in ("train", "valid", "test"):
        items = task.split(split)
        assert [i.id for i in items] == [i.id for i in again.split(split)]  # fixed seed
        assert {i.answer for i in items} == {"math", "code"}
        for item in items:
            source = {s.id: s for s in sources[item.answer].split(split)}  # drawn from the same split
            original = source[item.id.split("/", 3)[3]]
            assert item.prompt == classification_prompt(original.prompt, categories)
            assert item.kind == "category" and item.meta["categories"] == ["code", "math", OTHER]
    train = task.split("train")
    assert [i.answer for i in train] != sorted(i.answer for i in train)  # categories are interleaved


def test_dispatch_task_scores_with_the_same_parser(env) -> None:
    registry, adaptable, _ = env
    task = dispatch_task(registry, adaptable.base_model_id)
    item = next(i for i in task.split("test") if i.answer == "math")
    assert task.score(item, task.reference_completion(item)).correct
    assert task.score(item, "Hmm, MATH!").correct
    assert not task.score(item, "\\boxed{code}").correct
    assert not task.score(item, "other").correct
    verdict = task.score(item, "no idea")
    assert not verdict.correct and verdict.extracted is None


def test_dispatch_task_needs_two_categories_with_loadable_tasks(tiny_llama: Path, tmp_path: Path) -> None:
    with open_registry() as registry:
        adaptable = load_adaptable(registry, str(tiny_llama), device="cpu")
        add_expert(registry, adaptable, "m", category="math", task=str(write_task(tmp_path / "s.jsonl", "Sum")))
        with pytest.raises(TaskError, match="at least two categories.*math \\(m\\)"):
            dispatch_task(registry, adaptable.base_model_id)
        add_expert(registry, adaptable, "c", category="code", task=str(tmp_path / "gone.jsonl"))
        with pytest.raises(TaskError) as info:
            dispatch_task(registry, adaptable.base_model_id)
        assert "expert 'c' was trained on task" in info.value.message and "cannot be loaded" in info.value.message


def test_train_and_eval_the_dispatch_classifier_then_ask_with_it(env, tiny_llama: Path) -> None:
    """`t2 train --task dispatch` registers the classifier; `t2 eval --task dispatch` scores it; `ask` uses it."""
    import json

    from typer.testing import CliRunner

    from t2cli.cli.app import app
    from t2cli.svf.expert import load_expert

    registry, _, _ = env
    runner = CliRunner()
    model = ["--model", str(tiny_llama), "--device", "cpu"]
    trained = runner.invoke(
        app,
        [
            "train",
            "--task",
            "dispatch",
            *model,
            "--steps",
            "1",
            "--prompts-per-step",
            "2",
            "--samples-per-prompt",
            "2",
            "--valid-size",
            "2",
            "--max-new-tokens",
            "4",
            "--json",
        ],
    )
    assert trained.exit_code == 0, trained.output
    expert = load_expert(registry, "dispatch-svf")
    assert (expert.config.task, expert.config.category) == ("dispatch", "dispatch")

    scored = runner.invoke(app, ["eval", "--task", "dispatch", "--expert", "dispatch-svf", "--limit", "3", "--json"])
    assert scored.exit_code == 0, scored.output
    result = json.loads(scored.stdout)
    assert (result["task"], result["n"], result["expert"]) == ("dispatch", 3, "dispatch-svf")
    assert all(s["answer"] in ("math", "code") for s in result["samples"])

    asked = runner.invoke(
        app, ["ask", "What is 2 + 3?", *model, "--strategy", "classifier", "--max-new-tokens", "4", "--json"]
    )
    assert asked.exit_code == 0, asked.output
    assert "classifier dispatch-svf" in json.loads(asked.stdout)["reason"]
