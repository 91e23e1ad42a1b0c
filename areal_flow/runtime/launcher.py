"""Launchers start replicas and tell the driver when one has ended.

Rules:
- ``LocalLauncher``: one worker process per replica (``python -m areal_flow.runtime.worker``),
  started under the replica's reaper (``reaper.py``) in a session of its own (Ctrl-C reaches
  only the driver), stdout and stderr appended to ``logs/<node>.<replica>.log`` in the run
  folder. The worker pins its own cores. Its reaper dies with the driver's thread that started
  it, and takes everything the replica started with it.
- ``InProcessLauncher``: each replica is an asyncio task in the driver's loop — the fast path
  for tests of light nodes; same driver, same sockets, same worker code.
- The Ray launcher (``ray_launcher.py``) runs the same worker process inside a Ray actor.
- A handle answers ``poll()`` (None while running, else an exit code) and ``kill()``; killing
  is for replicas that ignored 'stop'. ``poll`` reports an exit only once every process of the
  replica is gone (the driver restarts a replica only then), and ``kill`` returns only then (or
  reports what the kernel would not end). Both only ever target the replica's own processes:
  the reaper's tree, and what is left of the replica's session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Protocol

from areal_flow.runtime import reaper
from areal_flow.runtime.plan import ReplicaPlan, RunPlan

log = logging.getLogger(__name__)

KILL_WAIT_S = 2 * reaper.CLEAR_S + 2.0  # the reaper's clearing, the stand-by's, their exits


class Handle(Protocol):
    key: str
    pid: int | None

    def poll(self) -> int | None: ...

    def kill(self) -> None: ...


class Launcher(Protocol):
    def prepare(self, plan: RunPlan) -> RunPlan:
        """The plan as this launcher will run it (the Ray launcher's actors pick the addresses
        they can bind); called once, before the driver binds the control address and saves it."""
        ...

    def start(self, plan: RunPlan, plan_path: Path, replica: ReplicaPlan) -> Handle: ...


def log_path(run_dir: Path, node: str, replica: int) -> Path:
    return run_dir / "logs" / f"{node}.{replica}.log"


def last_lines(path: Path, count: int = 20) -> list[str]:
    """The last ``count`` lines of a log file ([] if it does not exist)."""
    if not path.exists():
        return []
    with path.open(errors="replace") as handle:
        return [line.rstrip("\n") for line in deque(handle, maxlen=count)]


class ProcessHandle:
    """A replica run by ``LocalLauncher``: ``pid`` is its stand-by's (``reaper.py``: the
    session leader, parent of the reaper, grandparent of the worker process)."""

    def __init__(self, key: str, process: subprocess.Popen[bytes]) -> None:
        self.key = key
        self.process = process
        self.pid: int | None = process.pid
        self.code: int | None = None

    def poll(self) -> int | None:
        if self.code is None and reaper.exited(self.process.pid):
            self._reap()
        return self.code

    def kill(self) -> None:
        """SIGTERM the stand-by: the reaper SIGKILLs the worker and everything it started, and
        both exit once they are gone; if they do not, the process group is SIGKILLed.
        Never raises: a process the kernel has not ended within ``KILL_WAIT_S`` (seen under
        memory pressure) is reported and left to the OS."""
        if self.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGTERM)  # unreaped: the PID is still ours
        if not _exits_within(self.process.pid, KILL_WAIT_S):
            log.warning("replica %s (pid %d) outlived SIGTERM: killing", self.key, self.pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            if not _exits_within(self.process.pid, KILL_WAIT_S):
                log.warning("replica %s (pid %d) did not exit after SIGKILL", self.key, self.pid)
                return
        self._reap()

    def _reap(self) -> None:
        """Clear what is left of the session (a stand-by and reaper both SIGKILLed leave the
        worker's processes behind), then reap the stand-by: its PID held the session's id."""
        left = reaper.clear_session(self.process.pid)
        if left:
            log.warning("processes of replica %s survived SIGKILL: %s", self.key, left)
        self.code = self.process.wait()


def _exits_within(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not reaper.exited(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(reaper.ROUND_S)
    return True


class LocalLauncher:
    """One OS process per replica on this machine."""

    def prepare(self, plan: RunPlan) -> RunPlan:
        return plan

    def start(self, plan: RunPlan, plan_path: Path, replica: ReplicaPlan) -> Handle:
        log = log_path(Path(plan.run_dir), replica.node, replica.replica)
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        worker = [
            sys.executable,
            "-m",
            "areal_flow.runtime.worker",
            str(plan_path),
            replica.node,
            str(replica.replica),
        ]
        with log.open("ab") as out:
            process = subprocess.Popen(
                reaper.command(os.getpid(), worker),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        return ProcessHandle(replica.key, process)


class TaskHandle:
    def __init__(self, key: str, task: asyncio.Task[int]) -> None:
        self.key = key
        self.task = task
        self.pid: int | None = None

    def poll(self) -> int | None:
        if not self.task.done():
            return None
        if self.task.cancelled() or self.task.exception() is not None:
            return 1
        return self.task.result()

    def kill(self) -> None:
        self.task.cancel()


class InProcessLauncher:
    """Every replica as an asyncio task of the driver's event loop."""

    def prepare(self, plan: RunPlan) -> RunPlan:
        return plan

    def start(self, plan: RunPlan, plan_path: Path, replica: ReplicaPlan) -> Handle:
        from areal_flow.runtime.worker import run_replica

        task = asyncio.create_task(
            run_replica(plan, replica.node, replica.replica), name=replica.key
        )
        return TaskHandle(replica.key, task)
