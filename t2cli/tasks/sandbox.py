"""Run untrusted Python (model-written code) in a separate, locked-down process.

``run_python(program)`` writes the program into a fresh temporary directory and
starts ``python -I -S`` on this very file in "child" mode (``-S``: the program
sees the standard library only, and the interpreter starts faster). The child
locks itself down, in this order, and only then runs the program:

1. namespaces (``unshare``): a new user namespace (drops every capability the
   caller had, root's included), a new network namespace (only a downed
   loopback: nothing can be reached) and a new PID namespace (the program runs
   as its PID 1, so every process it leaves behind dies with it);
2. resource limits: address space, CPU seconds, file size, process count, open
   files, no core dumps;
3. Landlock (Linux >= 5.13): writes only beneath the temporary directory, reads
   only of the Python standard library and the system libraries it loads; TCP
   connect/bind denied (Landlock ABI >= 4); signals and abstract unix sockets
   scoped to the sandbox (ABI >= 6);
4. seccomp: ``fork``, ``vfork``, ``execve`` and process-creating ``clone`` fail
   with EPERM (threads are still allowed);
5. a Python audit hook (Python code cannot remove it) that refuses process
   creation, sockets, ctypes, writes outside the directory, reads outside the
   allowed roots, links and signals.

Each kernel layer is used where the machine allows it and named in
``SandboxResult.protections``. The parent enforces the wall-clock timeout and
kills the child's whole process group. The program never runs in the caller's
process. docs/tasks.md ("Sandbox") says what each layer stops.
"""

from __future__ import annotations

import os
import signal
import sys

# ---------------------------------------------------------------------------
# Child side. Runs as ``python -I -S sandbox.py --child ...``; it must start fast, so it
# imports nothing beyond os/signal/sys at module level and stops before the parent-side imports.
# ---------------------------------------------------------------------------

_PROGRAM_FILE = "solution.py"
_CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
_CLONE_THREAD = 0x00010000
_PR_SET_PDEATHSIG, _PR_SET_SECCOMP, _PR_SET_NO_NEW_PRIVS = 1, 22, 38
# Files (not directories) the program may read: devices and the dynamic loader's cache.
_READ_FILES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/etc/ld.so.cache", "/etc/localtime")


def _child_main(argv: list[str]) -> None:
    """Lock this process down as far as the kernel allows, then run the program in it.

    ``argv``: workdir, memory bytes, CPU seconds, file bytes, max processes,
    audit hook (0/1), status file descriptor.
    """
    import ctypes  # noqa: PLC0415 - sandbox child: starts with os, signal, sys only
    import resource  # noqa: PLC0415 - sandbox child: starts with os, signal, sys only

    workdir = argv[0]
    memory, cpu_s, file_bytes, max_procs, use_hook, status_fd = (int(a) for a in argv[1:7])
    libc = ctypes.CDLL(None, use_errno=True)
    protections: list[str] = []
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    # 1. Namespaces, most isolated first; the first combination the kernel accepts wins.
    for flags, names in (
        (_CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWPID, ("user-namespace", "network-namespace", "pid-namespace")),
        (_CLONE_NEWNET | _CLONE_NEWPID, ("network-namespace", "pid-namespace")),
        (_CLONE_NEWUSER | _CLONE_NEWNET, ("user-namespace", "network-namespace")),
        (_CLONE_NEWNET, ("network-namespace",)),
    ):
        if libc.unshare(flags) == 0:
            protections.extend(names)
            break
    if "pid-namespace" in protections:
        # A new PID namespace applies to children: fork once; the child is PID 1 and the kernel
        # kills everything left in the namespace when it exits. This process only relays its status.
        pid = os.fork()
        if pid:
            os.close(status_fd)
            _relay_exit(pid)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    # 2. Resource limits.
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
    resource.setrlimit(resource.RLIMIT_NPROC, (max_procs, max_procs))
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    protections.append("rlimits")

    read_roots = _read_roots()
    # Landlock and seccomp both need no_new_privs (a setuid binary could otherwise regain rights).
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    abi = _landlock(libc, workdir, read_roots)  # 3.
    if abi:
        protections.append(f"landlock-abi{abi}")
    if _seccomp(libc):  # 4.
        protections.append("seccomp")

    os.chdir(workdir)
    path = os.path.join(workdir, _PROGRAM_FILE)
    with open(path, encoding="utf-8") as f:
        source = f.read()
    if use_hook:
        protections.append("audit-hook")
    os.write(status_fd, ",".join(protections).encode())
    os.close(status_fd)
    if use_hook:
        # 5. Last: from here on ctypes, sockets and process creation are refused.
        _install_audit_hook(workdir, read_roots)
    del libc
    # The program's own errors, a SyntaxError included, are reported like any failing program's.
    code = compile(source, path, "exec")
    exec(code, {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__})


