"""A trainer's rank group: the processes of one data-parallel trainer and their command channel.

Rules:
- Rank 0 is the trainer node's own process, the one trainer the graph sees. It starts ranks
  1..N−1 (``python -m areal_flow.train.rank_main``) through a ``RankStarter``, hosts the
  rendezvous (a ``TCPStore`` bound on the starter's host and port only) and joins them in one
  torch.distributed group: NCCL on CUDA, gloo on CPU, plus a gloo group for the small
  collectives of metrics and log-probs.
- Two starters. ``LocalRanks`` (the local launcher): child processes of rank 0, the store on
  127.0.0.1 with a port the kernel picks. ``ray_ranks.RayRanks`` (the Ray launcher, which
  gives the replica a ``RankPlacement``): one Ray actor per rank in the rank's own bundle of
  the run's placement group, the store on the address and port the launcher reserved on rank
  0's Ray node (127.0.0.1 when the run stays on the driver's machine), as it does data ports.
- Tied to rank 0: a local child dies with the thread of rank 0 that started it (parent-death
  signal; that thread is the group's monitor, which lives as long as the group), and it is in
  rank 0's process tree, which the replica's reaper clears. A rank actor belongs to rank 0's
  Ray job, which ends with rank 0's process, and runs its rank under a reaper tied to it.
  Each rank pins itself to its cores (none under Ray, which owns them) and sets one thread
  budget before torch is imported.
- Commands: rank 0 writes a JSON header to the store (``cmd/<seq>``) and each rank's payload
  (Arrow IPC bytes, never pickle) under ``cmd/<seq>/<rank>``; every rank then runs the same
  collective code. A child marks ``at/<rank>`` with the sequence number it took up, so a
  collective that times out names the ranks that never arrived. Children wait for commands
  without a timeout (the trainer may idle while generation runs); collectives time out after
  ``timeout_s``. Start-up (imports, model loading, sharding) is not a collective: the ranks
  meet at store rendezvous points (``STARTUP_S``), where rank 0 fails as soon as a child dies.
- Failure: the monitor polls the ranks it started (processes or actors: a dead actor reads
  as SIGKILL); one that exits before 'stop' makes ``failure`` the rank's name, exit status and
  last log lines (a rank actor's output is pulled into the same log file), and the monitor
  kills the others at once. Rank 0 reads ``failure`` (the trainer node watches it) and stops
  the whole trainer; stopping the trainer stops every rank it started.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from areal_flow.runtime.plan import RankPlacement

log = logging.getLogger(__name__)

POLL_S = 0.1  # how often the monitor looks at the children
WAIT_S = 3600.0  # a child's wait for a command, renewed (rank 0's death ends it at once)
STARTUP_S = 600.0  # ranks have this long to start, load the model and shard it
STOP_S = 30.0  # after 'stop', children have this long to exit before they are killed
LOG_LINES = 12  # last log lines of a dead rank in the trainer's error


class RankFailed(RuntimeError):
    """A rank of the trainer group died, failed, or did not arrive at a collective."""


@dataclass(frozen=True)
class GroupSpec:
    """What every rank needs to join the group and build its policy (JSON in the run folder)."""

    name: str  # the trainer node
    world: int
    port: int
    device: str  # "cpu" or "cuda"
    timeout_s: float
    cpus: list[list[int]]  # per rank; [] = not pinned
    threads: int
    run_dir: str
    policy: dict[str, Any]  # Policy keyword arguments (model_dir, optimizer, ...)
    seed: int
    resume: str | None  # a checkpoint folder every rank restores its optimizer shard from
    host: str = "127.0.0.1"  # where rank 0's store listens
    own_gpu: bool = False  # each rank sees only its own GPU (a Ray bundle's), as cuda:0

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__))

    @classmethod
    def load(cls, path: Path) -> GroupSpec:
        return cls(**json.loads(path.read_text()))

    def log_path(self, rank: int) -> Path:
        return Path(self.run_dir) / "logs" / f"{self.name}.rank{rank}.log"

    def rank_device(self, rank: int) -> str:
        if self.device != "cuda":
            return "cpu"
        return "cuda:0" if self.own_gpu else f"cuda:{rank}"


def core_shares(cpus: list[int], world: int) -> list[list[int]]:
    """Each rank's cores: an equal share of the trainer's (at least one each), else none."""
    k = len(cpus) // world
    return [cpus[r * k : (r + 1) * k] for r in range(world)] if k else [[] for _ in range(world)]


class RankGroup:
    """This process's membership of the trainer group; rank 0 also owns the children."""

    def __init__(
        self, spec: GroupSpec, rank: int, store: Any, monitor: _Monitor | None = None
    ) -> None:
        import torch.distributed as dist

        self.spec = spec
        self.rank = rank
        self.world = spec.world
        self.store = store
        self.seq = 0
        self.stopping = False
        self._monitor = monitor
        self.children = monitor.children if monitor is not None else {}
        self.rendezvous("joined")  # start-up may take long; the collectives' timeout is short
        timeout = timedelta(seconds=spec.timeout_s)
        if spec.device == "cuda":
            import torch

            torch.cuda.set_device(spec.rank_device(rank))
        dist.init_process_group(
            "nccl" if spec.device == "cuda" else "gloo",
            store=store,
            rank=rank,
            world_size=spec.world,
            timeout=timeout,
        )
        self.gloo = dist.new_group(backend="gloo", timeout=timeout)

    # -- rank 0 -------------------------------------------------------------------------------

    @classmethod
    def start(
        cls, spec_without_port: GroupSpec, spec_path: Path, starter: RankStarter | None = None
    ) -> RankGroup:
        """Rank 0: host the rendezvous, start ranks 1..N−1 (``starter``, default local child
        processes), join them (blocks until all did, or fails naming a rank that died
        meanwhile)."""
        import torch.distributed as dist

        starter = starter or LocalRanks()
        timeout = timedelta(seconds=spec_without_port.timeout_s)
        try:
            listener = listen(starter.host, starter.port)
            store = dist.TCPStore(
                starter.host,
                listener.getsockname()[1],
                spec_without_port.world,
                True,
                timeout,
                wait_for_workers=False,
                master_listen_fd=listener.detach(),
            )
        except BaseException:
            starter.close()
            raise
        spec = GroupSpec(
            **{
                **spec_without_port.__dict__,
                "host": starter.host,
                "port": store.port,
                "own_gpu": starter.own_gpu,
            }
        )
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        spec.save(spec_path)
        monitor = _Monitor(spec, spec_path, starter)
        monitor.start()
        try:
            return cls(spec, 0, store, monitor)
        except Exception as err:
            monitor.stopping = True
            monitor.kill_all()
            starter.close()
            if isinstance(err, RankFailed):
                raise
            raise RankFailed(monitor.failure or f"the trainer group did not form: {err}") from err

    def rendezvous(self, name: str) -> None:
        """Wait until every rank got to ``name`` (start-up steps: up to ``STARTUP_S``, not the
        collectives' timeout); rank 0 fails at once when a child dies meanwhile."""
        import torch.distributed as dist

        self.store.set(f"{name}/{self.rank}", "1")
        keys = [f"{name}/{r}" for r in range(self.world)]
        deadline = time.monotonic() + max(STARTUP_S, self.spec.timeout_s)
        while True:  # polled: a store wait that times out logs a warning each time
            try:
                if self.store.check(keys):
                    return
            except dist.DistNetworkError as err:  # the store went with rank 0
                raise RankFailed(f"rank {self.rank}: lost rank 0's store: {err}") from err
            self.check()
            if time.monotonic() > deadline:
                missing = [r for r in range(self.world) if not self.store.check([keys[r]])]
                raise RankFailed(
                    f"trainer {self.spec.name!r}: ranks {missing} did not reach {name!r} "
                    f"within {STARTUP_S:g} s"
                )
            time.sleep(POLL_S)

    @property
    def failure(self) -> str | None:
        """Why the group failed (a dead rank), or None; set by the monitor thread."""
        return self._monitor.failure if self._monitor is not None else None

    def send(self, op: str, args: dict[str, Any] | None = None, shares: list[bytes] | None = None
    ) -> None:  # fmt: skip
        """Rank 0: tell every rank to run ``op``; ``shares[r]`` is rank r's payload."""
        self.check()
        self.seq += 1
        if shares is not None:
            for rank in range(1, self.world):
                self.store.set(f"cmd/{self.seq}/{rank}", shares[rank])
        header = {"op": op, "args": args or {}, "payload": shares is not None}
        self.store.set(f"cmd/{self.seq}", json.dumps(header))
        if self.seq > 2:  # every rank read it: they all took part in later collectives
            with contextlib.suppress(Exception):
                self.store.delete_key(f"cmd/{self.seq - 2}")

    def check(self) -> None:
        """Raise ``RankFailed`` if a child died."""
        if self.failure is not None:
            raise RankFailed(self.failure)

    def broken(self, wait_s: float) -> bool:
        """Whether a child died, waiting up to ``wait_s`` for the monitor to see it: a killed
        process's sockets close (failing the collective) before it can be reaped."""
        deadline = time.monotonic() + wait_s
        while self.failure is None and time.monotonic() < deadline:
            time.sleep(POLL_S)
        return self.failure is not None

    def explain(self, op: str, err: BaseException) -> str:
        """Why collective ``op`` failed: a dead rank, ranks that never took it up, or ``err``."""
        if self.failure is not None:
            return self.failure
        missing = [r for r in range(1, self.world) if self._arrived(r) < self.seq]
        if missing:
            names = ", ".join(f"rank {r}" for r in missing)
            return (
                f"trainer {self.spec.name!r}: {names} did not arrive at '{op}' (command "
                f"{self.seq}) within rank_timeout_s = {self.spec.timeout_s:g} s: {err}"
            )
        return f"trainer {self.spec.name!r}: collective '{op}' failed on rank 0: {err}"

    def _arrived(self, rank: int) -> int:
        """The last command ``rank`` took up (0: none); ``get`` alone would wait for the key."""
        key = f"at/{rank}"
        try:
            return int(self.store.get(key).decode()) if self.store.check([key]) else 0
        except Exception:
            return 0

    def stop(self) -> None:
        """Rank 0: tell the other ranks to exit and wait for them (kill after ``STOP_S``)."""
        if self.failure is None and not self.stopping:
            self.stopping = True
            if self._monitor is not None:
                self._monitor.stopping = True
            with contextlib.suppress(Exception):
                self.send("stop")
            if self._monitor is not None:  # it ends once every rank it started is gone
                self._monitor.join(STOP_S)
                if self._monitor.is_alive():
                    log.warning("trainer ranks outlived 'stop' by %g s: killing", STOP_S)
        self.abort()
        self.destroy()

    def abort(self) -> None:
        """Kill every other rank now (any thread); a collective waiting on them then fails."""
        if self._monitor is not None:
            self._monitor.stopping = True
            self._monitor.kill_all()

    def destroy(self) -> None:
        """Leave the process group; rank 0 also releases what starting the ranks took (after
        ``abort`` or ``stop``, when they are gone)."""
        import torch.distributed as dist

        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
        if self._monitor is not None:
            self._monitor.starter.close()

    # -- ranks 1..N−1 -------------------------------------------------------------------------

    @classmethod
    def join(cls, spec: GroupSpec, rank: int) -> RankGroup:
        import torch.distributed as dist

        timeout = timedelta(seconds=spec.timeout_s)
        store = dist.TCPStore(spec.host, spec.port, spec.world, False, timeout)
        return cls(spec, rank, store)

    def receive(self) -> tuple[str, dict[str, Any], bytes | None]:
        """A child: the next command (waits as long as rank 0 lives)."""
        import torch.distributed as dist

        self.seq += 1
        key = f"cmd/{self.seq}"
        while True:
            try:
                self.store.wait([key], timedelta(seconds=WAIT_S))
                break
            except dist.DistNetworkError as err:  # the store went with rank 0
                raise RankFailed(f"rank {self.rank}: lost rank 0's store: {err}") from err
            except dist.DistStoreError:
                continue  # no command yet: the trainer idles while generation runs
        header = json.loads(self.store.get(key))
        payload = None
        if header["payload"]:
            payload = self.store.get(f"{key}/{self.rank}")
            self.store.delete_key(f"{key}/{self.rank}")
        self.store.set(f"at/{self.rank}", str(self.seq))
        return header["op"], header["args"], payload


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host`` only (a ``TCPStore`` given none listens on every
    interface); ``port`` 0: the kernel picks one."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as err:
        sock.close()
        raise RankFailed(
            f"the trainer group's rendezvous cannot listen on {host}:{port}: {err}"
        ) from err
    return sock


