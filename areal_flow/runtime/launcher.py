"""Launchers start replicas and tell the driver when one has ended.

Rules:
- ``LocalLauncher``: one OS process per replica (``python -m areal_flow.runtime.worker``), in
  its own session (Ctrl-C reaches only the driver), stdout and stderr appended to
  ``logs/<node>.<replica>.log`` in the run folder. The worker pins its own cores.
- ``InProcessLauncher``: each replica is an asyncio task in the driver's loop — the fast path
  for tests of light nodes; same driver, same sockets, same worker code.
- The Ray launcher (``ray_launcher.py``) runs the same worker process inside a Ray actor.
- A handle answers ``poll()`` (None while running, else an exit code) and ``kill()``; killing
  is for replicas that ignored 'stop', and only ever targets the handle's own process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Protocol

from areal_flow.runtime.plan import ReplicaPlan, RunPlan

log = logging.getLogger(__name__)


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
    def __init__(self, key: str, process: subprocess.Popen[bytes]) -> None:
        self.key = key
        self.process = process
        self.pid: int | None = process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    def kill(self) -> None:
        """SIGKILL the replica's whole process group (its own children too, e.g. vLLM's engine
        processes: no orphans). Never raises: a process the kernel has not reaped within 10 s
        (seen under memory pressure) is reported and left to the OS."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log.warning("replica %s (pid %d) did not exit 10 s after SIGKILL", self.key, self.pid)


class LocalLauncher:
    """One OS process per replica on this machine."""

    def prepare(self, plan: RunPlan) -> RunPlan:
        return plan

    def start(self, plan: RunPlan, plan_path: Path, replica: ReplicaPlan) -> Handle:
        log = log_path(Path(plan.run_dir), replica.node, replica.replica)
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with log.open("ab") as out:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "areal_flow.runtime.worker",
                    str(plan_path),
                    replica.node,
                    str(replica.replica),
                ],
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
