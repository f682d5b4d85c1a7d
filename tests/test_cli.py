"""The CLI as a user meets it: help, versions, happy paths and one clear line for every bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from t2cli import __version__
from t2cli.cli.app import app

runner = CliRunner()


def t2(*args: str):
    return runner.invoke(app, list(args))


def _single_error_line(result) -> str:
    """The error text; asserts it is one 'error:' line (plus an optional hint) and no traceback."""
    text = result.stderr if result.stderr else result.output
    assert "Traceback" not in text, text
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: "), text
    assert len(lines) <= 2 and all(line.startswith(("error: ", "hint: ")) for line in lines), text
    return text


def test_version_and_help() -> None:
    assert t2("--version").output.strip() == f"t2 {__version__}"
    result = t2("--help")
    assert result.exit_code == 0
    for command in ("decompose", "models", "experts", "db"):
        assert command in result.output


def test_a_reader_that_closes_the_pipe_is_not_reported_as_a_bug(monkeypatch) -> None:
    """`t2 ... | head` closes stdout mid-command: exit 1 quietly, as Click does, with no "bug" line."""
    import registry

    def hang_up(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(registry.Registry, "open", hang_up)
    result = t2("db", "status")
    assert result.exit_code == 1
    assert "bug" not in result.output and "error" not in result.output


def walk_commands():
    """Every command and sub-command of `t2`, as argument lists, found by walking the click tree."""
    found = []

    def walk(command, path):
        subcommands = getattr(command, "commands", None)
        if subcommands is None:
            found.append(path)
            return
        if path:
            found.append(path)
        for name, sub in subcommands.items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


COMMANDS = walk_commands()


def test_the_walk_finds_every_group_and_leaf() -> None:
    names = {" ".join(c) for c in COMMANDS}
    assert {"train", "tasks", "experts tag", "runs rm", "db gc", "models show", "pull"} <= names
    assert len(names) == 38  # 13 commands + 6 groups + their 19 commands


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_every_command_has_help_with_an_example(command: list[str]) -> None:
    result = t2(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


def test_decompose_then_list_status_verify(tiny_llama: Path, t2_home: Path) -> None:
    result = t2("decompose", str(tiny_llama), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "21 matrices (21 computed, 0 reused)" in result.output
    assert "max relative reconstruction error" in result.output

    again = t2("decompose", str(tiny_llama))
    assert again.exit_code == 0 and "Already decomposed" in again.output

    listing = json.loads(t2("models", "list", "--json").stdout)
    assert {a["alias"] for a in listing["aliases"]} >= {
        "smollm2-135m",
        "llama3-8b",
        "mistral-7b",
        "qwen2.5-7b",
        "llama3-70b",
    }
    (model,) = listing["registered"]
    assert model["architecture"] == "LlamaForCausalLM" and model["decompositions"][0]["status"] == "complete"

    status = t2("db", "status")
    assert status.exit_code == 0 and "decomposition_matrices" in status.output
    verify = t2("db", "verify")
    assert verify.exit_code == 0 and "0 missing, 0 corrupt" in verify.output
    assert t2("db", "path").output.strip() == str(t2_home)


def test_decompose_json_output(tiny_llama: Path) -> None:
    result = t2("decompose", str(tiny_llama), "--targets", "mlp", "--json")
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary["num_matrices"] == 9 and summary["targets_spec"] == "mlp" and summary["max_rel_error"] < 1e-5


def test_verify_reports_a_corrupted_blob(tiny_llama: Path, t2_home: Path) -> None:
    assert t2("decompose", str(tiny_llama), "--targets", "attn").exit_code == 0
    blob = next(p for p in (t2_home / "blobs").rglob("*") if p.is_file())
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    result = t2("db", "verify")
    assert result.exit_code == 1 and "1 corrupt" in result.output and blob.name in result.output


def test_experts_list_is_empty_and_show_unknown_is_clear() -> None:
    result = t2("experts", "list")
    assert result.exit_code == 0 and "No experts registered" in result.output
    result = t2("experts", "show", "math-v1")
    assert result.exit_code == 1
    assert "no expert named 'math-v1'" in _single_error_line(result)


def test_models_show_lists_targets(tiny_model_dirs: dict[str, Path]) -> None:
    result = t2("models", "show", str(tiny_model_dirs["qwen2"]), "--targets", "attn")
    assert result.exit_code == 0 and "model_type=qwen2" in result.output and "12 matrices" in result.output


def _truncated_copy(folder: Path, tmp_path: Path) -> Path:
    copy = shutil.copytree(folder, tmp_path / "truncated")
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return copy


def _unsupported_arch(tmp_path: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=32)).save_pretrained(folder)
    return folder


BAD_INPUTS = [
    ("unknown alias", lambda d, t: ["decompose", "llama9-1t"], "unknown model 'llama9-1t'"),
    ("missing path", lambda d, t: ["decompose", "./does/not/exist"], "does not exist"),
    ("missing gguf", lambda d, t: ["decompose", str(t / "absent.gguf")], "does not exist"),
    ("garbage gguf", lambda d, t: ["decompose", str(_write(t / "bad.gguf", b"nope" * 64))], "GGUF"),
    ("truncated safetensors", lambda d, t: ["decompose", str(_truncated_copy(d["llama"], t))], "truncated or corrupt"),
    (
        "no matching targets",
        lambda d, t: ["decompose", str(d["llama"]), "--targets", "lm_head"],
        "matches no matrix",
        2,
    ),
    (
        "invalid regex",
        lambda d, t: ["decompose", str(d["llama"]), "--targets", "layers.("],
        "not a valid regular expression",
        2,
    ),
    (
        "bad dtype",
        lambda d, t: ["decompose", str(d["llama"]), "--svd-dtype", "float16"],
        "--svd-dtype 'float16' is not supported",
        2,
    ),
    ("bad device", lambda d, t: ["decompose", str(d["llama"]), "--device", "tpu"], "unknown device 'tpu'", 2),
    ("cuda absent", lambda d, t: ["decompose", str(d["llama"]), "--device", "cuda"], "no CUDA device", 2),
    ("unsupported architecture", lambda d, t: ["decompose", str(_unsupported_arch(t))], "'gpt2' is not supported"),
    ("offline hub id", lambda d, t: ["decompose", "acme/not-cached"], "cannot be reached (offline)"),
]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gives_one_clear_line_and_its_exit_code(
    case, tiny_model_dirs, tmp_path: Path, hf_cache: Path
) -> None:
    _, make_args, expected, *code = case
    result = t2(*make_args(tiny_model_dirs, tmp_path))
    assert result.exit_code == (code[0] if code else 1), result.output  # 2: a value the user can fix
    assert expected in _single_error_line(result)


def test_unwritable_home_is_a_clear_error(tiny_llama: Path, tmp_path: Path, monkeypatch) -> None:
    # Tests run as root, which ignores permission bits: a home *under a regular file* cannot be
    # created by anyone, which is the same failure a read-only home gives.
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("T2_HOME", str(blocker / "home"))
    result = t2("decompose", str(tiny_llama))
    assert result.exit_code == 1
    assert str(blocker / "home") in _single_error_line(result)


def test_ctrl_c_mid_decompose_then_resume(tiny_llama: Path, monkeypatch) -> None:
    import t2cli.decompose.engine as engine  # the engine calls svd_batch through its own binding

    real = engine.svd_batch
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "svd_batch", flaky)
    result = t2("decompose", str(tiny_llama))
    assert result.exit_code == 130
    text = _single_error_line(result)
    assert "interrupted after" in text and "run the same command again" in text
    monkeypatch.setattr(engine, "svd_batch", real)
    resumed = t2("decompose", str(tiny_llama), "--json")
    summary = json.loads(resumed.stdout)
    assert resumed.exit_code == 0 and 0 < summary["computed"] < summary["num_matrices"]


def test_debug_env_shows_the_traceback(monkeypatch) -> None:
    monkeypatch.setenv("T2_DEBUG", "1")
    result = t2("decompose", "llama9-1t")
    assert result.exit_code != 0
    assert result.exception is not None and type(result.exception).__name__ == "ModelNotFound"
