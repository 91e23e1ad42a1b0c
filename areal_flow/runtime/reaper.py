"""A replica's reaper: the processes a launcher starts for a replica, around its worker, that
make sure nothing the replica started outlives it (Linux).

Rules:
- Standard library only, and started by file path with ``python -I`` (``command``): it imports
  nothing of the package, starts in tens of milliseconds and holds a few MB.
- Three processes in a chain, in a session of their own: the stand-by (the launcher's child),
  the reaper (its child, a fork), the worker (the reaper's child). Parent-death signals tie the
  chain to the launcher's thread that started it (the driver's, or the Ray actor's), even
  when that dies by kill -9: the stand-by gets SIGKILL, then the reaper SIGTERM, which clears.
- The reaper is a child subreaper (``PR_SET_CHILD_SUBREAPER``): whatever the worker spawns and
  orphans — a double-forked daemon, a process in a session of its own — is re-parented to it,
  never to init, so everything the replica started stays in its process tree.
- When the worker exits, or on SIGTERM, SIGHUP or SIGINT, the reaper SIGKILLs every descendant,
  reaps them all, and only then exits: with the worker's status (its exit code, or death by
  the same signal), so the launcher learns what the worker did once nothing of it is left.
- The stand-by passes stop signals on and exits as the reaper does. A subreaper too, it clears
  after a reaper that was SIGKILLed; and it shields the reaper from those that SIGKILL a dead
  process's children (Ray, when an actor exits): the reaper is not one of them. Only both
  killed by SIGKILL leave the replica's processes to ``clear_session``.
- A process is signalled only through a pidfd opened before it was checked to belong (a
  descendant of the reaper; in ``clear_session``, a member of the replica's session): a PID
  reused meanwhile by a process the run did not start is never hit.
- ``clear_session`` is the launchers' backstop for a stand-by and reaper both SIGKILLed: once
  no reaper is at work in the replica's session, it kills what is left there. It is called
  while the stand-by is an unreaped zombie, so the session id (the stand-by's PID) cannot
  belong to anyone else. Processes that left the session are out of its reach; with a live
  reaper or stand-by they are in its tree (see above).
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import signal
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
CLEAR_S = 10.0  # killed processes have this long to be gone (the kernel frees GPU memory)
ROUND_S = 0.01  # between rounds of kill-and-check while clearing

Table = dict[int, tuple[str, int, int]]  # pid → (state, parent pid, session id)


def command(parent: int, argv: list[str]) -> list[str]:
    """The command line that runs ``argv`` as a replica's worker, under a reaper, all dying
    with the calling thread of ``parent`` (this process)."""
    return [sys.executable, "-I", str(Path(__file__).resolve()), str(parent), *argv]


# -- the process table ---------------------------------------------------------------------


def process_table() -> Table:
    """Every process's state, parent and session, from ``/proc``."""
    table: Table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                # The command name may hold spaces and parentheses: fields follow the last ')'.
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # it ended while the table was read
        table[int(entry.name)] = (fields[0].decode(), int(fields[1]), int(fields[3]))
    return table


def descendants(root: int, table: Table) -> set[int]:
    """Processes below ``root`` in ``table`` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for pid, (_, parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found: set[int] = set()
    todo = list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def session_members(session: int, table: Table) -> set[int]:
    """Live (not zombie) processes of ``session`` in ``table``."""
    return {pid for pid, (state, _, sid) in table.items() if sid == session and state != "Z"}


def kill_verified(pids: Iterable[int], belongs: Callable[[Table], set[int]]) -> None:
    """SIGKILL those of ``pids`` that ``belongs`` still names after each one's pidfd is open."""
    handles: dict[int, int | None] = {}
    try:
        for pid in pids:
            try:
                handles[pid] = os.pidfd_open(pid)
            except ProcessLookupError:
                continue  # gone already
            except OSError as err:
                if err.errno not in (errno.ENOSYS, errno.EPERM):
                    raise
                handles[pid] = None  # no pidfds here (an old kernel, a seccomp filter)
        for pid in belongs(process_table()) & handles.keys():
            fd = handles[pid]
            try:
                if fd is None:
                    os.kill(pid, signal.SIGKILL)
                else:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                continue  # gone meanwhile, or not ours to kill: left for the caller to report
    finally:
        for fd in handles.values():
            if fd is not None:
                os.close(fd)


def clear_session(session: int, timeout: float = CLEAR_S) -> list[int]:
    """Let a reaper still at work in ``session`` finish, then SIGKILL every process left in it
    and wait until they are gone; the PIDs still alive after ``timeout`` more (a process stuck
    in the kernel), for the caller to report."""
    deadline = time.monotonic() + CLEAR_S + 1.0  # the reaper's own deadline, and its exit
    while any(_is_reaper(pid) for pid in session_members(session, process_table())):
        if time.monotonic() > deadline:
            break
        time.sleep(ROUND_S)
    deadline = time.monotonic() + timeout
    while True:
        left = session_members(session, process_table())
        if not left or time.monotonic() > deadline:
            return sorted(left)
        kill_verified(left, lambda table: session_members(session, table))
        time.sleep(ROUND_S)


