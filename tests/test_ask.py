"""`t2 ask`: routing to the chosen z, cached switches, base weights restored, JSON, batch input, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from t2cli.ask import engine as ask_module
from t2cli.ask import strategies as dispatch
from t2cli.ask.engine import Asker, AskError, AskSettings, read_prompts
from t2cli.cli.app import app
from t2cli.svf.model import compose_weight
from tests.ask_support import (
    add_expert,
    math_and_code_experts,
    registry_snapshot,
)

runner = CliRunner()
SHORT = ["--max-new-tokens", "6", "--device", "cpu"]


def t2(*args: str, input: str | bytes | None = None):
    return runner.invoke(app, list(args), input=input)


def _single_error_line(result) -> str:
    text = result.stderr
    assert "Traceback" not in text, text
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: "), text
    assert len(lines) <= 2 and all(line.startswith(("error: ", "hint: ")) for line in lines), text
    return text


@pytest.fixture()
def env(tiny_llama: Path, tmp_path: Path):
    """The tiny model loaded, experts m (math) and c (code), and a CEM mixture for task `sums`."""
    with math_and_code_experts(tiny_llama, tmp_path) as (registry, adaptable, zs, _):
        zs["sums-cem"] = add_expert(
            registry,
            adaptable,
            "sums-cem",
            category=None,
            kind="mixture",
            task="sums",
            seed=3,
            parametrization={"stored": "effective_multiplier", "adaptation": "cem"},
            parents=[
                {"name": "m", "weight": 0.6, "relation": "mixed"},
                {"name": "c", "weight": 0.4, "relation": "mixed"},
            ],
        )
        yield registry, adaptable, zs


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _assert_base_weights(adaptable, snapshot) -> None:
    """Every tensor equals the snapshot bit for bit, and each target is bound to its original tensor."""
    for name, tensor in adaptable.model.state_dict().items():
        assert torch.equal(tensor, snapshot[name]), name
    svf = adaptable.svf
    assert svf.active is None
    assert all(svf._params[n].data.data_ptr() == svf._base[n].data_ptr() for n in svf._params)


@pytest.fixture()
def pass2_weights(monkeypatch):
    """Records the target weights bound when pass 2 starts."""
    seen: list[dict[str, torch.Tensor]] = []
    real = ask_module.stream_generate

    def recording(adaptable, prompt, **kwargs):
        seen.append({name: p.data.clone() for name, p in adaptable.svf._params.items()})
        return real(adaptable, prompt, **kwargs)

    monkeypatch.setattr(ask_module, "stream_generate", recording)
    return seen


def _expected(adaptable, z) -> dict[str, torch.Tensor]:
    svf = adaptable.svf
    return {
        name: compose_weight(svf._base[name], svf.factors[name], z[name]) if z else svf._base[name]
        for name in svf._params
    }


def _assert_weights(seen: dict, expected: dict) -> None:
    for name, weight in expected.items():
        assert torch.equal(seen[name], weight), name


@pytest.mark.parametrize(
    ("strategy", "options", "stub", "applied"),
    [
        ("none", {}, None, None),
        ("expert:m", {}, None, "m"),
        ("prompt", {}, "\\boxed{code}", "c"),
        ("prompt", {}, "no idea", None),
        ("classifier", {"classifier": "router"}, "Math.", "m"),
        ("cem", {"task": "sums"}, None, "sums-cem"),
    ],
)
def test_each_strategy_answers_with_the_z_it_chose(env, pass2_weights, strategy, options, stub, applied) -> None:
    registry, adaptable, zs = env
    if strategy == "classifier":
        add_expert(registry, adaptable, "router", category="dispatch", task="dispatch", seed=9)
    snapshot = _snapshot(adaptable.model)
    complete = (lambda model, message: stub) if stub else None  # the random model cannot classify: a stub decides
    asker = Asker(
        registry, AskSettings(strategy=strategy, max_new_tokens=4, **options), adaptable=adaptable, complete=complete
    )
    result = asker.ask("What is 2 + 3?")
    assert result.choice == (applied or "base")
    _assert_weights(pass2_weights[0], _expected(adaptable, zs.get(applied)))
    _assert_base_weights(adaptable, snapshot)
    assert 1 <= result.tokens <= 4 and result.strategy == strategy


def test_a_mixture_is_the_weighted_sum_of_z(env, pass2_weights, monkeypatch) -> None:
    registry, adaptable, zs = env
    monkeypatch.setattr(dispatch, "_STRATEGIES", dict(dispatch._STRATEGIES))

    @dispatch.strategy("half-half")
    def _half(ctx, arg):
        return lambda prompt: dispatch.Dispatch("mix", {"m": 0.5, "c": 0.5}, "half and half")

    result = Asker(registry, AskSettings(strategy="half-half", max_new_tokens=3), adaptable=adaptable).ask("2+3?")
    mixed = {name: 0.5 * zs["m"][name] + 0.5 * zs["c"][name] for name in zs["m"]}
    # Summed from the experts' composed weights (affine in z), so equal up to float rounding.
    for name, weight in _expected(adaptable, mixed).items():
        assert torch.allclose(pass2_weights[0][name], weight, atol=1e-5), name
    assert result.weights == {"m": 0.5, "c": 0.5} and not result.cached
    assert dispatch.mixture_key({"c": 0.5, "m": 0.5}) == dispatch.mixture_key({"m": 0.5, "c": 0.5})


def test_a_mixture_with_a_base_share_and_a_missing_matrix_equals_composing_its_z(env) -> None:
    """z' = 0.25 z_a + 0.5 z_b + 0.25 * 1, where expert b does not adapt one matrix (z = 1 there)."""
    _, adaptable, zs = env
    svf = adaptable.svf
    dropped = next(iter(zs["c"]))
    zb = {name: z for name, z in zs["c"].items() if name != dropped}
    svf.apply_mixture({"m": (0.25, zs["m"]), "c-partial": (0.5, zb)}, label="test")
    try:
        for name in svf._params:
            z = 0.25 * zs["m"][name] + 0.5 * zb.get(name, torch.ones_like(zs["m"][name])) + 0.25
            expected = compose_weight(svf._base[name], svf.factors[name], z)
            assert torch.allclose(svf._params[name].data, expected, atol=1e-5), name
        assert svf.is_cached("m") and svf.is_cached("c-partial")  # the experts' W' are kept for the next mixture
    finally:
        svf.restore()
    assert all(svf._params[n].data.data_ptr() == svf._base[n].data_ptr() for n in svf._params)


