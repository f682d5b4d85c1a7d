"""Bad input, table first: every case exits 1 (2 for usage), prints exactly one `error:` line (plus
an optional `hint:`), no traceback, and leaves the registry exactly as it was.

Each case builds its arguments from a prepared home (tiny llama with experts `a` and `b`, tiny
qwen2 with expert `q`, copied into the test's T2_HOME) and files it writes under tmp. Earlier
tables (tests/test_cli.py BAD_INPUTS, tests/test_tasks_custom.py, tests/test_ask.py) overlap on
purpose: this one is self-contained. Ctrl-C at several stages follows the table (exit 130).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from t2cli.cli.app import app


def _w(path: Path, data: str | bytes) -> str:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


def _task(t: Path, *lines: str) -> str:
    return _w(t / "task.jsonl", "".join(line + "\n" for line in lines))


OK_LINE = '{"prompt": "1+1=?", "answer": "2", "kind": "number"}'


def _truncated(m: dict, t: Path) -> str:
    copy = shutil.copytree(m["llama"], t / "truncated")
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    return str(copy)


def _gguf(t: Path, arch: str) -> str:
    """A small but well-formed GGUF file whose architecture t2 does not support."""
    import numpy as np
    from gguf import GGUFWriter

    path = t / f"{arch}.gguf"
    writer = GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_context_length(32)
    writer.add_embedding_length(8)
    writer.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


M = "--model"
# (id, args(m: model folders, t: tmp dir) -> argv, exit code, text the error line must contain)
BAD_INPUTS = [
    # unknown names
    ("unknown model alias", lambda m, t: ["decompose", "llama9-1t"], 1, "unknown model 'llama9-1t'"),
    ("missing model path", lambda m, t: ["decompose", str(t / "no-such-model")], 1, "does not exist"),
    ("unknown expert (ask)", lambda m, t: ["ask", "hi", M, m["llama"], "--strategy", "expert:nope"], 1, "nope"),
    ("unknown expert (mix)", lambda m, t: ["mix", "a", "nope"], 1, "nope"),
    ("unknown expert (show)", lambda m, t: ["experts", "show", "nope"], 1, "no expert named 'nope'"),
    ("unknown expert (rm)", lambda m, t: ["experts", "rm", "nope", "--yes"], 1, "nope"),
    ("unknown expert (export)", lambda m, t: ["export", "nope", str(t / "out")], 1, "nope"),
    ("unknown task", lambda m, t: ["eval", "--task", "no-such-task", "--base", M, m["llama"]], 2, "no-such-task"),
    ("unknown strategy", lambda m, t: ["ask", "hi", M, m["llama"], "--strategy", "telepathy"], 2, "telepathy"),
    ("unknown mixing method", lambda m, t: ["mix", "a", "b", "--method", "median"], 2, "median"),
    (
        "unknown split",
        lambda m, t: ["eval", "--task", _task(t, OK_LINE), "--base", M, m["llama"], "--split", "dev"],
        2,
        "dev",
    ),
    (
        "train --resume with no run",
        lambda m, t: ["train", "--task", _task(t, OK_LINE), "--name", "x", "--resume", M, m["llama"]],
        1,
        "no interrupted run",
    ),
    # malformed task files
    (
        "task: bad JSON",
        lambda m, t: ["eval", "--task", _task(t, '{"prompt": "1+1"'), "--base", M, m["llama"]],
        1,
        "not valid JSON",
    ),
    (
        "task: missing field",
        lambda m, t: ["eval", "--task", _task(t, '{"prompt": "1+1=?", "kind": "number"}'), "--base", M, m["llama"]],
        1,
        "missing field 'answer'",
    ),
    (
        "task: wrong kind",
        lambda m, t: [
            "eval",
            "--task",
            _task(t, '{"prompt": "p", "answer": "2", "kind": "vibes"}'),
            "--base",
            M,
            m["llama"],
        ],
        1,
        "unknown kind 'vibes'",
    ),
    (
        "task: not an object",
        lambda m, t: ["eval", "--task", _task(t, "[1, 2]"), "--base", M, m["llama"]],
        1,
        "expected a JSON object",
    ),
    (
        "task: empty file",
        lambda m, t: ["eval", "--task", _w(t / "empty.jsonl", ""), "--base", M, m["llama"]],
        1,
        "has no items",
    ),
    (
        "task: 3 MB line",
        lambda m, t: [
            "eval",
            "--task",
            _w(t / "big.jsonl", '{"prompt": "' + "x" * 3_000_000 + '"}\n'),
            "--base",
            M,
            m["llama"],
        ],
        1,
        "1 MB limit",
    ),
    (
        "task: not UTF-8",
        lambda m, t: [
            "eval",
            "--task",
            _w(t / "latin1.jsonl", '{"prompt": "caf\xe9?", "answer": "1", "kind": "number"}\n'.encode("latin-1")),
            "--base",
            M,
            m["llama"],
        ],
        1,
        "not valid UTF-8",
    ),
    # mixing weights
    ("mix: NaN weight", lambda m, t: ["mix", "a", "b", "--weights", "nan,0.5"], 2, "nan"),
    ("mix: inf weight", lambda m, t: ["mix", "a", "b", "--weights", "inf,0.5"], 2, "inf"),
    ("mix: negative weight", lambda m, t: ["mix", "a", "b", "--weights", "-0.5,1.5"], 2, "-0.5"),
    ("mix: wrong number of weights", lambda m, t: ["mix", "a", "b", "--weights", "0.2,0.3,0.5"], 2, "3 weights"),
    ("mix: weight not a number", lambda m, t: ["mix", "a", "b", "--weights", "half,half"], 2, "'half' is not a number"),
    ("mix: one expert", lambda m, t: ["mix", "a"], 2, "at least two experts"),
    ("mix: experts of two base models", lambda m, t: ["mix", "a", "q"], 1, "q"),
    # models and files
    (
        "expert of another base model",
        lambda m, t: ["eval", "--task", _task(t, OK_LINE), "--expert", "a", M, m["qwen2"]],
        1,
        "'a'",
    ),
    ("truncated safetensors", lambda m, t: ["decompose", _truncated(m, t)], 1, "truncated or corrupt"),
    ("GGUF of gpt2", lambda m, t: ["decompose", _gguf(t, "gpt2")], 1, "architecture 'gpt2' is not supported"),
    ("GGUF of bert", lambda m, t: ["decompose", _gguf(t, "bert")], 1, "architecture bert is not supported"),
    ("GGUF garbage", lambda m, t: ["decompose", _w(t / "junk.gguf", b"GGUF" + b"\xff" * 60)], 1, "GGUF"),
    (
        "invalid --targets regex",
        lambda m, t: ["decompose", m["llama"], "--targets", "layers.("],
        2,
        "not a valid regular expression",
    ),
    (
        "--targets matches nothing",
        lambda m, t: ["decompose", m["llama"], "--targets", "lm_head"],
        2,
        "matches no matrix",
    ),
    # prompts
    ("empty prompt", lambda m, t: ["ask", "", M, m["llama"]], 1, "empty"),
    ("whitespace prompt", lambda m, t: ["ask", "   \n\t ", M, m["llama"]], 1, "empty"),
    ("prompt beyond the context window", lambda m, t: ["ask", "1+" * 400, M, m["llama"]], 1, "context window"),
    (
        "prompt file not UTF-8",
        lambda m, t: ["ask", "-f", _w(t / "p.txt", b"caf\xe9\xff?\n"), M, m["llama"]],
        1,
        "UTF-8",
    ),
    ("prompt file missing", lambda m, t: ["ask", "-f", str(t / "absent.txt"), M, m["llama"]], 1, "absent.txt"),
    # conflicting or missing flags
    ("ask: prompt and -f", lambda m, t: ["ask", "hi", "-f", _w(t / "p.txt", "hi\n"), M, m["llama"]], 2, "PROMPT or -f"),
    (
        "eval: --expert and --base",
        lambda m, t: ["eval", "--task", _task(t, OK_LINE), "--expert", "a", "--base"],
        2,
        "exactly one of",
    ),
    ("export: --merged and --lora", lambda m, t: ["export", "a", str(t / "out"), "--merged", "--lora"], 2, "--merged"),
    (
        "train: --steps 0",
        lambda m, t: ["train", "--task", _task(t, OK_LINE), "--steps", "0", M, m["llama"]],
        2,
        "steps",
    ),
    ("unknown device", lambda m, t: ["decompose", m["llama"], "--device", "tpu"], 2, "unknown device 'tpu'"),
    ("push: invalid repo id", lambda m, t: ["push", "a", "not a/repo id!"], 1, "not a/repo id!"),
    (
        "import: not an expert folder",
        lambda m, t: ["import", str(t)],
        1,
        "has no expert.safetensors: it is not a t2 expert",
    ),
]


@pytest.fixture(scope="module")
def prepared_home(tiny_model_dirs, tmp_path_factory) -> Path:
    """A home with experts `a`, `b` (tiny llama) and `q` (tiny qwen2), built once and copied per test."""
    import os

    from registry import Registry
    from t2cli.svf.adaptable import load_adaptable
    from tests.expert_factory import make_expert

    home = tmp_path_factory.mktemp("bad-input") / "home"
    with Registry.open(home) as registry:
        llama = load_adaptable(registry, str(tiny_model_dirs["llama"]), device="cpu")
        make_expert(registry, llama, "a", seed=0)
        make_expert(registry, llama, "b", seed=1)
        qwen = load_adaptable(registry, str(tiny_model_dirs["qwen2"]), device="cpu")
        make_expert(registry, qwen, "q", seed=2)
    assert os.listdir(home)
    return home


def snapshot(home: Path) -> tuple:
    """Rows of every table and the set of blob files: a bad command must change neither."""
    import sqlite3

    with sqlite3.connect(home / "registry.db") as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        rows = {t: sorted(map(repr, conn.execute(f'SELECT * FROM "{t}"'))) for t in tables}
    blobs = sorted(p.name for p in (home / "blobs" / "sha256").rglob("*") if p.is_file())
    return rows, blobs


def check_one_error(result, code: int) -> str:
    text = result.stderr if result.stderr else result.output
    assert result.exit_code == code, (result.exit_code, text)
    assert "Traceback" not in text and "Traceback" not in result.output, text
    lines = [line for line in text.strip().splitlines() if line.strip()]
    errors = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert len(errors) == 1, text
    # progress lines ("loading MODEL...") may come first; after the error only its hint
    tail = lines[errors[0] + 1 :]
    assert len(tail) <= 1 and all(line.startswith("hint: ") for line in tail), text
    assert not any(line.startswith("hint: ") for line in lines[: errors[0]]), text
    return text


@pytest.fixture()
def home(prepared_home: Path, t2_home: Path) -> Path:
    shutil.copytree(prepared_home, t2_home)
    return t2_home


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input(case, home: Path, tiny_model_dirs, tmp_path: Path, hf_cache: Path) -> None:
    _, make_args, code, expected = case
    work = tmp_path / "work"
    work.mkdir()
    models = {arch: str(path) for arch, path in tiny_model_dirs.items()}
    args = make_args(models, work)
    before = snapshot(home)
    result = CliRunner().invoke(app, args)
    text = check_one_error(result, code)
    assert expected in text, text
    assert snapshot(home) == before


def test_the_checks_see_a_command_that_writes(home: Path) -> None:
    """The table's checks can fail: a command that succeeds changes the snapshot (a row and a blob), and
    its output is not taken for a one-line error."""
    before = snapshot(home)
    result = CliRunner().invoke(app, ["mix", "a", "b", "--name", "ab"])
    assert result.exit_code == 0, result.output
    rows, blobs = snapshot(home)
    assert len(rows["experts"]) == len(before[0]["experts"]) + 1
    assert len(blobs) == len(before[1]) + 1 and set(before[1]) < set(blobs)
    with pytest.raises(AssertionError):
        check_one_error(result, 0)


# --------------------------------------------------------------------------- Ctrl-C at several stages


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def _orphans(home: Path) -> set[str]:
    from registry import Registry

    with Registry.open(home) as registry:
        report = registry.verify()
    assert report.ok, report
    return set(report.orphans)


CTRL_C = [
    # (id, what to patch, argv)
    ("decompose: between SVD chunks", ("t2cli.decompose.engine", "svd_batch"), lambda m, t: ["decompose", m["gemma"]]),
    (
        "mix: while storing the blob",
        ("registry.blobs.BlobStore", "put_file"),
        lambda m, t: ["mix", "a", "b", "-n", "ab"],
    ),
    (
        "mix: inside the registry transaction",
        ("registry.registry.Registry", "add_blob"),
        lambda m, t: ["mix", "a", "b", "-n", "ab"],
    ),
    (
        "ask: during generation",
        ("t2cli.ask.engine", "stream_generate"),
        lambda m, t: ["ask", "1+1=?", M, m["llama"], "--strategy", "expert:a", "--max-new-tokens", "4"],
    ),
    (
        "train: during a rollout",
        ("t2cli.train.loop", "generate"),
        lambda m, t: [
            "train",
            "--task",
            _task(t, *[OK_LINE] * 5),
            "-n",
            "t",
            M,
            m["llama"],
            "--steps",
            "2",
            "--prompts-per-step",
            "2",
            "--samples-per-prompt",
            "2",
            "--valid-size",
            "1",
            "--max-new-tokens",
            "2",
            "--device",
            "cpu",
        ],
    ),
]


@pytest.mark.parametrize("case", CTRL_C, ids=[c[0] for c in CTRL_C])
def test_ctrl_c_exits_130_and_keeps_nothing_half_written(
    case, home: Path, tiny_model_dirs, tmp_path: Path, monkeypatch
) -> None:
    import importlib

    name, (module_path, attr), make_args = case
    try:
        target = importlib.import_module(module_path)
    except ModuleNotFoundError:  # a class inside a module
        module_name, cls = module_path.rsplit(".", 1)
        target = getattr(importlib.import_module(module_name), cls)
    work = tmp_path / "work"
    work.mkdir()
    models = {arch: str(path) for arch, path in tiny_model_dirs.items()}
    args = make_args(models, work)
    if name.startswith("decompose"):  # let the first chunk through: Ctrl-C lands between chunks
        real, calls = getattr(target, attr), {"n": 0}

        def flaky(*a, **kw):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
            return real(*a, **kw)

        monkeypatch.setattr(target, attr, flaky)
    else:
        monkeypatch.setattr(target, attr, _interrupt)
    before_rows, before_blobs = snapshot(home)
    result = CliRunner().invoke(app, args)
    check_one_error(result, 130)
    monkeypatch.undo()
    monkeypatch.setenv("T2_HOME", str(home))
    rows, blobs = snapshot(home)
    new_blobs = set(blobs) - set(before_blobs)
    leftovers = [p for d in (home / "tmp", home / "blobs" / "tmp") if d.is_dir() for p in d.iterdir()]
    assert leftovers == []
    if name.startswith("decompose"):
        # finished chunks are kept (that is what lets the rerun resume); every row has its blob
        assert len(rows["decomposition_matrices"]) > len(before_rows["decomposition_matrices"])
        assert _orphans(home) == set()
    elif name.startswith("train"):
        # the run is kept as `interrupted` (for --resume); no expert was registered
        assert rows["experts"] == before_rows["experts"]
        assert [r for r in rows["training_runs"] if "'interrupted'" in r]
        assert _orphans(home) == set()
    else:
        assert rows == before_rows
        assert new_blobs <= _orphans(home)  # at most a stored blob no row uses: gc removes it
