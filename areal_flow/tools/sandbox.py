"""Run untrusted Python in a sandboxed process: limits, no network, no writes outside scratch.

Role: the parent side. `run_python` starts `areal_flow/tools/jail.py` (the child side, which
describes the process tree), sends it the code and limits, reads the program's output under a
byte cap, enforces the wall-clock limit and returns a typed `SandboxResult`. Python execution
tools and `code_reward` both run code through here.

What is guaranteed (Linux, as root or with unprivileged user namespaces; otherwise every run
raises `SandboxUnavailable` — it fails closed, there is no weaker fallback):
- *No network*: the program lives in a new network namespace with no interface up, not even
  loopback; connecting anywhere, 127.0.0.1 included, fails. Abstract unix sockets are per
  namespace too.
- *No writes outside scratch*: the program's root is a tmpfs holding read-only binds of the
  system folders (/usr, /lib*, …), the interpreter's prefixes, a few device nodes (null, zero,
  full, random, urandom) and a private read-only /proc. Everything else on the host (home
  folders, /tmp, sockets such as a Docker socket) does not exist there. The only writable place
  is ``/sandbox``, a tmpfs of ``scratch_bytes`` that vanishes with the namespace; the host
  folder used to stage the root stays empty and is removed after each run.
- *Nothing of the parent's environment*: the environment is built from constants here; no
  file descriptor beyond stdin/stdout/stderr is inherited; /proc shows only the sandbox's
  processes.
- *Limits*: per-process CPU seconds (SIGXCPU then SIGKILL), address space, processes (as root
  each sandbox runs under its own uid, so the count is this sandbox's alone), file size, open
  files; the scratch size; a byte cap per output stream; and a wall-clock limit for the whole
  run, set-up included. Hitting the output cap or the wall limit kills the whole pid namespace.
- *No privileges*: as root the program runs under an unprivileged uid; otherwise under the
  caller's uid in a user namespace with no capabilities; ``no_new_privs`` in both cases, and all
  mounts are nosuid.

Not guaranteed: the sandbox shares the kernel and filters no system calls (no seccomp), so a
kernel exploit escapes, and the program may create nested (unprivileged) namespaces of its own;
binds are read-only but readable (the interpreter's site-packages, system files); memory held
in page cache or the scratch tmpfs is not counted in the address-space limit; CPU is limited
per process, so a process tree is bounded by the wall limit and the process count. Where the
caller is root only inside a user namespace (uid 0 outside), the kernel would not apply the
process limit, so that case is refused as unavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JAIL = Path(__file__).with_name("jail.py")
#: How long a killed sandbox may take to be reaped before the process group is SIGKILLed.
KILL_GRACE_S = 5.0
#: stdin goes through one pipe buffer; more would need a writer thread in the jail.
MAX_STDIN_BYTES = 65536
SCRATCH = "/sandbox"

_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime")
_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": SCRATCH,
    "TMPDIR": SCRATCH,
    "LANG": "C.UTF-8",
    "PYTHONUNBUFFERED": "1",  # output printed before a kill is kept
    "PYTHONDONTWRITEBYTECODE": "1",
}

StopReason = Literal["wall_time", "cpu_time", "output_limit", "memory"]


class SandboxError(RuntimeError):
    """The sandbox could not be set up (a bug or a misconfiguration, not the program's fault)."""


class SandboxUnavailable(SandboxError):
    """The kernel refuses the namespaces the sandbox needs; nothing was run."""


class SandboxLimits(BaseModel):
    """What one sandboxed run may use. Exceeding a limit stops the run; it is never an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu_s: float = Field(5.0, gt=0, description="CPU seconds per process (rounded up).")
    wall_s: float = Field(10.0, gt=0, description="Wall-clock seconds for the whole run.")
    memory_bytes: int = Field(
        512 * 2**20, ge=64 * 2**20, description="Address space per process (RLIMIT_AS)."
    )
    processes: int = Field(
        32, ge=1, description="Processes (and threads) the program may have at once."
    )
    output_bytes: int = Field(
        65536, gt=0, description="Bytes kept per stream (stdout, stderr); more stops the run."
    )
    file_bytes: int = Field(16 * 2**20, gt=0, description="Largest file the program may write.")
    scratch_bytes: int = Field(
        64 * 2**20, gt=0, description="Size of the writable scratch folder /sandbox (tmpfs)."
    )
    open_files: int = Field(64, ge=16, description="Open file descriptors per process.")


@dataclass(frozen=True)
class SandboxResult:
    """The outcome of one run.

    ``exit_code`` is the program's exit status, negative for a signal (``-9`` for SIGKILL) and
    None when the sandbox was killed from outside (``stopped`` says why). ``stopped`` is set
    when a limit ended the run: ``memory`` means the interpreter reported a MemoryError.
    """

    exit_code: int | None
    stdout: str
    stderr: str
    stopped: StopReason | None
    cpu_s: float
    wall_s: float
    isolation: str
    uid: int  # the program's uid (as root: unique to this run)

    @property
    def timed_out(self) -> bool:
        return self.stopped in ("wall_time", "cpu_time")

    @property
    def ok(self) -> bool:
        """Exited with status 0 within every limit."""
        return self.exit_code == 0 and self.stopped is None


async def run_python(
    code: str,
    limits: SandboxLimits | None = None,
    *,
    files: Mapping[str, str] | None = None,
    stdin: str = "",
    binds: Sequence[str] = (),
    python: str | None = None,
    launcher: Sequence[str] = (),
) -> SandboxResult:
    """Run ``code`` as ``/sandbox/main.py`` inside the sandbox.

    ``files`` are written next to it first (plain names, no folders); ``stdin`` is its standard
    input; ``binds`` are extra host paths made visible read-only at the same place. ``python``
    is the interpreter (default: this one, with its virtual environment); another one is bound
    with its installation prefix only. ``launcher`` are command words put before the jail's
    interpreter, e.g. ``setpriv`` options to build the sandbox as a service user.
    """
    limits = limits or SandboxLimits()
    python = python or sys.executable
    config = _config(code, limits, files or {}, stdin, binds, python)
    stage = tempfile.mkdtemp(prefix="areal-sandbox-")
    status_r, status_w = os.pipe()
    proc: asyncio.subprocess.Process | None = None
    try:
        config["stage"] = stage
        began = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *launcher, python, "-I", str(JAIL), str(status_w),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={}, start_new_session=True, pass_fds=(status_w,),
        )  # fmt: skip
        os.close(status_w)
        status_w = -1
        stdout, stderr, stopped = await _supervise(proc, json.dumps(config) + "\n", limits)
        wall = time.monotonic() - began
        statuses = _read_statuses(status_r)
    finally:
        for fd in (status_r, status_w):
            if fd >= 0:
                os.close(fd)
        if proc is not None and proc.returncode is None:  # cancelled: take the tree down
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        os.rmdir(stage)  # empty on the host: the sandbox's root was mounted in its namespace
    return _result(statuses, stdout, stderr, stopped, wall, limits)


def run_python_sync(code: str, limits: SandboxLimits | None = None, **kw: Any) -> SandboxResult:
    """`run_python` for callers without an event loop (reward workers, scripts)."""
    return asyncio.run(run_python(code, limits, **kw))


def check_sandbox() -> str:
    """Run an empty program; the isolation in force, or `SandboxUnavailable` saying why not."""
    result = run_python_sync("")
    if not result.ok:
        raise SandboxError(f"an empty program failed in the sandbox: {result}")
    return result.isolation


def _config(
    code: str,
    limits: SandboxLimits,
    files: Mapping[str, str],
    stdin: str,
    binds: Sequence[str],
    python: str,
) -> dict[str, Any]:
    for name in files:
        if not name or "/" in name or name in (".", "..") or name == "main.py":
            raise ValueError(f"sandbox file name {name!r}: use a plain name other than main.py")
    if len(stdin.encode()) > MAX_STDIN_BYTES:
        raise ValueError(f"sandbox stdin is {len(stdin.encode())} bytes; at most {MAX_STDIN_BYTES}")
    symlinks, mounts = _layout(binds, python)
    return {
        "argv": [python, "-s", "main.py"],  # -s: no user site; the env is ours already
        "env": dict(_ENV),
        "files": {"main.py": code, **files},
        "stdin": stdin,
        "limits": limits.model_dump(),
        "symlinks": symlinks,
        "binds": mounts,
    }


def _layout(extra: Sequence[str], python: str) -> tuple[dict[str, str], list[str]]:
    """Symlinks to recreate and host paths to bind read-only, no path below another."""
    symlinks: dict[str, str] = {}
    wanted: list[str] = []
    for path in _SYSTEM + _SYSTEM_FILES:
        if os.path.islink(path):
            symlinks[path] = os.readlink(path)
        elif os.path.exists(path):
            wanted.append(path)
    wanted += [p for p in _DEVICES if os.path.exists(p)]
    # The interpreter's installation: <prefix>/bin/python; this one's also has its venv.
    paths = [os.path.dirname(os.path.dirname(p)) for p in (python, os.path.realpath(python))]
    if python == sys.executable:
        paths += [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    paths += extra
    wanted += [os.path.normpath(os.path.abspath(p)) for p in paths]
    wanted += [os.path.realpath(p) for p in paths]
    binds: list[str] = []
    for path in sorted(set(wanted), key=len):
        if path == "/" or path == SCRATCH or path.startswith(SCRATCH + "/"):
            raise SandboxError(f"sandbox bind {path!r}: the root and {SCRATCH} cannot be bound")
        if not any(path == q or path.startswith(q + "/") for q in [*binds, *symlinks]):
            binds.append(path)
    return symlinks, binds


async def _supervise(
    proc: asyncio.subprocess.Process, config_line: str, limits: SandboxLimits
) -> tuple[bytes, bytes, StopReason | None]:
    """Feed the jail, collect capped output, and kill it at the wall or output limit."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    over = asyncio.Event()
    out = asyncio.create_task(_pump(proc.stdout, limits.output_bytes, over))
    err = asyncio.create_task(_pump(proc.stderr, limits.output_bytes, over))
    exited = asyncio.create_task(proc.wait())
    overflow = asyncio.create_task(over.wait())
    try:
        proc.stdin.write(config_line.encode())
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # its status says why
            await proc.stdin.drain()
        done, _ = await asyncio.wait(
            {exited, overflow}, timeout=limits.wall_s, return_when=asyncio.FIRST_COMPLETED
        )
        stopped: StopReason | None = None
        if exited not in done:
            stopped = "output_limit" if over.is_set() else "wall_time"
            proc.stdin.close()  # the lifeline: the jail's supervisor kills the namespace
            await asyncio.wait({exited}, timeout=KILL_GRACE_S)
            if not exited.done():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await exited
        pumped, _ = await asyncio.wait({out, err}, timeout=KILL_GRACE_S)
        if len(pumped) < 2:
            raise SandboxError("sandbox output stayed open after its namespace ended")
    finally:
        for task in (overflow, out, err, exited):
            task.cancel()  # no-op for finished ones; the rest must not outlive this call
        proc.stdin.close()
    if over.is_set() and stopped is None:  # the cap was hit just as the program exited
        stopped = "output_limit"
    return out.result(), err.result(), stopped


async def _pump(stream: asyncio.StreamReader, cap: int, over: asyncio.Event) -> bytes:
    """Keep the first ``cap`` bytes; drain (and drop) the rest until the writer is gone."""
    kept = bytearray()
    while chunk := await stream.read(65536):
        room = cap - len(kept)
        if len(chunk) > room:
            kept += chunk[: max(room, 0)]
            over.set()
        else:
            kept += chunk
    return bytes(kept)


def _read_statuses(fd: int) -> dict[str, Any]:
    """Merge the jail's JSON status lines (every writer has exited, so this cannot block)."""
    os.set_blocking(fd, False)
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            data += chunk
    merged: dict[str, Any] = {}
    for line in data.decode().splitlines():
        entry = json.loads(line)
        if "cpu_s" in entry and "cpu_s" in merged:  # the init's count already covers the tree
            entry["cpu_s"] = max(entry["cpu_s"], merged["cpu_s"])
        merged.update(entry)
    return merged


def _result(
    status: dict[str, Any],
    stdout: bytes,
    stderr: bytes,
    stopped: StopReason | None,
    wall: float,
    limits: SandboxLimits,
) -> SandboxResult:
    err = stderr.decode(errors="replace")
    if "unavailable" in status:
        raise SandboxUnavailable(
            f"the sandbox needs Linux namespaces, which this process may not create "
            f"({status['unavailable']}); run as root or allow unprivileged user namespaces "
            "(sysctl kernel.unprivileged_userns_clone=1, and on Ubuntu "
            "kernel.apparmor_restrict_unprivileged_userns=0)"
        )
    if "setup_error" in status:
        raise SandboxError(f"sandbox set-up failed: {status['setup_error']}; stderr: {err[-2000:]}")
    if "isolation" not in status:
        raise SandboxError(f"the sandbox ended without a status; stderr: {err[-2000:]}")
    code: int | None = status.get("exit")
    if code is None and stopped is None:
        raise SandboxError(f"the sandbox was killed from outside; status {status}")
    cpu = float(status.get("cpu_s", 0.0))
    stopped = stopped or _limit_hit(code, cpu, err, limits)
    iso = status["isolation"]
    isolation = (
        f"{iso['mode']} (uid {iso['uid']}): namespaces mnt+net+pid+ipc+uts, read-only root, "
        f"tmpfs {SCRATCH}, /proc {'private' if iso['proc'] else 'absent'}, no_new_privs"
    )
    return SandboxResult(
        exit_code=code if stopped not in ("wall_time", "output_limit") else None,
        stdout=stdout.decode(errors="replace"),
        stderr=err,
        stopped=stopped,
        cpu_s=cpu,
        wall_s=wall,
        isolation=isolation,
        uid=int(iso["uid"]),
    )


def _limit_hit(
    code: int | None, cpu: float, stderr: str, limits: SandboxLimits
) -> StopReason | None:
    """The limit that ended a program that exited by itself, if any."""
    signum = -code if code is not None and code < 0 else None
    if signum == signal.SIGXCPU or (signum == signal.SIGKILL and cpu >= limits.cpu_s):
        return "cpu_time"
    lines = stderr.rstrip().splitlines()
    if code and lines and lines[-1].startswith("MemoryError"):
        return "memory"
    return None
