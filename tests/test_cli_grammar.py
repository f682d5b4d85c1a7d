"""One CLI grammar: the same options everywhere, one-line errors with exit codes, --json shapes, completion."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from t2cli.cli.app import app
from t2cli.cli.options import complete_experts, complete_models, complete_tasks
from tests.test_cli import COMMANDS

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def adaptable(tiny_llama: Path):
    from t2cli.home import open_registry
    from t2cli.svf.adaptable import load_adaptable

    with open_registry() as registry:
        return load_adaptable(registry, str(tiny_llama), device="cpu")


@pytest.fixture()
def add_v1(adaptable) -> str:
    """A registered expert named add-v1 (random z on the tiny model)."""
    from t2cli.home import open_registry
    from tests.expert_factory import make_expert

    with open_registry() as registry:
        make_expert(registry, adaptable, "add-v1")
    return "add-v1"


def t2(*args: str, **kwargs):
    return runner.invoke(app, list(args), **kwargs)


def one_error(result) -> tuple[str, str]:
    """The ``error:`` line and the ``hint:`` line; asserts there is nothing else (no usage panel, no traceback)."""
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2 and lines[0].startswith("error: "), result.stderr
    assert len(lines) == 1 or lines[1].startswith("hint: "), result.stderr
    return lines[0], lines[1] if len(lines) == 2 else ""


# --------------------------------------------------------------------------- one grammar


def _options(command: list[str]) -> dict[str, object]:
    node = typer.main.get_command(app)
    for name in command:
        node = node.commands[name]
    return {opt: p for p in node.params for opt in p.opts}


@pytest.mark.parametrize("command", [c for c in COMMANDS if "--device" in _options(c)], ids=str)
def test_device_defaults_to_auto_everywhere(command: list[str]) -> None:
    assert _options(command)["--device"].default == "auto"


def test_the_base_model_is_dash_m_and_batch_size_is_one_option() -> None:
    takes_model = [c for c in COMMANDS if "--model" in _options(c)]
    assert {"train", "eval", "ask", "adapt", "export", "import", "pull"} <= {" ".join(c) for c in takes_model}
    for command in takes_model:
        assert "-m" in _options(command)["--model"].opts, command
    helps = {_options(c)["--batch-size"].help for c in COMMANDS if "--batch-size" in _options(c)}
    assert len(helps) == 1 and {c[0] for c in COMMANDS if "--batch-size" in _options(c)} >= {"train", "eval", "adapt"}


def test_dtype_means_one_thing_and_the_old_decompose_spelling_warns(tiny_llama: Path) -> None:
    assert "--svd-dtype" in _options(["decompose"]) and _options(["decompose"])["--dtype"].hidden
    assert "--dtype" not in t2("decompose", "--help").output.replace("--svd-dtype", "")
    result = t2("decompose", str(tiny_llama), "--targets", "attn", "--dtype", "float64", "--json")
    assert result.exit_code == 0, result.output
    assert "--dtype is deprecated, use --svd-dtype" in result.stderr
    assert json.loads(result.stdout)["dtype"] == "float64"


def test_train_gen_batch_is_a_deprecated_alias_of_batch_size(monkeypatch) -> None:
    import t2cli.train.loop as loop

    seen = {}

    def stop(self):
        seen["gen_batch"] = self.gen_batch
        raise KeyboardInterrupt

    monkeypatch.setattr(loop.TrainConfig, "__post_init__", stop)
    result = t2("train", "--task", "addition", "--gen-batch", "7")
    assert seen == {"gen_batch": 7} and "--gen-batch is deprecated, use --batch-size" in result.stderr


# --------------------------------------------------------------------------- errors and exit codes

PARSE_ERRORS = [
    (["train", "--task", "addition", "--stepz", "3"], "no such option: --stepz", "train --help"),
    (["runs", "show"], "missing argument", "runs show --help"),
    (["train"], "missing option '--task'", "train --help"),
    (["train", "--task", "addition", "--steps", "many"], "invalid value for '--steps'", "train --help"),
    (["eval", "--task", "addition", "--batch-size", "0"], "invalid value for '--batch-size'", "eval --help"),
    (["eval", "--task", "addition", "--base", "--limit", "0"], "invalid value for '--limit'", "eval --help"),
    (["train", "--task", "addition", "--max-new-tokens", "0"], "invalid value for '--max-new-tokens'", "train --help"),
]


@pytest.mark.parametrize("args, message, hint", PARSE_ERRORS, ids=[" ".join(a) for a, _, _ in PARSE_ERRORS])
def test_parse_errors_are_one_line_and_exit_2(args: list[str], message: str, hint: str) -> None:
    result = t2(*args)
    assert result.exit_code == 2, result.output
    error, hint_line = one_error(result)
    assert message in error.lower() and hint in hint_line
    assert "╭" not in result.output and "Usage:" not in result.output


@pytest.mark.parametrize(
    "args, suggestion",
    [
        (["trian"], "did you mean 'train'?"),
        (["experts", "lst"], "did you mean 'list'?"),
        (["train", "--task", "addtion"], "did you mean 'addition'?"),
    ],
)
def test_a_mistyped_command_or_task_says_did_you_mean(args: list[str], suggestion: str) -> None:
    result = t2(*args)
    assert result.exit_code == 2, result.output
    assert one_error(result)[1].startswith(f"hint: {suggestion}")


def test_a_mistyped_expert_name_says_did_you_mean(add_v1: str) -> None:
    result = t2("experts", "show", "add-v2")
    assert result.exit_code == 1  # a name that is not registered is a lookup miss, not a usage error
    assert one_error(result)[1] == "hint: did you mean 'add-v1'?"


VALUE_ERRORS = [
    (["train", "--task", "addition", "--steps", "0"], "--steps must be at least 1"),
    (["train", "--task", "addition", "--advantage", "best"], "unknown --advantage 'best'"),
    (["train", "--task", "addition", "--device", "tpu"], "unknown device 'tpu'"),
    (["eval", "--task", "addition", "--base", "--split", "dev"], "unknown split 'dev'"),
    (["ask", "hi", "--strategy", "magic"], "unknown strategy 'magic'"),
    (["decompose", "--svd-dtype", "float16"], "--svd-dtype 'float16' is not supported"),
    (["decompose", "--method", "qr"], "unknown SVD method 'qr'"),
]


@pytest.mark.parametrize("args, message", VALUE_ERRORS, ids=[" ".join(a) for a, _ in VALUE_ERRORS])
def test_values_checked_after_parsing_are_usage_errors(args: list[str], message: str, monkeypatch) -> None:
    import t2cli.svf.adaptable

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the value was checked")

    monkeypatch.setattr(t2cli.svf.adaptable, "load_adaptable", no_model)
    result = t2(*args)
    assert result.exit_code == 2, result.output
    assert message in one_error(result)[0]


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--task", "addition", "--name", "add v1"],
        ["mix", "a", "b", "--name", "a/b"],
        ["adapt", "--task", "addition", "--name", ".hidden"],
        ["transfer", "a", "--to", "x", "--name", "add v1"],
        ["import", ".", "--name", "add v1"],
        ["pull", "alice/x", "--name", "add v1"],
    ],
    ids=lambda a: a[0],
)
def test_every_expert_name_follows_one_rule_before_any_work(args: list[str], monkeypatch) -> None:
    import t2cli.home

    def no_registry(*a, **k):
        raise AssertionError("work started before the name was checked")

    monkeypatch.setattr(t2cli.home, "open_registry", no_registry)
    result = t2(*args)
    assert result.exit_code == 2, result.output
    error, hint = one_error(result)
    assert "invalid expert name" in error and "letters, digits" in hint


def test_the_engine_refuses_a_bad_name_too(adaptable) -> None:
    from t2cli.errors import UsageError
    from t2cli.home import open_registry
    from tests.expert_factory import make_expert

    with open_registry() as registry, pytest.raises(UsageError, match="invalid expert name 'add v1'"):
        make_expert(registry, adaptable, "add v1")


# --------------------------------------------------------------------------- --json shapes


def _json(*args: str) -> dict:
    result = t2(*args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout  # one object, one line
    return json.loads(lines[0])


def test_json_shapes_of_listings_and_results(tiny_llama: Path, adaptable) -> None:
    from t2cli.home import open_registry
    from tests.expert_factory import make_expert

    assert set(_json("experts", "list", "--json")) == {"experts"}
    assert set(_json("runs", "list", "--json")) == {"runs"}
    assert set(_json("db", "path", "--json")) == {"home"}
    assert {"revision", "rows", "blob_count"} <= set(_json("db", "status", "--json"))
    assert {"checked", "missing", "corrupt"} <= set(_json("db", "verify", "--json"))
    assert set(_json("db", "gc", "--json", "--dry-run")) == {"dry_run", "blobs", "run_folders"}
    assert set(_json("models", "list", "--json")) == {"aliases", "registered"}
    shown = _json("models", "show", str(tiny_llama), "--json", "--targets", "attn")
    assert {"name", "fingerprint", "matrices", "roles"} <= set(shown) and len(shown["matrices"]) == 12
    tasks = _json("tasks", "--json")["tasks"]
    addition = next(t for t in tasks if t["name"] == "addition")
    assert set(addition) >= {"name", "aliases", "answer_kind", "splits", "max_new_tokens", "source"}
    assert addition["answer_kind"] == "number" and set(addition["splits"]) == {"train", "valid", "test"}
    assert "dispatch" not in {t["name"] for t in tasks}

    with open_registry() as registry:
        make_expert(registry, adaptable, "add-v1")
    listing = _json("experts", "list", "--json")["experts"]
    assert [e["name"] for e in listing] == ["add-v1"]
    assert {"name", "kind", "base_model", "tags"} <= set(_json("experts", "show", "add-v1", "--json"))
    assert _json("experts", "tag", "add-v1", "reviewed", "--json")["tags"] == ["reviewed"]
    assert _json("experts", "rm", "add-v1", "--yes", "--json") == {"removed": "add-v1"}


def test_completion_is_on_and_cheap(add_v1: str) -> None:
    assert "--install-completion" in t2("--help").output and "--show-completion" in t2("--help").output
    assert complete_experts("add") == ["add-v1"] and complete_experts("zz") == []
    assert "addition" in complete_tasks("add") and complete_tasks("ari") == ["arithmetic"]
    assert "smollm2-135m" in complete_models("smol")
    probe = "import sys, t2cli.cli.app as a; a.app; print('torch' in sys.modules, 'transformers' in sys.modules)"
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert imported.stdout.split() == ["False", "False"]


def test_shell_completion_of_expert_names(add_v1: str, monkeypatch) -> None:
    monkeypatch.setenv("_T2_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "t2 experts show ad")
    monkeypatch.setenv("COMP_CWORD", "3")
    result = runner.invoke(app, [], prog_name="t2")
    assert "add-v1" in result.output.split()


# --------------------------------------------------------------------------- progress bars


def test_progress_bars_are_off_when_stderr_is_not_a_terminal(monkeypatch) -> None:
    from t2cli.cli import console

    monkeypatch.setattr(type(console.err), "is_terminal", property(lambda self: False))
    assert console.progress_bar().disable
    monkeypatch.setattr(type(console.err), "is_terminal", property(lambda self: True))
    assert not console.progress_bar().disable and console.progress_bar(quiet=True).disable


def test_only_the_console_helper_builds_progress_bars() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "t2cli").rglob("*.py")
        if re.search(r"(?<![A-Za-z])Progress\(", path.read_text()) and path != ROOT / "t2cli" / "cli" / "console.py"
    ]
    assert offenders == []
