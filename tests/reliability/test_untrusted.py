"""Untrusted content: model-written code, imported expert folders, remote model code, tokens.

1. Sandbox escapes (t2cli.tasks.sandbox.run_python, as the python_tests scorer runs it): infinite loop,
   fork bomb, 10 GB allocation, write outside its temp dir, read a secret in the user's home,
   open a socket. Each must be contained (no effect outside, verified from this side) and score
   as a failure (``ok`` False). tests/test_sandbox.py tests each kernel layer on its own.
2. Imported folders: the cases tests/test_sharing.py does not already cover (absolute names,
   pickle bytes in a .safetensors name, float64 / int8 tensors, a FIFO, a link to /etc/passwd,
   an oversized config) are refused before anything is registered.
3. Remote code: every transformers loader gets trust_remote_code=False (there is no opt-in
   flag), and a model folder whose config asks for custom code is refused without running it.
4. Tokens: with HF_TOKEN set to a sentinel, a push that fails (and one that succeeds) never
   prints or logs it, even when the Hub's error message contains it.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from t2cli.cli.app import app
from t2cli.tasks.sandbox import run_python

runner = CliRunner()


def t2(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def one_error(result) -> str:
    text = result.stderr or result.output
    assert "Traceback" not in text, text
    lines = [line for line in text.strip().splitlines() if line.strip()]
    errors = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert len(errors) == 1 and all(line.startswith("hint: ") for line in lines[errors[0] + 1 :]), text
    return text


# --------------------------------------------------------------------------- 1. sandbox escapes

PROTECTIONS = run_python("pass").protections


def _listener() -> tuple[socket.socket, int, list]:
    """A TCP server on localhost that records any connection made to it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(3)
    got: list = []

    def accept() -> None:
        try:
            got.append(server.accept())
        except OSError:
            pass

    threading.Thread(target=accept, daemon=True).start()
    return server, server.getsockname()[1], got


def _sandbox_pids() -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if b"sandbox.py\0--child" in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.add(int(entry))
            except OSError:
                continue
    return found


ESCAPES = ["infinite loop", "fork bomb", "10 GB allocation", "write outside", "read the home", "socket"]


@pytest.mark.parametrize("escape", ESCAPES)
def test_sandbox_contains_the_escape_and_scores_it_a_failure(escape: str, tmp_path: Path, monkeypatch) -> None:
    outside = tmp_path / "outside.txt"
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    secret = "SECRET-KEY-7f3a"
    (home / ".ssh" / "id_ed25519").write_text(secret)
    monkeypatch.setenv("HOME", str(home))
    server = None
    programs = {
        "infinite loop": "while True:\n    pass\n",
        "fork bomb": "import os\nwhile True:\n    os.fork()\n",
        "10 GB allocation": "x = bytearray(10 * 1024 ** 3)\nprint('ESCAPED')\n",
        "write outside": f"open({str(outside)!r}, 'w').write('ESCAPED')\n",
        # both ways in are tried; the program "passes" only if one of them yields the secret
        "read the home": "import os\ndata = ''\n"
        f"for path in ({str(home / '.ssh' / 'id_ed25519')!r}, os.path.expanduser('~/.ssh/id_ed25519')):\n"
        "    try:\n        data += open(path).read()\n    except OSError as exc:\n"
        "        print('refused:', type(exc).__name__)\n"
        "print(data)\nassert data\n",
    }
    if escape == "socket":
        server, port, got = _listener()
        programs["socket"] = (
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('ESCAPED')\n"
        )
    before = _sandbox_pids()
    result = run_python(programs[escape], timeout_s=2.0, memory_mb=512)
    assert not result.ok, result  # scored as a failure
    assert "ESCAPED" not in result.stdout and secret not in result.stdout + result.stderr
    if escape == "infinite loop":
        assert result.timed_out
    if escape == "10 GB allocation":
        assert result.elapsed_s < 2.0 and not result.timed_out  # refused at once, not swapped in
    if escape == "write outside":
        assert not outside.exists()
    if escape == "fork bomb":
        assert _sandbox_pids() <= before  # nothing left running
    if escape == "socket":
        server.close()
        assert got == []  # nothing reached our listener
    print(
        f"[reliability] sandbox '{escape}' contained ({result.reason}; layers: {', '.join(PROTECTIONS) or 'audit hook only'})"
    )