def test_switching_reuses_composed_weights(env, monkeypatch) -> None:
    registry, adaptable, _ = env
    calls = []
    real = adaptable.svf.composed
    monkeypatch.setattr(adaptable.svf, "composed", lambda z: calls.append(1) or real(z))
    by_name: dict[str, Asker] = {}
    cached = []
    for name in ("m", "c", "m", "c", "m"):
        asker = by_name.setdefault(
            name, Asker(registry, AskSettings(strategy=f"expert:{name}", max_new_tokens=2), adaptable=adaptable)
        )
        cached.append(asker.ask("2+3?").cached)
    assert cached == [False, False, True, True, True]
    assert len(calls) == 2  # m and c composed once each; switching back reused them


def test_base_weights_are_restored_after_an_error_mid_generation(env) -> None:
    registry, adaptable, _ = env
    snapshot = _snapshot(adaptable.model)
    asker = Asker(registry, AskSettings(strategy="expert:m", max_new_tokens=6), adaptable=adaptable)
    pieces: list[str] = []

    def fail_on_second_piece(piece: str) -> None:
        assert adaptable.svf.active == "m"  # mid-generation, with the expert applied
        pieces.append(piece)
        if len(pieces) == 2:
            raise RuntimeError("the terminal went away")

    with pytest.raises(RuntimeError, match="terminal went away"):
        asker.ask("What is 2 + 3?", on_text=fail_on_second_piece)
    assert len(pieces) == 2
    _assert_base_weights(adaptable, snapshot)

    def ctrl_c(piece: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        asker.ask("What is 2 + 3?", on_text=ctrl_c)
    _assert_base_weights(adaptable, snapshot)
    assert asker.ask("What is 2 + 3?").answer  # and the next prompt still works


def test_streamed_text_is_the_answer(env) -> None:
    registry, adaptable, _ = env
    pieces: list[str] = []
    result = Asker(registry, AskSettings(strategy="expert:c", max_new_tokens=8), adaptable=adaptable).ask(
        "Say something.", on_text=pieces.append
    )
    assert "".join(pieces) == result.answer and len(pieces) >= 2


def test_read_prompts_formats() -> None:
    assert read_prompts(b"first question\n\n  second one  \n", "f.txt") == ["first question", "  second one  "]
    assert read_prompts(b'\xef\xbb\xbf{"prompt": "a"}\n{"prompt": "b", "id": 2}\n', "f.jsonl") == ["a", "b"]
    with pytest.raises(AskError, match='f.jsonl line 2 has no "prompt" string'):
        read_prompts(b'{"prompt": "a"}\n{"question": "b"}\n', "f.jsonl")
    with pytest.raises(AskError, match="the prompt on f.jsonl line 1 is empty"):
        read_prompts(b'{"prompt": "  "}\n', "f.jsonl")
    with pytest.raises(AskError, match=r"not valid UTF-8 \(byte 0xe9 on line 2\)"):
        read_prompts(b"ok\ncaf\xe9\n", "f.txt")
    with pytest.raises(AskError, match="holds no prompt"):
        read_prompts(b"\n \n", "f.txt")


# --------------------------------------------------------------------------- the command


def test_ask_json_fields(env, tiny_llama: Path) -> None:
    result = t2("ask", "What is 2 + 3?", "--model", str(tiny_llama), "--strategy", "expert:m", "--json", *SHORT)
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.strip().splitlines()
    data = json.loads(line)
    assert set(data) == {"prompt", "answer", "strategy", "choice", "category", "weights", "reason", "timings", "tokens"}
    assert set(data["timings"]) == {"dispatch_s", "switch_s", "generate_s", "total_s"}
    assert data["choice"] == "m" and data["weights"] == {"m": 1.0} and data["strategy"] == "expert:m"
    assert 1 <= data["tokens"] <= 6 and data["prompt"] == "What is 2 + 3?" and "expert m" in data["reason"]
    timings = data["timings"]
    assert min(timings.values()) >= 0
    assert timings["total_s"] >= timings["dispatch_s"] + timings["switch_s"] + timings["generate_s"] - 1e-6


def test_ask_streams_the_answer_and_shows_the_dispatch(env, tiny_llama: Path) -> None:
    plain = t2("ask", "What is 2 + 3?", "--strategy", "expert:m", "--show-dispatch", *SHORT)  # the expert's model
    assert plain.exit_code == 0, plain.output
    as_json = json.loads(t2("ask", "What is 2 + 3?", "--strategy", "expert:m", "--json", *SHORT).stdout)
    assert plain.stdout == as_json["answer"] + "\n"
    assert "pass 1 (expert:m, " in plain.stderr and "-> m: expert m" in plain.stderr
    assert "switch " in plain.stderr and "pass 2 " in plain.stderr and "total " in plain.stderr


def test_ask_prompt_strategy_classifies_with_the_base_model(env, tiny_llama: Path, monkeypatch) -> None:
    monkeypatch.setattr(dispatch, "greedy_answer", lambda adaptable, message, **kw: "Classification: \\boxed{math}")
    result = t2("ask", "What is 2 + 3?", "--model", str(tiny_llama), "--strategy", "prompt", "--json", *SHORT)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["strategy"], data["choice"], data["category"]) == ("prompt", "m", "math")


