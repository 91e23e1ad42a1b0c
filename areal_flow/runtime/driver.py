"""The driver: the control plane of one run.

Rules:
- It plans the run, starts every replica through a launcher, waits until all are set up, then
  says start. It holds the global policy version and the staleness gate, and answers the
  sources' admission requests.
- It watches every replica: exit codes (polled), error reports, and heartbeats. A replica that
  dies or raises is restarted when its kind is stateless (at most ``max_restarts`` times per
  replica), once every process it started is gone (its handle waits for that); otherwise the
  run stops and ``RunResult.failure`` names the node with its error or exit code and its last
  log lines. A replica silent for ``stuck_after_s`` is reported stuck and counts as failed.
  Replica processes die with the driver (``reaper.py``); the driver also pings every replica,
  so none outlives a driver that is alive but silent (hung, or on another host).
  Frames on the control socket that are not a replica's message (``messages.py``: not JSON,
  an unknown type, missing or ill-typed fields) are counted (``ignored``) and dropped;
  messages from identities that are not the run's replicas are dropped.
- With a staleness gate it also keeps the group ledger (``ledger.py``): the prompt groups that
  die with a restarted replica give their capacity back and are issued again by their source.
  A restarted replica starts with the newest weights notice and the producers already ended.
- Resumed (``resume.py``): the gate, the version and every replica's resume state come from
  the run folder's latest checkpoint and ledger.
- The run completes when every replica has finished (end-of-stream reached the sinks), or when
  a replica of an ``ends_run`` kind (the trainer) finishes. ``interrupt()`` (Ctrl-C) drains:
  sources stop, in-flight data gets ``DRAIN_S`` to land, then everything is stopped.
- Stopping never leaves orphans: replicas get 'stop', then ``STOP_GRACE_S``, then are killed.
  Meanwhile the driver still reads the metrics they report as they end, so each replica's final
  metrics reach the result, not those of its last heartbeat before the stop.
- CurveZMQ: when the prepared plan wants it (``RunPlan.wants_curve``: an address off loopback,
  or ``AREAL_FLOW_CURVE=1``), the driver makes the run's keys in ``run_dir/keys`` (a resumed
  run keeps its own) before the plan is saved, records ``curve`` in the plan, and its control
  ROUTER admits only the run's clients. Workers load the keys from their run folder; the Ray
  launcher hands them to actors on other hosts (``ray_actor``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import zmq
import zmq.asyncio

from areal_flow.graph import resolved_edges
from areal_flow.roles import SourceSpec, TrainerSpec
from areal_flow.runtime.control import (
    DRAIN_S,
    HEARTBEAT_S,
    START_TIMEOUT_S,
    STOP_GRACE_S,
    STUCK_AFTER_S,
)
from areal_flow.runtime.launcher import Handle, Launcher, last_lines, log_path
from areal_flow.runtime.ledger import LEDGER_FILE, Ledger
from areal_flow.runtime.messages import (
    Accepted,
    Admit,
    AdmitReply,
    Cancel,
    Capacity,
    Drain,
    DriverMessage,
    ErrorReport,
    Finished,
    Heartbeat,
    Hello,
    Issued,
    Loaded,
    NewVersion,
    Ping,
    Ready,
    Reissue,
    Rejected,
    Sent,
    Settled,
    Start,
    Stop,
    Took,
    VersionReport,
    WorkerMessage,
    encode,
    from_worker,
)
from areal_flow.runtime.plan import ReplicaPlan, free_tcp_address, make_plan
from areal_flow.runtime.resume import ResumePoint, resumed_gate, resumed_plan
from areal_flow.runtime.staleness import StalenessController
from areal_flow.runtime.watchdog import LoopWatchdog
from areal_flow.spec import Graph, NodeSpec
from areal_flow.transport.curve import (
    KEYS_DIR,
    RunKeys,
    apply_server,
    check_address,
    generate_run_keys,
    load_run_keys,
    stop_authenticator,
)

POLL_MS = 100
POLL_GRACE_S = 5.0  # beyond POLL_MS before wait_for gives up on a poll
MAX_MESSAGES_PER_TURN = 1000


@dataclass
class Replica:
    """What the driver knows about one replica."""

    plan: ReplicaPlan
    spec: NodeSpec
    handle: Handle
    status: str = "starting"  # starting | ready | running | finished | failed | stopped
    last_seen: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.monotonic)
    restarts: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    trace: str = ""  # the traceback the replica reported with its error
    loaded: int | None = None  # policy version a weights consumer has loaded (None: unknown)
    pid: int | None = None  # the worker's process id, from its hello (on the replica's host)
    setup_s: float | None = None  # launch → first ready: this replica's start-up

    @property
    def serves_weights(self) -> bool:
        """A weights consumer with data inputs (a generator), not a relay (the publisher)."""
        inputs = self.plan.inputs
        return any(w.weights for w in inputs) and any(not w.weights for w in inputs)

    @property
    def key(self) -> str:
        return self.plan.key


@dataclass
class Failure:
    node: str
    replica: int
    reason: str
    log_tail: list[str]
    noticed_at: float = field(default_factory=time.monotonic)  # when the driver saw it

    def __str__(self) -> str:
        tail = "\n".join(f"    {line}" for line in self.log_tail)
        return f"node '{self.node}' (replica {self.replica}) {self.reason}" + (
            f"\n  last log lines:\n{tail}" if tail else ""
        )


@dataclass
class RunResult:
    status: str  # completed | failed | interrupted
    run_dir: Path
    wall_s: float
    version: int
    failure: Failure | None
    metrics: dict[str, dict[str, float]]  # per replica key
    staleness: dict[str, float]
    restarts: dict[str, int]
    #: start-up: the driver's start (epoch seconds), each replica's launch → ready, and the
    #: driver's start → every replica ready (None if they never all were)
    started_at: float = 0.0
    setup_s: dict[str, float] = field(default_factory=dict)
    all_ready_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "completed"


def _control_message(frames: list[bytes]) -> WorkerMessage | None:
    """The message of a ROUTER receipt [identity, JSON], or None for anything else."""
    if len(frames) != 2:
        return None
    try:
        return from_worker(frames[1])
    except ValueError:  # not JSON, or not a replica's message (unknown type, bad fields)
        return None


def staleness_gate(graph: Graph) -> StalenessController | None:
    """The gate of a graph with a trainer (validation made sure its sources emit prompt
    groups); None for graphs without one. It counts groups, the trainer's unit."""
    trainer = next((n for n in graph.nodes if isinstance(n, TrainerSpec)), None)
    if trainer is None:
        return None
    return StalenessController(
        batch_groups=trainer.batch_groups,
        max_lag=graph.staleness.max_lag,
        updates_per_batch=trainer.algo.updates_per_batch,
    )


