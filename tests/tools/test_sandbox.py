"""The sandbox against hostile programs: each is stopped within its limit, reported, and leaves
nothing behind; no network, no writes outside the scratch folder, nothing of our environment."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import tempfile
import uuid
from pathlib import Path

import psutil
import pytest

from areal_flow.tools.jail import UID_BASE
from areal_flow.tools.sandbox import SandboxLimits, SandboxResult, run_python, run_python_sync

pytestmark = pytest.mark.usefixtures("sandbox_isolation")

#: Small limits keep the hostile cases short; the wall limit is far above a normal run (~0.2 s).
LIMITS = SandboxLimits(cpu_s=1, wall_s=5, processes=16, output_bytes=10_000)


def leftovers(uid: int) -> list[psutil.Process]:
    """Processes still running under the sandbox's uid (as root each run has its own)."""
    return [p for p in psutil.process_iter(["uids"]) if p.info["uids"].real == uid]


def run(code: str, limits: SandboxLimits = LIMITS, **kw: object) -> SandboxResult:
    return run_python_sync(code, limits, **kw)  # type: ignore[arg-type]


def test_normal_program_with_files_and_stdin() -> None:
    result = run(
        "import sys, helper\n"
        "print(helper.VALUE, sys.stdin.read().upper())\n"
        "print('to stderr', file=sys.stderr)\n"
        "sys.exit(3)\n",
        files={"helper.py": "VALUE = 41 + 1\n"},
        stdin="hello",
    )
    assert result.stdout == "42 HELLO\n"
    assert result.stderr == "to stderr\n"
    assert (result.exit_code, result.stopped, result.ok) == (3, None, False)
    assert run("print('fine')").ok


def test_infinite_loop_stops_at_the_cpu_limit() -> None:
    result = run("while True:\n    pass\n")
    assert result.stopped == "cpu_time" and result.timed_out
    assert result.cpu_s >= 0.9
    assert result.wall_s < LIMITS.wall_s  # the CPU limit, not the wall clock, ended it


def test_sleeping_program_stops_at_the_wall_limit() -> None:
    limits = LIMITS.model_copy(update={"wall_s": 1.0})
    result = run("import time\nprint('going to sleep')\ntime.sleep(600)\n", limits)
    assert result.stopped == "wall_time" and result.exit_code is None
    assert result.stdout == "going to sleep\n"  # output before the kill is kept
    assert 1.0 <= result.wall_s < 1.0 + 3.0
    assert leftovers(result.uid) == []


def test_fork_bomb_is_bounded_and_killed_whole() -> None:
    # First the count: sleeping children, as many as the limit allows.
    counted = run(
        "import os, time\n"
        "made = 0\n"
        "for _ in range(100):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(600)\n"
        "        os._exit(0)\n"
        "    made += 1\n"
        "print(made)\n"
    )
    made = int(counted.stdout)
    assert 0 < made < LIMITS.processes
    assert counted.ok and counted.wall_s < LIMITS.wall_s  # sleeping children did not hold it
    assert leftovers(counted.uid) == []
    # Then the classic bomb: every process forks forever; the wall limit ends it, all of it.
    bomb = run(
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        LIMITS.model_copy(update={"wall_s": 2.0}),
    )
    assert bomb.stopped == "wall_time"
    assert leftovers(bomb.uid) == []
    assert run("print('still fine')").stdout == "still fine\n"


def test_huge_output_is_capped_and_stopped() -> None:
    result = run("while True:\n    print('x' * 1000)\n")
    assert result.stopped == "output_limit" and result.exit_code is None
    assert len(result.stdout) == LIMITS.output_bytes and set(result.stdout) == {"x", "\n"}
    assert result.wall_s < LIMITS.wall_s
    err = run("import sys\nwhile True:\n    sys.stderr.write('e' * 4096)\n")
    assert err.stopped == "output_limit" and len(err.stderr) == LIMITS.output_bytes


def test_memory_bombs_hit_the_address_space_limit() -> None:
    limits = LIMITS.model_copy(update={"memory_bytes": 256 * 2**20, "cpu_s": 5})
    at_once = run("x = bytearray(4 * 2**30)\n", limits)
    assert at_once.stopped == "memory" and at_once.exit_code == 1
    assert at_once.stderr.rstrip().endswith("MemoryError")
    growing = run("chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))\n", limits)
    assert growing.stopped == "memory"


def test_no_network_not_even_loopback() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        result = run(
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "    print('connected')\n"
            "except OSError as e:\n"
            "    print('refused', e.errno)\n"
            "udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "try:\n"
            f"    udp.sendto(b'x', ('127.0.0.1', {port}))\n"
            "    print('sent')\n"
            "except OSError as e:\n"
            "    print('refused', e.errno)\n"
            "print(socket.if_nameindex())\n"
        )
        import errno

        assert result.stdout.splitlines() == [
            f"refused {errno.ENETUNREACH}",
            f"refused {errno.ENETUNREACH}",
            "[(1, 'lo')]",
        ]
        # A completed connect would be waiting in the backlog by now: there is none.
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


WRITER = """\
import os, sys
for path in sys.argv_paths:
    try:
        with open(path, "a") as f:
            f.write("sandbox was here")
        print("WROTE", path)
    except OSError as e:
        print("blocked", path, e.strerror)
"""