def _relay_exit(pid: int) -> None:
    """Wait for the PID-1 child and leave with its exit status, or die of its signal."""
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def _read_roots() -> tuple[str, ...]:
    """Directories the program may read: the standard library and the system libraries it loads."""
    roots = {os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)}
    for prefix in (sys.base_prefix, sys.base_exec_prefix):
        roots.add(os.path.realpath(os.path.join(prefix, "lib")))
    for system in ("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/share/zoneinfo"):
        if os.path.isdir(system):
            roots.add(os.path.realpath(system))
    return tuple(sorted(roots))


def _landlock(libc, workdir: str, read_roots: tuple[str, ...]) -> int:
    """Apply a Landlock ruleset to this process; return its ABI version, or 0 where Landlock is unavailable."""
    import ctypes  # noqa: PLC0415 - sandbox child: starts with os, signal, sys only

    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    abi = syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 1:
        return 0
    fs_all = (1 << 13) - 1  # EXECUTE .. MAKE_SYM (ABI 1)
    fs_all |= (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0) | (1 << 15 if abi >= 5 else 0)
    read_dir = (1 << 0) | (1 << 2) | (1 << 3)  # EXECUTE, READ_FILE, READ_DIR
    read_file = (1 << 0) | (1 << 2)

    class RulesetAttr(ctypes.Structure):
        _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed", ctypes.c_uint64), ("fd", ctypes.c_int32)]

    # TCP bind/connect handled with no rule allowing any port = all denied. The scopes keep signals
    # and abstract unix sockets inside the sandbox.
    attr = RulesetAttr(fs_all, 0b11 if abi >= 4 else 0, 0b11 if abi >= 6 else 0)
    ruleset = syscall(444, ctypes.byref(attr), 24 if abi >= 6 else 16 if abi >= 4 else 8, 0)
    if ruleset < 0:
        return 0

    def allow(path: str, access: int) -> None:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return
        try:
            syscall(445, ruleset, 1, ctypes.byref(PathBeneath(access, fd)), 0)  # LANDLOCK_RULE_PATH_BENEATH
        finally:
            os.close(fd)

    for root in read_roots:
        allow(root, read_dir)
    for path in _READ_FILES:
        allow(path, read_file)
    allow(workdir, fs_all)
    applied = syscall(446, ruleset, 0) == 0
    os.close(ruleset)
    return abi if applied else 0


_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
# Per architecture: (syscalls refused outright: fork, vfork, execve, execveat), clone, clone3.
_SYSCALLS = {
    "x86_64": ((57, 58, 59, 322), 56, 435),
    "aarch64": ((221, 281), 220, 435),
}


def _seccomp(libc) -> bool:
    """Install a seccomp filter refusing new processes and exec (threads stay allowed); False if impossible."""
    import ctypes  # noqa: PLC0415 - sandbox child: starts with os, signal, sys only

    arch = os.uname().machine
    if arch not in _SYSCALLS:
        return False
    deny, clone, clone3 = _SYSCALLS[arch]
    ld_abs, jeq, jset, jge, ret = 0x20, 0x15, 0x45, 0x35, 0x06
    allow, kill = 0x7FFF0000, 0x80000000
    eperm, enosys = 0x00050000 | 1, 0x00050000 | 38
    n = len(deny)
    # Classic BPF; jump offsets count from the next instruction. Layout:
    #  0 load arch; 1 wrong arch -> kill; 2 load syscall nr; 3 x32 ABI -> EPERM;
    #  4 clone3 -> ENOSYS (libc falls back to clone, whose flags a filter can read);
    #  5..4+n refused syscalls -> EPERM; 5+n clone -> check flags; 6+n allow;
    #  7+n load clone flags; 8+n CLONE_THREAD set -> allow, else EPERM; 9+n allow; 10+n EPERM; 11+n ENOSYS; 12+n kill
    prog = [
        (ld_abs, 0, 0, 4),
        (jeq, 0, 10 + n, _AUDIT_ARCH[arch]),
        (ld_abs, 0, 0, 0),
        (jge, 6 + n, 0, 0x40000000),
        (jeq, 6 + n, 0, clone3),
    ]
    prog += [(jeq, 4 + n - i, 0, nr) for i, nr in enumerate(deny)]
    prog += [
        (jeq, 1, 0, clone),
        (ret, 0, 0, allow),
        (ld_abs, 0, 0, 16),  # seccomp_data.args[0], low 32 bits (little endian)
        (jset, 0, 1, _CLONE_THREAD),
        (ret, 0, 0, allow),
        (ret, 0, 0, eperm),
        (ret, 0, 0, enosys),
        (ret, 0, 0, kill),
    ]

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    filters = (SockFilter * len(prog))(*[SockFilter(*ins) for ins in prog])
    return libc.prctl(_PR_SET_SECCOMP, 2, ctypes.byref(SockFprog(len(prog), filters)), 0, 0) == 0