class Driver:
    """Runs one graph to completion, failure or interruption."""

    def __init__(
        self,
        graph: Graph,
        g: nx.MultiDiGraph,
        run_dir: Path,
        launcher: Launcher,
        max_restarts: int = 3,
        on_update: Callable[[Driver], None] | None = None,
        resume: ResumePoint | None = None,
        stuck_after_s: float = STUCK_AFTER_S,
    ) -> None:
        self.graph = graph
        self.g = g
        self.run_dir = run_dir
        self.launcher = launcher
        self.max_restarts = max_restarts
        self.on_update = on_update
        self.resume = resume
        self.stuck_after_s = stuck_after_s
        self.version = resume.version if resume is not None else 0
        self.gate = staleness_gate(graph)
        if self.gate is not None and resume is not None:
            self.gate = resumed_gate(resume, self.gate)
        self.ledger: Ledger | None = None
        self.weights_notice: dict[str, Any] | None = None  # the newest, for restarted replicas
        self._pinged = 0.0
        self.ignored = 0  # frames on the control socket that were not a control message
        self.replicas: dict[bytes, Replica] = {}
        self.failure: Failure | None = None
        self.stopping = False
        self.completed = False
        self._interrupted = False
        self._drain_deadline: float | None = None
        self.started = time.monotonic()
        self.started_at = time.time()
        self.all_ready_s: float | None = None

    # -- public -------------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Ctrl-C: drain and stop."""
        self._interrupted = True

    async def run(self) -> RunResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        plan = make_plan(self.graph, self.g, self.run_dir, free_tcp_address())
        if self.resume is not None:
            trainers = {n.name for n in self.graph.nodes if isinstance(n, TrainerSpec)}
            plan = resumed_plan(plan, self.resume, trainers)
        plan = self.launcher.prepare(plan)  # the addresses replicas and driver will bind
        keys = self._run_keys() if plan.wants_curve() else None
        plan = plan.model_copy(update={"curve": keys is not None})
        check_address(plan.control, keys)
        zctx = zmq.asyncio.Context()
        router = zctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        if keys is not None:
            apply_server(router, keys)
        router.bind(plan.control)
        self.router = router
        plan_path = self.run_dir / "plan.json"
        plan.save(plan_path)
        self.plan, self.plan_path = plan, plan_path
        if self.gate is not None:
            self.ledger = Ledger.for_graph(self.g, self.gate, self.run_dir / LEDGER_FILE)
            resumed = str(self.resume.checkpoint) if self.resume is not None else None
            self.ledger.write("start", version=self.version, resumed_from=resumed)
        try:
            for rp in plan.replicas:
                handle = self.launcher.start(plan, plan_path, rp)
                spec = self.graph.node(rp.node)
                self.replicas[rp.key.encode()] = Replica(rp, spec, handle)
            if self.gate is not None and any(r.serves_weights for r in self.replicas.values()):
                # Generators start on the initial model (a resumed trainer re-publishes its
                # version): until they report a load, the gate admits for version 0, never for
                # a trainer version they do not serve yet.
                self.gate.set_serving(0)
            await self._loop()
        finally:
            await self._shutdown()
            router.close(linger=0)
            stop_authenticator(zctx)
            zctx.destroy(linger=0)
            if self.ledger is not None:
                self.ledger.write("end", gate=self.gate.state_dict() if self.gate else None)
                self.ledger.close()
        return self._result()

    def _run_keys(self) -> RunKeys:
        """This run's CurveZMQ keys: made now, or a resumed run's own."""
        if self.resume is not None and (self.run_dir / KEYS_DIR).exists():
            return load_run_keys(self.run_dir)
        return generate_run_keys(self.run_dir)

    # -- the loop -----------------------------------------------------------------------------

    async def _loop(self) -> None:
        with LoopWatchdog(self.run_dir) as watchdog:
            while not self._done():
                watchdog.beat()
                await self._turn()

    async def _turn(self) -> None:
        """One turn: take what arrived (a bounded batch), then health, starts, pings, drain."""
        try:  # wait_for: the loop turns even if ZeroMQ's own poll timeout were ever lost
            ready = bool(
                await asyncio.wait_for(self.router.poll(POLL_MS), POLL_MS / 1000 + POLL_GRACE_S)
            )
        except asyncio.TimeoutError:
            ready = False
        if ready:
            # A bounded batch per turn: a flood of messages never starves health checks.
            for _ in range(MAX_MESSAGES_PER_TURN):
                if not await self.router.poll(0):
                    break
                frames = await self.router.recv_multipart()
                message = _control_message(frames)
                if message is None:
                    self.ignored += 1  # not a control message: a stranger, or garbage
                    continue
                await self._on_message(frames[0], message)
        await self._check_health()
        await self._maybe_start()
        await self._ping()
        await self._maybe_drain()
        if self.on_update is not None:
            self.on_update(self)

    def _done(self) -> bool:
        if self.failure is not None or self.completed:
            return True
        if all(r.status == "finished" for r in self.replicas.values()):
            self.completed = True
            return True
        return bool(self._drain_deadline is not None and time.monotonic() > self._drain_deadline)

    async def _on_message(self, ident: bytes, message: WorkerMessage) -> None:
        replica = self.replicas.get(ident)
        if replica is None:
            return  # not one of ours (a stale restart or a stranger): ignore
        replica.last_seen = time.monotonic()
        match message:
            case Hello():
                replica.status = "starting"
                replica.pid = message.pid
            case Ready():
                replica.status = "ready"
                if replica.setup_s is None:
                    replica.setup_s = time.monotonic() - replica.started_at
            case Heartbeat():
                replica.metrics = message.metrics
            case Admit():
                granted = self._admit(replica, message.groups)
                await self._send(ident, AdmitReply(id=message.id, granted=granted))
            case Issued() | Took() | Sent() | Cancel() | Accepted() | Rejected():
                if self.ledger is not None:
                    settled = self.ledger.handle(replica.key, replica.plan.node, message)
                    for source, groups in settled.items():
                        await self._send(source.encode(), Settled(groups=groups))
                    if isinstance(message, Rejected | Cancel):
                        await self._broadcast_capacity()
            case Loaded():
                replica.loaded = message.version
                await self._update_serving()
            case VersionReport():
                if message.notice is not None:
                    self.weights_notice = message.notice
                await self._set_version(message.version)
            case Finished():
                replica.status = "finished"
                replica.metrics = message.metrics
                if replica.spec.ends_run:
                    self.completed = True
            case ErrorReport():
                replica.error = f"raised {message.error}"
                replica.trace = message.traceback

    def _admit(self, replica: Replica, n: int) -> bool:
        if self.gate is None:
            return True
        try:
            if not self.gate.can_admit(n):
                return False
        except RuntimeError as err:  # the gate can never reopen: stop with its explanation
            self._fail(replica, f"cannot continue: {err}")
            return False
        self.gate.admit(n)
        return True

    async def _set_version(self, version: int) -> None:
        if version <= self.version:
            return
        self.version = version
        if self.gate is not None:
            self.gate.set_version(version)
        for ident, replica in self.replicas.items():
            if replica.status in ("ready", "running"):
                await self._send(ident, NewVersion(version=version))

    async def _update_serving(self) -> None:
        """The gate admits for the version every running generator has loaded."""
        if self.gate is None:
            return
        loaded = [
            r.loaded for r in self.replicas.values() if r.serves_weights and r.status == "running"
        ]
        if loaded and None not in loaded:
            before = self.gate.capacity
            self.gate.set_serving(min(v for v in loaded if v is not None))
            if self.gate.capacity > before:
                await self._broadcast_capacity()

    async def _broadcast_capacity(self) -> None:
        for ident, replica in self.replicas.items():
            if isinstance(replica.spec, SourceSpec) and replica.status == "running":
                await self._send(ident, Capacity())

    async def _maybe_start(self) -> None:
        """Start everyone once all are set up; later, start restarted replicas at once."""
        ready = [(i, r) for i, r in self.replicas.items() if r.status == "ready"]
        if not ready or self.stopping:
            return
        initial = all(r.status in ("ready", "finished") for r in self.replicas.values())
        already_running = any(r.status == "running" for r in self.replicas.values())
        if initial and self.all_ready_s is None:
            self.all_ready_s = time.monotonic() - self.started
        if initial or already_running:
            for ident, replica in ready:
                replica.status = "running"
                # A fresh run's generators start on the initial model, the current version; a
                # restarted or resumed one serves nothing until it reports a load.
                fresh = initial and self.resume is None and self.version == 0
                replica.loaded = 0 if fresh and replica.serves_weights else None
                await self._send(ident, self._start_message(replica))

    def _start_message(self, replica: Replica) -> Start:
        """Start, with what a (re)started replica must catch up on."""
        done = [r.plan.node for r in self.replicas.values() if r.status == "finished"]
        sources = {e.index: e.src for e in resolved_edges(self.g)}
        ended = {w.edge: done.count(sources[w.edge]) for w in replica.plan.inputs}
        return Start(
            version=self.version,
            ledger=self.ledger is not None,
            ended=ended,
            weights=self.weights_notice,
        )

    async def _ping(self) -> None:
        """Tell every replica the driver is alive (they stop when it falls silent)."""
        if time.monotonic() - self._pinged < HEARTBEAT_S:
            return
        self._pinged = time.monotonic()
        for ident, replica in self.replicas.items():
            if replica.status in ("starting", "ready", "running"):
                await self._send(ident, Ping())

    async def _maybe_drain(self) -> None:
        if self._interrupted and self._drain_deadline is None:
            self._drain_deadline = time.monotonic() + DRAIN_S
            for ident, replica in self.replicas.items():
                if isinstance(replica.spec, SourceSpec) or not replica.plan.inputs:
                    await self._send(ident, Drain())

    # -- health -------------------------------------------------------------------------------

    async def _check_health(self) -> None:
        now = time.monotonic()
        for replica in self.replicas.values():
            if replica.status in ("finished", "failed", "stopped"):
                continue
            code = replica.handle.poll()
            if code is not None and replica.error is None and replica.status == "finished":
                continue
            silent = now - replica.last_seen
            if code is not None:
                reason = replica.error or f"exited with code {code}"
                await self._on_failure(replica, reason)
            elif replica.error is not None:
                continue  # it reported an error and is exiting; wait for its exit code
            elif replica.status in ("ready", "running") and silent > self.stuck_after_s:
                await self._on_failure(
                    replica,
                    f"is stuck: no heartbeat for {silent:.1f} s (its process is hung or its event "
                    "loop is blocked, e.g. by blocking code in an async process())",
                )
            elif replica.status == "starting" and now - replica.started_at > START_TIMEOUT_S:
                await self._on_failure(replica, f"did not finish setup in {START_TIMEOUT_S:.0f} s")

    async def _on_failure(self, replica: Replica, reason: str) -> None:
        """Restart a stateless replica (within budget); otherwise fail the run."""
        replica.handle.kill()
        if replica.spec.stateless and replica.restarts < self.max_restarts and not self.stopping:
            replica.restarts += 1
            if self.ledger is not None:
                lost = self.ledger.lose(replica.key, replica.plan.node, reason)
                for source, groups in lost.items():
                    await self._send(source.encode(), Reissue(groups=groups))
            replica.handle = self.launcher.start(self.plan, self.plan_path, replica.plan)
            replica.status = "starting"
            replica.error = None
            replica.started_at = replica.last_seen = time.monotonic()
            return
        self._fail(replica, reason)

    def _fail(self, replica: Replica, reason: str) -> None:
        replica.status = "failed"
        if self.failure is None:
            log = log_path(self.run_dir, replica.plan.node, replica.plan.replica)
            tail = last_lines(log) or replica.trace.splitlines()[-20:]
            restarts = f" after {replica.restarts} restart(s)" if replica.restarts else ""
            self.failure = Failure(replica.plan.node, replica.plan.replica, reason + restarts, tail)

    # -- stopping -----------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        self.stopping = True
        for ident, replica in self.replicas.items():
            if replica.handle.poll() is None:
                await self._send(ident, Stop())
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline:
            await self._read_reports()
            if all(r.handle.poll() is not None for r in self.replicas.values()):
                break
            await asyncio.sleep(0.05)
        await self._read_reports()  # what the last replica sent as it ended
        for replica in self.replicas.values():
            if replica.handle.poll() is None:
                replica.handle.kill()
            if replica.status not in ("finished", "failed"):
                replica.status = "stopped"

    async def _read_reports(self) -> None:
        """While stopping: take the metrics the replicas report as they end (``Finished``, a
        last heartbeat); anything else (admissions, ledger events, versions) no longer changes
        the run, and a replica's status stays what stopping makes it."""
        while await self.router.poll(0):
            frames = await self.router.recv_multipart()
            message = _control_message(frames)
            replica = self.replicas.get(frames[0])
            if replica is not None and isinstance(message, Finished | Heartbeat):
                replica.metrics = message.metrics

    async def _send(self, ident: bytes, message: DriverMessage) -> None:
        await self.router.send_multipart([ident, encode(message)])

    def _result(self) -> RunResult:
        status = (
            "failed"
            if self.failure is not None
            else "interrupted"
            if self._interrupted
            else "completed"
        )
        return RunResult(
            status=status,
            run_dir=self.run_dir,
            wall_s=time.monotonic() - self.started,
            version=self.version,
            failure=self.failure,
            metrics={r.key: dict(r.metrics) for r in self.replicas.values()},
            staleness=self.gate.metrics() if self.gate is not None else {},
            restarts={r.key: r.restarts for r in self.replicas.values() if r.restarts},
            started_at=self.started_at,
            setup_s={r.key: r.setup_s for r in self.replicas.values() if r.setup_s is not None},
            all_ready_s=self.all_ready_s,
        )
