"""The code sandbox: ordinary programs run; loops, fork bombs, huge allocations, escapes and sockets are contained.

Each containment test runs twice where the machine has the kernel layers: with
the audit hook (the normal set-up) and without it, so the kernel layers are
shown to hold on their own.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from t2cli.tasks.sandbox import run_python

KERNEL_LAYERS = run_python("pass").protections


def _modes(*layers: str) -> list:
    """[hook on, hook off]; hook off is skipped where the machine lacks one of ``layers``."""
    missing = [layer for layer in layers if not any(p.startswith(layer) for p in KERNEL_LAYERS)]
    kernel_only = pytest.param(False, id="kernel-only")
    if missing:
        kernel_only = pytest.param(False, id="kernel-only", marks=pytest.mark.skip(f"no {', '.join(missing)} here"))
    return [pytest.param(True, id="with-hook"), kernel_only]


def _sandbox_processes() -> set[int]:
    """PIDs of sandbox children still alive (their command line names this module in child mode)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"sandbox.py\0--child" in cmdline:
                found.add(int(entry))
    return found


def test_passing_program_is_ok() -> None:
    result = run_python("assert sum([1, 2, 3]) == 6\nprint('fine')")
    assert result.ok and result.returncode == 0 and not result.timed_out
    assert result.stdout.strip() == "fine"
    assert result.reason == "passed"
    assert "audit-hook" in result.protections


def test_failing_assert_is_not_ok() -> None:
    result = run_python("def f(x):\n    return x + 1\n\nassert f(1) == 3, 'f(1) is wrong'")
    assert not result.ok and result.returncode == 1
    assert "AssertionError: f(1) is wrong" in result.reason
    assert "Traceback" in result.stderr


def test_syntax_error_is_not_ok() -> None:
    result = run_python("def broken(:\n    pass")
    assert not result.ok and result.reason.startswith("exit status 1: SyntaxError")
    assert result.protections  # the sandbox itself started fine


def test_exit_status_is_reported() -> None:
    result = run_python("import sys\nsys.exit(3)")
    assert not result.ok and result.returncode == 3


def test_standard_library_and_threads_work() -> None:
    program = (
        "import collections, datetime, decimal, fractions, functools, heapq, itertools, json, math, re, statistics\n"
        "import threading\n"
        "out = []\n"
        "t = threading.Thread(target=out.append, args=(42,))\n"
        "t.start(); t.join()\n"
        "assert out == [42]\n"
        "assert statistics.mean([1, 2, 3]) == 2\n"
    )
    result = run_python(program)
    assert result.ok, result.stderr


def test_infinite_loop_is_killed_by_the_timeout() -> None:
    result = run_python("while True:\n    pass", timeout_s=1.0)
    assert result.timed_out and not result.ok and result.returncode is None
    assert result.reason == "timed out after 1 s"
    assert result.elapsed_s < 2.5
    assert not _sandbox_processes()


def test_the_cpu_time_limit_counts_as_the_time_out() -> None:
    """On a loaded machine the CPU limit can end a loop before the wall clock is checked: still a time-out."""
    program = "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (1, 2))\nwhile True:\n    pass\n"
    result = run_python(program, timeout_s=3.0)  # the lowered CPU limit (1 s) ends it first
    assert not result.ok and result.timed_out and result.returncode is None, result


@pytest.mark.parametrize("hook", _modes("seccomp"))
def test_fork_bomb_is_contained(hook: bool) -> None:
    before = _sandbox_processes()
    program = "import os\nwhile True:\n    os.fork()\n"
    result = run_python(program, timeout_s=2.0, audit_hook=hook)
    assert not result.ok and not result.timed_out
    assert "PermissionError" in result.reason
    assert _sandbox_processes() <= before  # nothing left behind
    assert run_python("print('still fine')").stdout.strip() == "still fine"


@pytest.mark.parametrize("hook", _modes("seccomp"))
def test_shell_fork_bomb_cannot_start(hook: bool) -> None:
    program = "import subprocess\nsubprocess.Popen(['/bin/sh', '-c', ':(){ :|:& };:']).wait()\n"
    result = run_python(program, timeout_s=2.0, audit_hook=hook)
    assert not result.ok and not result.timed_out
    assert "PermissionError" in result.reason
    assert not _sandbox_processes()


@pytest.mark.parametrize("hook", _modes())
def test_allocating_10_gb_fails_fast(hook: bool) -> None:
    result = run_python("block = bytearray(10 * 1024**3)\nprint('allocated')", memory_mb=512, audit_hook=hook)
    assert not result.ok and "MemoryError" in result.reason
    assert "allocated" not in result.stdout
    assert result.elapsed_s < 3


@pytest.mark.parametrize("hook", _modes("landlock"))
def test_write_outside_the_directory_is_refused(tmp_path: Path, hook: bool) -> None:
    target = tmp_path / "escaped.txt"
    program = f"with open({str(target)!r}, 'w') as f:\n    f.write('escaped')\n"
    result = run_python(program, audit_hook=hook)
    assert not result.ok and "PermissionError" in result.reason
    assert not target.exists()


def test_writing_inside_the_directory_is_allowed_and_cleaned_up() -> None:
    program = (
        "import os, tempfile\n"
        "with open('scratch.txt', 'w') as f:\n    f.write('ok')\n"
        "with tempfile.NamedTemporaryFile(delete=False) as f:\n    f.write(b'x')\n"
        "print(os.getcwd())\n"
    )
    result = run_python(program)
    assert result.ok, result.stderr
    assert not os.path.exists(result.stdout.strip())  # the directory is removed afterwards


def test_big_output_hits_the_file_size_limit() -> None:
    result = run_python("import sys\nsys.stdout.write('x' * (3 * 1024 * 1024))", max_file_mb=1)
    assert not result.ok
    assert len(result.stdout) < 70 * 1024  # cut, not 3 MB in memory


@pytest.mark.parametrize("hook", _modes("landlock"))
def test_home_and_secrets_are_out_of_reach(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hook: bool) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    key = home / ".ssh" / "id_rsa"
    key.write_text("PRIVATE KEY")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("T2_TEST_SECRET", "hunter2")
    program = (
        "import os\n"
        "assert os.path.expanduser('~') == os.getcwd(), 'HOME is not the sandbox directory'\n"
        "assert 'T2_TEST_SECRET' not in os.environ\n"
        "leaks = []\n"
        f"for path in [{str(key)!r}, '/proc/{os.getpid()}/environ', os.path.expanduser('~/.ssh/id_rsa')]:\n"
        "    try:\n"
        "        leaks.append(open(path, 'rb').read())\n"
        "    except OSError:\n"
        "        pass\n"
        "print(leaks)\n"
    )
    result = run_python(program, audit_hook=hook)
    assert result.ok, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("hook", _modes("network-namespace"))
def test_socket_to_localhost_is_refused(hook: bool) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.2)
        port = server.getsockname()[1]
        program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hi')\n"
        result = run_python(program, timeout_s=3.0, audit_hook=hook)
        assert not result.ok and not result.timed_out
        with pytest.raises(socket.timeout):
            server.accept()  # nobody ever connected


def test_ctypes_and_kill_are_refused_by_the_hook() -> None:
    result = run_python("import ctypes\nctypes.CDLL(None).getpid()")
    assert not result.ok and "ctypes" in result.reason
    result = run_python("import os, signal\nos.kill(1, signal.SIGTERM)")
    assert not result.ok and "os.kill" in result.reason


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        run_python("pass", timeout_s=0)