def _install_audit_hook(workdir: str, read_roots: tuple[str, ...]) -> None:
    """Refuse, from inside Python, what the program must not do: a backstop where kernel layers are missing.

    Everything the hook uses is bound now (closure cells, default arguments), so
    the program cannot change its behaviour by patching ``os`` or ``posixpath``.
    It can still be bypassed by code that reaches the kernel without raising
    audit events (e.g. ``_posixsubprocess``); the kernel layers are the enforcement.
    """
    import posix  # noqa: PLC0415 - sandbox child: starts with os, signal, sys only

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    readable = tuple(read_roots) + (workdir,) + _READ_FILES
    refused_prefixes = ("socket.", "ctypes.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn", "gc.get_")
    refused = frozenset(
        {
            "os.system",
            "os.fork",
            "os.forkpty",
            "os.kill",
            "os.killpg",
            "signal.pthread_kill",
            "os.symlink",
            "os.link",
            "sys._current_frames",
            "os.startfile",
            "pty.spawn",
        }
    )
    # Events that change the file system, with the positions of the path arguments to check.
    path_events = {
        "os.remove": (0,),
        "os.rmdir": (0,),
        "os.mkdir": (0,),
        "os.chmod": (0,),
        "os.chown": (0,),
        "os.truncate": (0,),
        "os.utime": (0,),
        "os.chflags": (0,),
        "os.lchflags": (0,),
        "os.setxattr": (0,),
        "os.removexattr": (0,),
        "os.mkfifo": (0,),
        "os.mknod": (0,),
        "os.rename": (0, 1),
        "shutil.move": (0, 1),
        "shutil.rmtree": (0,),
        "shutil.copyfile": (1,),
        "shutil.copymode": (1,),
        "shutil.copystat": (1,),
        "shutil.copytree": (1,),
        "shutil.chown": (0,),
    }

    def absolute(path, getcwd=posix.getcwd, fspath=os.fspath) -> str:
        path = fspath(path)
        if isinstance(path, bytes):
            path = path.decode("utf-8", "surrogateescape")
        if not path.startswith("/"):
            path = getcwd() + "/" + path
        parts: list[str] = []
        for part in path.split("/"):
            if part == "..":
                if parts:
                    parts.pop()
            elif part not in ("", "."):
                parts.append(part)
        return "/" + "/".join(parts)

    def under(path: str, roots: tuple[str, ...]) -> bool:
        return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)

    def hook(event: str, args: tuple, inside=(workdir,), readable=readable, path_events=path_events) -> None:
        if event in refused or event.startswith(refused_prefixes):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            if path is None or isinstance(path, int):
                return  # an already-open descriptor
            target = absolute(path)
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and bool(flags & write_flags)
            )
            if writing and not under(target, inside):
                raise PermissionError(f"sandbox: writing {target} is not allowed (only inside {inside[0]})")
            if not writing and not under(target, readable):
                raise PermissionError(f"sandbox: reading {target} is not allowed")
        elif event in path_events:
            for i in path_events[event]:
                arg = args[i] if i < len(args) else None
                if isinstance(arg, (str, bytes, os.PathLike)) and not under(absolute(arg), inside):
                    raise PermissionError(f"sandbox: {event} outside {inside[0]} is not allowed")

    sys.addaudithook(hook)


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    _child_main(sys.argv[2:])
    sys.exit(0)


# ---------------------------------------------------------------------------
# Parent side.
# ---------------------------------------------------------------------------

import math  # noqa: E402  (after the child's early exit: see above)
import select  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

# Enough for a traceback or a test's output; the rest is cut (RLIMIT_FSIZE caps what is written).
_OUTPUT_CAP = 64 * 1024


@dataclass(frozen=True)
class SandboxResult:
    """What happened to one sandboxed run.

    ``ok`` is true only when the program exited with status 0 within the time
    limit. ``protections`` names the isolation layers that were active, e.g.
    ``("user-namespace", "network-namespace", "pid-namespace", "rlimits",
    "landlock-abi7", "seccomp", "audit-hook")``.
    """

    ok: bool
    returncode: int | None
    timed_out: bool
    stdout: str
    stderr: str
    reason: str
    protections: tuple[str, ...] = ()
    elapsed_s: float = 0.0