def test_no_writes_outside_the_scratch_folder(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)  # writable by anyone: only the sandbox itself can stop the writes
    victim = open_dir / "victim.txt"
    victim.write_text("original")
    victim.chmod(0o666)
    probe = f"areal-probe-{uuid.uuid4().hex}"
    targets = [
        str(victim),
        str(open_dir / probe),
        f"/tmp/{probe}",
        f"/etc/{probe}",
        f"/usr/{probe}",
        os.path.join(sys.prefix, probe),
        "/proc/sys/kernel/hostname",
        f"/{probe}",
        f"/sandbox/{probe}",  # the scratch folder: the one write that works
    ]
    for binds in ([], [str(open_dir)]):  # hidden, then visible but read-only
        code = WRITER.replace("sys.argv_paths", repr(targets))
        result = run(code, binds=binds)
        lines = result.stdout.splitlines()
        assert lines[-1] == f"WROTE /sandbox/{probe}"
        assert all(line.startswith("blocked ") for line in lines[:-1]), lines
        if binds:
            assert f"blocked {victim} Read-only file system" in lines
    assert victim.read_text() == "original"
    assert sorted(p.name for p in open_dir.iterdir()) == ["victim.txt"]
    for outside in (f"/tmp/{probe}", f"/etc/{probe}", os.path.join(sys.prefix, probe)):
        assert not os.path.exists(outside)
    assert socket.gethostname() != "sandbox"


def test_nothing_of_the_parent_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = f"s3cret-{uuid.uuid4().hex}"
    monkeypatch.setenv("AREAL_SANDBOX_SECRET", secret)
    leaked = open(os.devnull)  # an inheritable descriptor the program must not get  # noqa: SIM115
    os.set_inheritable(leaked.fileno(), True)
    try:
        result = run(
            "import os\n"
            "print(sorted(os.environ))\n"
            "print(sorted(int(fd) for fd in os.listdir('/proc/self/fd')))\n"
            "seen = []\n"
            "for pid in os.listdir('/proc'):\n"
            "    if pid.isdigit():\n"
            "        try:\n"
            "            seen.append(open(f'/proc/{pid}/environ', 'rb').read())\n"
            "        except OSError as e:\n"
            "            seen.append(e.strerror.encode())\n"
            "print(len(seen), b''.join(seen).decode(errors='replace'))\n"
        )
    finally:
        leaked.close()
    assert secret not in result.stdout
    env_keys, fds, procs = result.stdout.splitlines()
    assert env_keys == str(
        sorted(["HOME", "LANG", "PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "TMPDIR"])
    )
    assert fds == "[0, 1, 2, 3]"  # 3 is the listing's own descriptor
    # A private /proc: the sandbox's init (whose environ is closed to the program) and itself.
    assert procs.startswith("2 Permission denied")


def test_scratch_is_private_and_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the host stages the root
    first = run(
        "import os\nopen('marker', 'w').write('x')\nprint(os.getcwd(), sorted(os.listdir()))\n"
    )
    assert first.stdout == "/sandbox ['main.py', 'marker']\n"
    second = run("import os\nprint(os.listdir())\n")
    assert second.stdout == "['main.py']\n"
    assert list(tmp_path.iterdir()) == []  # the staging folder was removed; nothing leaked
    limits = LIMITS.model_copy(update={"scratch_bytes": 2**20})
    full = run("open('big', 'wb').write(b'x' * 2 * 2**20)\n", limits)
    assert full.exit_code == 1 and "No space left on device" in full.stderr


def test_file_size_limit() -> None:
    limits = LIMITS.model_copy(update={"file_bytes": 2**20})
    result = run("open('big', 'wb').write(b'x' * 2 * 2**20)\n", limits)
    assert result.exit_code == 1 and "File too large" in result.stderr


def test_cancelled_run_leaves_no_process() -> None:
    async def cancelled() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(run_python("import time\ntime.sleep(600)\n", LIMITS), 1.0)

    asyncio.run(cancelled())
    stray = [p for p in psutil.process_iter(["uids"]) if p.info["uids"].real >= UID_BASE]
    assert stray == []


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None or not os.path.exists("/usr/bin/python3"),
    reason="needs root (to become an unprivileged user), setpriv and a system python3",
)
def test_user_namespace_mode_for_unprivileged_callers() -> None:
    """A non-root caller gets the same isolation through a user namespace."""
    as_nobody = {
        "python": "/usr/bin/python3",  # the test's own interpreter may not be readable by nobody
        "launcher": ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"],
    }
    result = run(
        "import os, socket\n"
        "print(os.getuid())\n"
        "try:\n"
        "    socket.create_connection(('127.0.0.1', 9), timeout=2)\n"
        "except OSError as e:\n"
        "    print(e.strerror)\n"
        "try:\n"
        "    open('/usr/areal-probe', 'w')\n"
        "except OSError as e:\n"
        "    print(e.strerror)\n"
        "made = 0\n"
        "for _ in range(100):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        os.pause()\n"
        "    made += 1\n"
        "print(made < 16)\n",
        **as_nobody,
    )
    assert result.isolation.startswith("userns (uid 65534)")
    assert result.stdout.splitlines() == [
        "65534",
        "Network is unreachable",
        "Read-only file system",
        "True",
    ]
    assert leftovers(65534) == []