class RankProcess(Protocol):
    """One started rank r ≥ 1 as the monitor sees it."""

    @property
    def label(self) -> str:
        """How the failure report names it ("pid 123", "Ray actor run:trainer/0:rank1")."""
        ...

    def poll(self) -> int | None:
        """Its exit code (negative: killed by that signal), or None while it runs."""
        ...

    def kill(self) -> None:
        """End it now and wait (a few seconds at most) until it is gone."""
        ...


class RankStarter(Protocol):
    """How ranks 1..N−1 start, and where rank 0's rendezvous listens so that they reach it."""

    host: str
    port: int  # 0: the kernel picks
    own_gpu: bool  # each rank sees only its own GPU (as cuda:0)

    def launch(self, spec: GroupSpec, spec_path: Path, rank: int) -> RankProcess: ...

    def close(self) -> None:
        """Release what starting ranks took (rank 0's side), after they are gone."""
        ...


class LocalRank:
    """A rank that is a child process of rank 0's monitor thread."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.pid = process.pid
        self.label = f"pid {process.pid}"

    def poll(self) -> int | None:
        return self.process.poll()

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


class LocalRanks:
    """Ranks 1..N−1 as child processes of rank 0, meeting on 127.0.0.1 (the local launcher)."""

    host = "127.0.0.1"
    port = 0
    own_gpu = False

    def launch(self, spec: GroupSpec, spec_path: Path, rank: int) -> LocalRank:
        path = spec.log_path(rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        threads = str(spec.threads)
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
        }
        argv = [sys.executable, "-m", "areal_flow.train.rank_main"]
        argv += [str(spec_path), str(rank), str(os.getpid())]
        with path.open("ab") as out:
            return LocalRank(
                subprocess.Popen(
                    argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
                )
            )

    def close(self) -> None:
        pass


def rank_starter(placement: RankPlacement | None) -> RankStarter:
    """The starter for a replica's ranks: Ray actors where the launcher placed them, else
    local child processes."""
    if placement is None:
        return LocalRanks()
    from areal_flow.runtime.ray_ranks import RayRanks

    return RayRanks(placement)


class _Monitor(threading.Thread):
    """Starts the other ranks and watches them (local children die with this thread)."""

    def __init__(self, spec: GroupSpec, spec_path: Path, starter: RankStarter) -> None:
        super().__init__(name=f"{spec.name}-ranks", daemon=True)
        self.spec = spec
        self.spec_path = spec_path
        self.starter = starter
        self.children: dict[int, RankProcess] = {}
        self.started = threading.Event()
        self.stopping = False
        self.failure: str | None = None
        self.lock = threading.RLock()  # one thread at a time polls or kills a rank's handle

    def run(self) -> None:
        try:
            for rank in range(1, self.spec.world):
                self.children[rank] = self.starter.launch(self.spec, self.spec_path, rank)
        except Exception as err:
            self.failure = f"trainer {self.spec.name!r}: starting its ranks failed: {err}"
            log.error("%s", self.failure)
            self.stopping = True
            self.kill_all()
        finally:
            self.started.set()
        while True:  # any exit before 'stop' (or abort) is a failure of the group
            alive = False
            with self.lock:
                for rank, process in list(self.children.items()):
                    code = process.poll()
                    if code is None:
                        alive = True
                    elif not self.stopping and self.failure is None:
                        self._fail(rank, process, code)
            if not alive:
                return
            time.sleep(POLL_S)

    def start(self) -> None:
        super().start()
        self.started.wait()

    def _fail(self, rank: int, process: RankProcess, code: int) -> None:
        from areal_flow.runtime.launcher import last_lines

        path = self.spec.log_path(rank)
        status = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        lines = "\n".join(last_lines(path, LOG_LINES)) or "(empty)"
        self.failure = (
            f"trainer {self.spec.name!r} rank {rank} ({process.label}) died: {status}; the "
            f"trainer group stops. Last lines of {path}:\n{lines}"
        )
        log.error("%s", self.failure)
        self.stopping = True
        self.kill_all()

    def kill_all(self) -> None:
        with self.lock:
            for process in list(self.children.values()):
                process.kill()