def run_python(
    program: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    max_procs: int = 8,
    max_file_mb: int = 16,
    audit_hook: bool = True,
) -> SandboxResult:
    """Run ``program`` (Python source) in a sandboxed child process and report the outcome.

    ``timeout_s`` is wall-clock time, interpreter start-up (~40 ms) included;
    ``memory_mb`` caps the address space; ``max_procs`` is RLIMIT_NPROC (threads
    count; the kernel ignores it for root, where seccomp stops forks instead);
    ``max_file_mb`` caps every file the program writes, its stdout and stderr
    included. ``audit_hook=False`` leaves only the kernel layers (for testing them).
    """
    if timeout_s <= 0 or memory_mb <= 0 or max_procs <= 0 or max_file_mb <= 0:
        raise ValueError("run_python limits must be positive")
    workdir = tempfile.mkdtemp(prefix="t2-sandbox-")
    try:
        with open(os.path.join(workdir, _PROGRAM_FILE), "w", encoding="utf-8") as f:
            f.write(program)
        limits = [
            memory_mb * 1024 * 1024,
            math.ceil(timeout_s) + 1,
            max_file_mb * 1024 * 1024,
            max_procs,
            int(audit_hook),
        ]
        return _run_child(workdir, limits, timeout_s)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run_child(workdir: str, limits: list[int], timeout_s: float) -> SandboxResult:
    # A minimal environment: nothing of the caller's (tokens, keys) reaches the program.
    env = {"HOME": workdir, "TMPDIR": workdir, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}
    status_r, status_w = os.pipe()
    start = time.monotonic()
    # Output goes to unnamed files rather than pipes: no deadlock, and RLIMIT_FSIZE caps their size.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    "-S",
                    os.path.abspath(__file__),
                    "--child",
                    workdir,
                    *map(str, limits),
                    str(status_w),
                ],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                pass_fds=(status_w,),
                start_new_session=True,  # its own process group, so one kill reaches every descendant
            )
        finally:
            os.close(status_w)
        timed_out = not _wait(proc, timeout_s)
        _kill_group(proc.pid)  # on timeout, and any stragglers (possible only without a PID namespace)
        returncode: int | None = proc.wait()
        elapsed = time.monotonic() - start
        protections = _read_status(status_r)
        stdout, stderr = _read_capped(out), _read_capped(err)
    # On a loaded machine the CPU-time limit (timeout + 1 s; SIGXCPU, then SIGKILL one second later)
    # can end the program before this process wakes up to enforce the wall clock: the same time-out,
    # reached first. Nothing else kills the child: memory and process limits fail calls instead.
    timed_out = timed_out or returncode in (-signal.SIGXCPU, -signal.SIGKILL)
    if timed_out:
        returncode = None
    ok = returncode == 0 and not timed_out
    return SandboxResult(
        ok=ok,
        returncode=returncode,
        timed_out=timed_out,
        stdout=stdout,
        stderr=stderr,
        reason=_reason(ok, returncode, timed_out, timeout_s, stderr, protections),
        protections=protections,
        elapsed_s=elapsed,
    )


def _wait(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait for ``proc`` to exit; False on timeout."""
    # Popen.wait(timeout) polls with sleeps of up to 50 ms; a pidfd wakes us the moment the child exits.
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            proc.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        ready, _, _ = select.select([fd], [], [], timeout_s)
        return bool(ready)
    finally:
        os.close(fd)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_status(fd: int) -> tuple[str, ...]:
    """The protections the child reported (empty if it died before reporting)."""
    os.set_blocking(fd, False)
    try:
        data = os.read(fd, 4096)
    except BlockingIOError:
        data = b""
    finally:
        os.close(fd)
    return tuple(p for p in data.decode("ascii", "replace").split(",") if p)


def _read_capped(f) -> str:
    f.seek(0)
    data = f.read(_OUTPUT_CAP + 1)
    text = data[:_OUTPUT_CAP].decode("utf-8", errors="replace")
    return text + ("\n[output cut at 64 KiB]" if len(data) > _OUTPUT_CAP else "")


_SIGNAL_REASONS = {
    signal.SIGXCPU: "CPU time limit exceeded",
    signal.SIGXFSZ: "file size limit exceeded (output or a written file too large)",
    signal.SIGKILL: "killed",
    signal.SIGSEGV: "crashed (segmentation fault)",
    signal.SIGSYS: "stopped by seccomp",
}


def _reason(
    ok: bool, returncode: int | None, timed_out: bool, timeout_s: float, stderr: str, protections: tuple
) -> str:
    if timed_out:
        return f"timed out after {timeout_s:g} s"
    if ok:
        return "passed"
    if not protections:
        return f"the sandbox could not start (exit status {returncode}): {stderr.strip()[-300:]}"
    if returncode is not None and returncode < 0:
        sig = signal.Signals(-returncode)
        return f"{_SIGNAL_REASONS.get(sig, 'killed by ' + sig.name)} ({sig.name})"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return f"exit status {returncode}" + (f": {lines[-1]}" if lines else "")