def test_ask_defaults_to_auto_which_without_a_router_answers_with_the_base_weights(env, tiny_llama: Path) -> None:
    result = t2("ask", "What is 2 + 3?", "--model", str(tiny_llama), "--json", *SHORT)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["strategy"], data["choice"]) == ("auto", "base")
    assert "no router" in data["reason"] and "t2 router train" in data["reason"]


def test_ask_batch_from_a_file_and_from_stdin(env, tiny_llama: Path, tmp_path: Path) -> None:
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text('{"prompt": "What is 1 + 1?"}\n\n{"prompt": "Write f(x)."}\n')
    result = t2("ask", "-f", str(jsonl), "--model", str(tiny_llama), "--strategy", "expert:c", "--json", *SHORT)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [d["prompt"] for d in lines] == ["What is 1 + 1?", "Write f(x)."] and {d["choice"] for d in lines} == {"c"}

    stdin = t2(
        "ask",
        "-f",
        "-",
        "--model",
        str(tiny_llama),
        "--strategy",
        "none",
        "--json",
        *SHORT,
        input="first prompt\nsecond prompt\nthird prompt\n",
    )
    assert stdin.exit_code == 0, stdin.output
    lines = [json.loads(line) for line in stdin.stdout.strip().splitlines()]
    assert [d["prompt"] for d in lines] == ["first prompt", "second prompt", "third prompt"]
    assert {d["choice"] for d in lines} == {"base"}

    text = t2("ask", "-f", "-", "--model", str(tiny_llama), "--strategy", "none", *SHORT, input="one\ntwo\n")
    assert text.exit_code == 0 and "[1/2] one" in text.stderr and "[2/2] two" in text.stderr
    assert len(text.stdout.splitlines()) >= 2


def test_ask_restores_base_weights_after_ctrl_c_mid_answer(env, tiny_llama: Path, monkeypatch) -> None:
    import t2cli.ask.engine

    loaded = []
    real_load = t2cli.ask.engine.load_adaptable

    def capture(*args, **kwargs):
        adaptable = real_load(*args, **kwargs)
        loaded.append((adaptable, _snapshot(adaptable.model)))
        return adaptable

    real_put = ask_module._CallbackStreamer.put
    calls = []

    def interrupt_on_third_put(self, value):
        calls.append(1)
        if len(calls) == 3:  # the prompt, one token, then Ctrl-C
            raise KeyboardInterrupt
        return real_put(self, value)

    monkeypatch.setattr(t2cli.ask.engine, "load_adaptable", capture)
    monkeypatch.setattr(ask_module._CallbackStreamer, "put", interrupt_on_third_put)
    result = t2("ask", "What is 2 + 3?", "--model", str(tiny_llama), "--strategy", "expert:m", *SHORT)
    assert result.exit_code == 130
    assert "interrupted" in _single_error_line(result)
    ((adaptable, snapshot),) = loaded
    _assert_base_weights(adaptable, snapshot)


