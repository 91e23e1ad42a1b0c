"""The Ray actor behind one replica, and the replica process it runs (the Ray nodes' side).

Rules:
- ``ReplicaHost`` is a threaded actor: ``run`` blocks while the replica runs, and ``where``,
  ``reserve``, ``read_log`` and ``stop`` answer meanwhile. It knows nothing of the driver's loop.
- The replica is a worker process (``areal_flow.runtime.worker``) under its reaper
  (``reaper.py``), started exactly as the local launcher starts it: it dies with the actor's
  thread that started it (which waits for it) and takes the worker and all it spawned with it
  — also when Ray SIGKILLs the children of an exiting actor — so nothing of a replica outlives
  its actor. ``run`` returns the exit code only once every process of the replica is gone;
  ``stop`` (the driver's kill) ends them all and waits for that.
- The child's output is kept in memory (at most ``LOG_BUFFER_BYTES`` unread; older bytes are
  dropped and the driver is told how many) until the driver reads it; nothing is written on
  the node except the plan, at the driver's path, when that folder is not shared, and, for a
  run with CurveZMQ on, the run's keys the driver sent with ``run``: written into
  ``run_dir/keys`` of this node (folder 0700, files 0600, atomically; a folder already there,
  shared or written by another replica of this node, must hold the same keys), where the
  replica loads them as on the driver's machine. The keys never go on a command line or into
  the environment.
- ``RankHost`` is the same actor for rank r ≥ 1 of a trainer group: started by rank 0 (not the
  driver) in the rank's own bundle, it runs ``areal_flow.train.rank_main`` under a reaper as a
  replica's worker is run, and writes the group's spec (the one other file) at rank 0's path.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from areal_flow.runtime import reaper
from areal_flow.runtime.ray_placement import reserve_ports
from areal_flow.transport.curve import RunKeys, write_run_keys

LOG_BUFFER_BYTES = 16 * 1024**2
OUTPUT_GRACE_S = 2.0  # after the replica exits, its output has this long to be read
KILLED = -9  # what a replica stopped before it started reports


class ReplicaHost:
    """The actor behind one replica (a threaded Ray actor): reports where it runs, reserves
    ports on its node, runs the replica's worker process and buffers its output."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.lock = threading.Lock()
        self.buffer = bytearray()
        self.base = 0  # log offset of buffer[0]
        self.process_lock = threading.Lock()
        self.process: subprocess.Popen[bytes] | None = None  # the stand-by, until reaped
        self.stopped = threading.Event()
        self.ended = threading.Event()

    def where(self) -> dict[str, Any]:
        import ray

        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "ip": ray.util.get_node_ip_address(),
            "gpus": [int(g) for g in ray.get_gpu_ids()],
            "pid": os.getpid(),
        }

    def reserve(self, host: str, count: int, low: int, high: int, exclude: list[int]) -> list[int]:
        return reserve_ports(host, count, low, high, exclude)

    def run(
        self,
        plan_json: str,
        plan_path: str,
        node: str,
        replica: int,
        env: dict[str, str],
        cwd: str,
        keys: list[str] | None = None,
    ) -> int:
        """Run the replica to its end; its exit code. ``keys``: the run's CurveZMQ key
        material (``curve.key_material``) when the plan has curve on."""
        _write_file(Path(plan_path), plan_json)
        install_keys(plan_json, keys)
        worker = [sys.executable, "-m", "areal_flow.runtime.worker", plan_path, node, str(replica)]
        return self._run_reaped(worker, env, cwd)

    def _run_reaped(self, argv: list[str], env: dict[str, str], cwd: str) -> int:
        """Run ``argv`` under a reaper to its end, collecting its output; its exit code."""
        with self.process_lock:
            if self.stopped.is_set():
                return KILLED  # stopped before it started
            # This thread forks the stand-by and waits for it: Linux's parent-death signal
            # follows the forking thread, so it must outlive the stand-by (it does).
            process = subprocess.Popen(
                reaper.command(os.getpid(), argv),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                cwd=cwd if Path(cwd).is_dir() else None,
                start_new_session=True,
            )
            self.process = process
        assert process.stdout is not None
        reader = threading.Thread(target=self._collect, args=(process.stdout,), daemon=True)
        reader.start()
        try:
            reaper.wait_exited(process.pid)
            # A stand-by and reaper both SIGKILLed leave the worker's processes behind: clear
            # the session while the stand-by's unreaped PID keeps its id ours.
            left = reaper.clear_session(process.pid)
            if left:
                self._say(f"processes of {self.key} survived SIGKILL: {left}")
            with self.process_lock:
                code = process.wait()
                self.process = None
        finally:
            self.ended.set()
        # Only the replica's own output is waited for: nothing of it is left to hold the pipe.
        reader.join(timeout=OUTPUT_GRACE_S)
        return code

    def stop(self, timeout: float) -> bool:
        """End the replica (its reaper kills the worker and everything it started) and wait
        until ``run`` has seen them gone; whether that happened within ``timeout``."""
        with self.process_lock:
            self.stopped.set()
            if self.process is None:
                return True  # ended already, or will not start
            # Not Popen.send_signal, which would reap it: unreaped, the PID is still ours.
            os.kill(self.process.pid, signal.SIGTERM)
        return self.ended.wait(timeout)

    def _say(self, text: str) -> None:
        with self.lock:
            self.buffer += f"[areal-flow] {text}\n".encode()

    def _collect(self, pipe: io.BufferedReader) -> None:
        for chunk in iter(lambda: pipe.read1(65536), b""):
            with self.lock:
                self.buffer += chunk
                overflow = len(self.buffer) - LOG_BUFFER_BYTES
                if overflow > 0:
                    del self.buffer[:overflow]
                    self.base += overflow

    def read_log(self, offset: int) -> tuple[int, bytes]:
        """Output from ``offset`` on (the driver has everything before it): (start, bytes)."""
        with self.lock:
            done = min(max(0, offset - self.base), len(self.buffer))
            del self.buffer[:done]
            self.base += done
            return self.base, bytes(self.buffer)


def _write_file(path: Path, text: str) -> None:
    """The plan (or a rank group's spec) at the driver's path on this node (a shared folder
    already has it)."""
    if path.exists() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(text)
    partial.replace(path)


class RankHost(ReplicaHost):
    """The actor behind rank r ≥ 1 of a trainer group (started by rank 0, in its own bundle):
    runs ``areal_flow.train.rank_main`` under a reaper as ``ReplicaHost`` runs a worker."""

    def run_rank(
        self, spec_json: str, spec_path: str, rank: int, env: dict[str, str], cwd: str
    ) -> int:
        """Run the rank to its end; its exit code. The group's spec is written at rank 0's
        path on this node first (rank 0's folder may not be shared)."""
        _write_file(Path(spec_path), spec_json)
        argv = [sys.executable, "-m", "areal_flow.train.rank_main", spec_path, str(rank), "0"]
        return self._run_reaped(argv, env, cwd)


def install_keys(plan_json: str, keys: list[str] | None) -> None:
    """Write the run's CurveZMQ keys into this node's run folder (the plan's ``run_dir``)."""
    if keys is None:
        return
    write_run_keys(json.loads(plan_json)["run_dir"], RunKeys.from_material(keys))