def _is_reaper(pid: int) -> bool:
    """Whether ``pid`` runs this file as ``command`` starts it (a stand-by, or its reaper)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            words = cmdline.read().split(b"\0")
    except OSError:
        return False
    return [w.decode(errors="replace") for w in words[:3]] == command(0, [])[:3]


def exited(pid: int) -> bool:
    """Whether our child ``pid`` has ended — without reaping it, so its PID (and its session
    and process group ids) stay taken until the caller reaps it. A child something else
    reaped (a stray ``os.wait()`` in the process) has ended too."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def wait_exited(pid: int) -> None:
    """Block until our child ``pid`` has ended, without reaping it."""
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


# -- the reaper process --------------------------------------------------------------------


class Stopped(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}, {value}): {os.strerror(err)}")


def _stop(signum: int, frame: object) -> None:
    _ignore_stop_signals()  # one clean-up at a time
    raise Stopped(signum)


def _ignore_stop_signals() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _fork(run: Callable[[], int], deathsig: int) -> int:
    """Fork a child that gets ``deathsig`` when this process dies, and runs ``run`` (its exit
    code is the child's); the child's PID."""
    me = os.getpid()
    pid = os.fork()
    if pid != 0:
        return pid
    code = 127
    try:  # the child never returns into its parent's code
        _prctl(PR_SET_PDEATHSIG, deathsig)
        code = run() if os.getppid() == me else 1  # 1: the parent died before it was armed
    except BaseException as err:
        print(f"[areal-flow] reaper: {type(err).__name__}: {err}", file=sys.stderr)
    finally:
        os._exit(code)


def _wait_for(child: int) -> int:
    """``child``'s exit status; orphans re-parented here meanwhile are reaped as they end."""
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            return status


def clear_tree(timeout: float = CLEAR_S) -> tuple[list[int], list[int]]:
    """SIGKILL every descendant and reap them all: (those killed, those left after
    ``timeout``)."""
    me = os.getpid()
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            return sorted(killed), []  # no child left, so no descendant: orphans come here
        table = process_table()
        left = {pid for pid in descendants(me, table) if table[pid][0] != "Z"}
        if time.monotonic() > deadline:
            return sorted(killed), sorted(left)
        killed |= left
        kill_verified(left, lambda table: descendants(me, table))
        time.sleep(ROUND_S)


def _report(why: str, cleared: tuple[list[int], list[int]]) -> None:
    killed, stuck = cleared
    if killed:
        print(f"[areal-flow] reaper: {why}; killed its processes {killed}", file=sys.stderr)
    if stuck:
        print(f"[areal-flow] reaper: still alive after {CLEAR_S:g} s: {stuck}", file=sys.stderr)


def _exit_as(code: int) -> int:
    """Exit as the worker did: with its code, or killed by its signal (no core file)."""
    if code >= 0:
        return code
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if -code not in (signal.SIGKILL, signal.SIGSTOP):  # those two have no handler to reset
        signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
    return 128 - code  # a signal whose default is not to end the process


def reap(worker_argv: list[str]) -> int:
    """The reaper: run the worker until it ends (or a stop signal comes), then clear."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    worker = _fork(lambda: os.execvp(worker_argv[0], worker_argv), signal.SIGKILL)
    try:
        for signum in STOP_SIGNALS:
            signal.signal(signum, _stop)
        status = _wait_for(worker)
        _ignore_stop_signals()
        code = os.waitstatus_to_exitcode(status)
        why = f"the worker exited with code {code}"
    except Stopped as stop:
        code = -stop.signum
        why = f"stopped by {signal.Signals(stop.signum).name}"
    _report(why, clear_tree())
    return _exit_as(code)


def stand_by(reaper: int) -> int:
    """The launcher's child: passes stop signals on to the reaper and, once it has ended,
    clears what a reaper killed by SIGKILL left (a subreaper too), then exits as it did. It
    shields the reaper: whoever kills the launcher's children with SIGKILL (Ray, as an actor
    exits) kills this one, and the reaper, its child, clears on its parent-death signal."""
    for signum in STOP_SIGNALS:  # unreaped, the reaper's PID is still its own
        signal.signal(signum, lambda signum, frame: os.kill(reaper, signum))
    wait_exited(reaper)  # its only child while it lives: orphans go to the reaper meanwhile
    _ignore_stop_signals()
    code = os.waitstatus_to_exitcode(os.waitpid(reaper, 0)[1])
    _report(f"the reaper exited with code {code}", clear_tree())
    return _exit_as(code)


def main(argv: list[str]) -> int:
    """``PARENT COMMAND...``: stand by while the reaper runs COMMAND as the worker."""
    parent, worker_argv = int(argv[0]), argv[1:]
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the launcher died before the signal was armed
        return 1
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    return stand_by(_fork(lambda: reap(worker_argv), signal.SIGTERM))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