def _non_utf8(tmp_path: Path) -> Path:
    path = tmp_path / "latin1.txt"
    path.write_bytes("What is the caf\xe9 price?\n".encode("latin-1"))
    return path


BAD_INPUTS = [
    ("empty prompt", lambda m, t: ["ask", "", "--model", m], "the prompt is empty"),
    ("blank prompt", lambda m, t: ["ask", "   \n", "--model", m], "the prompt is empty"),
    (
        "huge prompt",
        lambda m, t: ["ask", "x" * 300, "--model", m, "--max-new-tokens", "8"],
        "exceeds the 128-token context window of llama",
    ),
    ("answer budget beyond the window", lambda m, t: ["ask", "hi", "--model", m], "lower --max-new-tokens below 128"),
    (
        "unknown strategy",
        lambda m, t: ["ask", "hi", "--model", m, "--strategy", "magic"],
        "use one of: none, expert:NAME, prompt, classifier, cem, router, router-soft",
        2,
    ),
    ("unknown expert", lambda m, t: ["ask", "hi", "--model", m, "--strategy", "expert:nope"], "no expert named 'nope'"),
    ("unknown expert, no model", lambda m, t: ["ask", "hi", "--strategy", "expert:nope"], "no expert named 'nope'"),
    ("no classifier", lambda m, t: ["ask", "hi", "--model", m, "--strategy", "classifier"], "no dispatch classifier"),
    ("cem without task", lambda m, t: ["ask", "hi", "--model", m, "--strategy", "cem"], "needs --task"),
    (
        "cem without mixture",
        lambda m, t: ["ask", "hi", "--model", m, "--strategy", "cem", "--task", "funcs"],
        "no CEM mixture for task funcs; run `t2 adapt --task funcs` first",
    ),
    ("non-UTF-8 file", lambda m, t: ["ask", "-f", str(_non_utf8(t)), "--model", m], "is not valid UTF-8"),
    ("missing file", lambda m, t: ["ask", "-f", str(t / "absent.txt"), "--model", m], "does not exist"),
    (
        "bad JSONL",
        lambda m, t: ["ask", "-f", str(_write(t / "p.jsonl", '{"prompt": "a"}\n{"prompt": 3}\n')), "--model", m],
        'line 2 has no "prompt" string',
    ),
    (
        "one huge prompt in a batch",
        lambda m, t: [
            "ask",
            "-f",
            str(_write(t / "p.txt", "short\n" + "y" * 300 + "\n")),
            "--model",
            m,
            "--max-new-tokens",
            "8",
        ],
        "prompt 2 is 3",
    ),
    ("bad max-new-tokens", lambda m, t: ["ask", "hi", "--model", m, "--max-new-tokens", "0"], "at least 1", 2),
    (
        "unknown pass-1 mode",
        lambda m, t: ["ask", "hi", "--model", m, "--pass1", "guess"],
        "use one of: generate, score",
        2,
    ),
]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_clear_line_its_exit_code_registry_unchanged(case, env, tiny_llama, tmp_path, t2_home) -> None:
    _, make_args, expected, *code = case
    before = registry_snapshot(t2_home)
    result = t2(*make_args(str(tiny_llama), tmp_path))
    assert result.exit_code == (code[0] if code else 1), result.output  # 2: a value outside its allowed set
    assert expected in _single_error_line(result)
    assert registry_snapshot(t2_home) == before


def test_no_experts_for_prompt_strategy_is_clear(tiny_llama: Path, t2_home: Path) -> None:
    assert t2("decompose", str(tiny_llama), "--device", "cpu").exit_code == 0
    before = registry_snapshot(t2_home)
    result = t2("ask", "What is 2 + 3?", "--model", str(tiny_llama), "--strategy", "prompt")
    assert result.exit_code == 1
    text = _single_error_line(result)
    assert "no experts with a category are registered for llama" in text and "--strategy none" in text
    assert registry_snapshot(t2_home) == before


def test_prompt_and_file_together_is_a_usage_error(tmp_path: Path) -> None:
    result = t2("ask", "hi", "-f", str(_write(tmp_path / "p.txt", "x\n")))
    assert result.exit_code == 2 and "give either a PROMPT or -f FILE" in _single_error_line(result)
    assert t2("ask").exit_code == 2