# --------------------------------------------------------------------------- 2. imported folders


@pytest.fixture()
def exported(tiny_llama: Path, tmp_path: Path) -> Path:
    from t2cli.home import open_registry
    from t2cli.svf.adaptable import load_adaptable
    from tests.expert_factory import make_expert

    with open_registry() as registry:
        make_expert(registry, load_adaptable(registry, str(tiny_llama), device="cpu"), "sums-v1")
    folder = tmp_path / "exported"
    assert t2("export", "sums-v1", folder).exit_code == 0
    return folder


def _config_edit(**changes):
    def mutate(folder: Path) -> None:
        path = folder / "expert_config.json"
        config = json.loads(path.read_text())
        config.update(changes)
        path.write_text(json.dumps(config))

    return mutate


def _retype(dtype: str):
    """Rewrite expert.safetensors with every tensor stored as ``dtype`` (F64, I8...)."""

    def mutate(folder: Path) -> None:
        import torch
        from safetensors.torch import load_file, save_file

        path = folder / "expert.safetensors"
        z = load_file(str(path))
        torch_dtype = {"F64": torch.float64, "I8": torch.int8}[dtype]
        save_file(
            {k: v.to(torch_dtype) for k, v in z.items()},
            str(path),
            metadata={"format": "t2-expert/1", "name": "sums-v1"},
        )

    return mutate


def _pickle_as_safetensors(folder: Path) -> None:
    import pickle

    payload = pickle.dumps({"z": [1.0] * 32})  # a pickle under the right name
    (folder / "expert.safetensors").write_bytes(payload)


def _fifo(folder: Path) -> None:
    (folder / "README.md").unlink()
    os.mkfifo(folder / "README.md")


def _link_to_passwd(folder: Path) -> None:
    (folder / "README.md").unlink()
    (folder / "README.md").symlink_to("/etc/passwd")


def _absolute_link(folder: Path) -> None:
    target = folder.parent / "weights-elsewhere.safetensors"
    (folder / "expert.safetensors").rename(target)
    (folder / "expert.safetensors").symlink_to(target.absolute())


def _huge_config(folder: Path) -> None:
    path = folder / "expert_config.json"
    config = json.loads(path.read_text())
    config["description"] = "x" * (2 << 20)
    path.write_text(json.dumps(config))


def _header_claims_huge_tensor(folder: Path) -> None:
    """A header that declares one enormous tensor (offsets past the file's end)."""
    header = json.dumps(
        {"model.layers.0.mlp.down_proj": {"dtype": "F32", "shape": [1 << 30], "data_offsets": [0, 4 << 30]}}
    ).encode()
    (folder / "expert.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 64)


IMPORT_CASES = [
    ("absolute name", _config_edit(name="/etc/cron.d/evil"), "invalid expert name"),
    ("dot name", _config_edit(name=".hidden"), "invalid expert name"),
    ("pickle named .safetensors", _pickle_as_safetensors, "expert.safetensors"),
    ("float64 tensors", _retype("F64"), "F64"),
    ("int8 tensors", _retype("I8"), "I8"),
    ("FIFO instead of a file", _fifo, "not a regular file"),
    ("link to /etc/passwd", _link_to_passwd, "symlink"),
    ("absolute link out of the folder", _absolute_link, "symlink"),
    ("oversized config", _huge_config, "limit"),
    ("header declares a 4 GB tensor", _header_claims_huge_tensor, "expert.safetensors"),
]


@pytest.mark.parametrize("case", IMPORT_CASES, ids=[c[0] for c in IMPORT_CASES])
def test_import_refuses_before_registering_anything(case, exported: Path, t2_home: Path) -> None:
    from t2cli.home import open_registry

    _, mutate, expected = case
    with open_registry() as registry:
        before = registry.status()
    mutate(exported)
    result = t2("import", exported, "--name", "incoming")
    assert result.exit_code == 1, result.output
    assert expected in one_error(result)
    with open_registry() as registry:
        after = registry.status()
    assert after.rows == before.rows and after.blob_count == before.blob_count


# --------------------------------------------------------------------------- 3. remote code


def test_every_transformers_loader_gets_trust_remote_code_false(tiny_llama: Path, monkeypatch) -> None:
    import transformers

    from t2cli.models import identity, load, resolve

    seen: list[tuple[str, object]] = []
    for cls_name in ("AutoConfig", "AutoModelForCausalLM", "AutoTokenizer"):
        cls = getattr(transformers, cls_name)
        real = cls.from_pretrained

        def spy(*args, _real=real, _name=cls_name, **kwargs):
            seen.append((_name, kwargs.get("trust_remote_code", "absent")))
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    ref = resolve.resolve_model(str(tiny_llama))
    identity.read_config(ref)
    load.load_model(ref)
    load.load_tokenizer(ref)
    assert {name for name, _ in seen} == {"AutoConfig", "AutoModelForCausalLM", "AutoTokenizer"}
    assert all(value is False for _, value in seen), seen


def test_a_model_asking_for_custom_code_is_refused_without_running_it(tmp_path: Path) -> None:
    folder = tmp_path / "evil-model"
    folder.mkdir()
    marker = tmp_path / "remote-code-ran"
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "evil",
                "architectures": ["EvilForCausalLM"],
                "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilForCausalLM"},
            }
        )
    )
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    result = t2("decompose", folder)
    assert result.exit_code == 1
    one_error(result)
    assert not marker.exists()


# --------------------------------------------------------------------------- 4. tokens

SENTINEL = "hf_SENTINELtokenDoNotPrint0123456789"


def _http_error(status: int, message: str):
    from huggingface_hub.errors import HfHubHTTPError

    return HfHubHTTPError(message, response=SimpleNamespace(status_code=status, headers={}, request=None))


@pytest.mark.parametrize("failure", [None, 401, 500, "connection"])
def test_the_token_is_never_printed_or_logged(failure, tiny_llama: Path, t2_home: Path, monkeypatch, capfd) -> None:
    from huggingface_hub import HfApi, constants
    from huggingface_hub.hf_api import CommitInfo

    from t2cli.home import open_registry
    from t2cli.svf.adaptable import load_adaptable
    from tests.expert_factory import make_expert

    with open_registry() as registry:
        make_expert(registry, load_adaptable(registry, str(tiny_llama), device="cpu"), "sums-v1")
    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    tokens_seen = []

    def create_repo(api, *args, **kwargs):
        tokens_seen.append(api.token)

    def create_commit(api, repo_id, operations, **kwargs):
        if failure == "connection":
            raise ConnectionError(f"connection refused (Authorization: Bearer {SENTINEL})")
        if failure is not None:  # an error whose text carries the token, as a careless proxy might
            raise _http_error(failure, f"{failure} Server Error for token {SENTINEL}")
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{'ab' * 20}",
            commit_message="m",
            commit_description="",
            oid="ab" * 20,
        )

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    result = t2("push", "sums-v1", "alice/sums-svf")
    assert tokens_seen == [SENTINEL]  # the token was really used ...
    assert result.exit_code == (0 if failure is None else 1), result.output
    if failure is not None:
        one_error(result)
    captured = capfd.readouterr()
    for text in (result.output, result.stderr, captured.out, captured.err):  # ... and never shown
        assert SENTINEL not in text
    for path in t2_home.rglob("*"):
        if path.is_file():
            assert SENTINEL.encode() not in path.read_bytes(), path


def test_the_unmodified_folder_imports(exported: Path) -> None:
    """The control for the refusals above: the same folder, untouched, is accepted."""
    result = t2("import", exported, "--name", "incoming")
    assert result.exit_code == 0, result.output
