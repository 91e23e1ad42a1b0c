"""A pool of reward worker processes with per-call deadlines, usable from asyncio or not.

Role: call a reward function (any ``module:name`` reference, ``areal_flow.usercode``) on many
rows in parallel without letting any call stall or kill the caller. Used by the reward nodes
(the math verifier is one such function, ``areal_flow.reward.math_reward``) and by
`areal-flow eval`.

Rules:
- Calls run in worker PROCESSES (spawned, not forked: the caller may hold ZeroMQ sockets and
  threads), so user code is isolated from the run; math-verify needs their main thread
  (``signal.alarm``). Workers load the run's graph modules first, so a function defined in a
  graph file resolves there.
- Each worker has one dispatcher thread in the caller. It sends the worker a chunk of queued
  rows (one pipe round trip costs more than scoring a plain answer) and reads one reply per
  row, waiting at most ``timeout_s`` for each. A worker that misses the deadline is killed and
  replaced; one that dies is replaced. Either way that row gets the failure reward with verdict
  ``timeout`` or ``worker_crash``; a function that raises or returns something that is not a
  reward gives ``exception`` or ``bad_return``. Every failure is counted by reason
  (``PoolStats``) and the caller never sees it as an exception.
- Oversized responses are refused in the caller (verdict ``too_long``, the failure reward), so
  megabytes never cross the pipe.
- A worker that cannot start (import error, a bad reference) is an error, raised to the caller.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import multiprocessing
import queue
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from areal_flow.reward.worker import recv_json, send_json, serve
from areal_flow.usercode import graph_modules

FAILURES = ("timeout", "worker_crash", "exception", "bad_return", "too_long")


@dataclass(frozen=True)
class RewardResult:
    """The outcome of one call: the reward, a verdict and named metrics; ``failure`` is the
    reason when the call failed (then ``reward`` is the pool's failure reward)."""

    reward: float
    verdict: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    failure: str | None = None
    message: str = ""  # what went wrong, for failures


class RewardPoolError(RuntimeError):
    """The pool cannot score: a worker failed to start, or the pool is closed."""


@dataclass
class PoolStats:
    """Counters since the pool started: rows scored, failures by reason, workers replaced."""

    scored: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    restarts: int = 0


@dataclass
class _Task:
    task_id: int
    kwargs: dict[str, Any]
    future: concurrent.futures.Future[RewardResult]


class _Worker:
    """One live worker process and the caller's end of its pipe."""

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn

    def stop(self, grace_s: float) -> None:
        if self.process.is_alive():
            with contextlib.suppress(BrokenPipeError, OSError):  # already gone: nothing to tell
                send_json(self.conn, None)
            self.process.join(grace_s)
        self.kill()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()


class RewardPool:
    """``workers`` processes calling ``fn(**row, **params)``; each call gets ``timeout_s``.

    Use as a context manager (or call `start` / `close`). `score` is the asyncio API, `score_sync`
    the blocking one; both return results in input order.
    """

    def __init__(
        self,
        fn: str,
        params: Mapping[str, Any] | None = None,
        *,
        workers: int = 2,
        timeout_s: float = 5.0,
        failure_reward: float = 0.0,
        max_response_chars: int = 32_768,
        warmup: str | None = None,
        memory_limit_mb: int | None = 2048,
        start_timeout_s: float = 120.0,
        max_chunk: int = 32,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.fn = fn
        self.params_json = json.dumps(dict(params or {}))
        self.failure_reward = float(failure_reward)
        self.max_response_chars = max_response_chars
        self.warmup = warmup
        self.modules = graph_modules([fn, *([warmup] if warmup else [])])
        self.workers = workers
        self.timeout_s = timeout_s
        self.memory_limit_mb = memory_limit_mb
        self.start_timeout_s = start_timeout_s
        self.max_chunk = max_chunk
        self._ctx = multiprocessing.get_context("spawn")
        self._tasks: queue.Queue[_Task | None] = queue.Queue()
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._stats = PoolStats()
        self._threads: list[threading.Thread] = []
        self._workers: list[_Worker] = []
        self._started = False
        self._closed = False
        self._broken: RewardPoolError | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> RewardPool:
        """Start every worker and wait until all are ready (RewardPoolError if one is not)."""
        if self._started:
            return self
        self._started = True
        launched = [self._launch() for _ in range(self.workers)]
        self._workers = [self._await_ready(*pair) for pair in launched]
        for slot in range(self.workers):
            thread = threading.Thread(
                target=self._dispatch, args=(slot,), name=f"reward-{slot}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def close(self) -> None:
        """Finish the queued answers, then stop the workers (answers left by a broken pool are
        cancelled)."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._tasks.put(None)
        for thread in self._threads:
            thread.join()
        while not self._tasks.empty():
            task = self._tasks.get_nowait()
            if task is not None:
                task.future.cancel()

    def __enter__(self) -> RewardPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- scoring ---------------------------------------------------------------------------

    def submit(self, row: Mapping[str, Any]) -> concurrent.futures.Future[RewardResult]:
        """Queue one call with keyword arguments ``row`` (JSON values); the future resolves to
        its result."""
        if not self._started or self._closed:
            raise RewardPoolError("the reward pool is not running: use `with RewardPool(...)`")
        if self._broken is not None:
            raise self._broken
        future: concurrent.futures.Future[RewardResult] = concurrent.futures.Future()
        response = row.get("response", "")
        if isinstance(response, str) and len(response) > self.max_response_chars:
            message = f"{len(response)} characters > max_response_chars {self.max_response_chars}"
            future.set_result(self._failed("too_long", message))
            return future
        self._tasks.put(_Task(next(self._ids), dict(row), future))
        return future

    def score_sync(self, rows: Iterable[Mapping[str, Any]]) -> list[RewardResult]:
        """Results for ``rows``, in order; blocks until all are scored."""
        futures = [self.submit(row) for row in rows]
        return [f.result() for f in futures]

    async def score(self, rows: Iterable[Mapping[str, Any]]) -> list[RewardResult]:
        """Results for ``rows``, in order, without blocking the event loop."""
        futures = [self.submit(row) for row in rows]
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))

    def stats(self) -> PoolStats:
        """A snapshot of the counters."""
        with self._lock:
            return PoolStats(self._stats.scored, dict(self._stats.failures), self._stats.restarts)

    def worker_pids(self) -> list[int | None]:
        """The process id of each worker slot's current process (for monitoring and tests)."""
        return [w.process.pid for w in self._workers]

    # --- internals -------------------------------------------------------------------------

    def _launch(self) -> tuple[BaseProcess, Connection]:
        parent_end, child_end = self._ctx.Pipe(duplex=True)
        args = (
            child_end,
            self.fn,
            self.params_json,
            self.modules,
            self.warmup,
            self.memory_limit_mb,
        )
        process = self._ctx.Process(target=serve, args=args, name="reward-worker", daemon=True)
        process.start()
        child_end.close()  # so the parent sees EOF when the child dies
        return process, parent_end

    def _await_ready(self, process: BaseProcess, conn: Connection) -> _Worker:
        worker = _Worker(process, conn)
        try:
            ok = conn.poll(self.start_timeout_s)
            hello: Any = recv_json(conn) if ok else None
        except EOFError:
            hello = None
        if not (isinstance(hello, list) and hello[:1] == ["ready"]):
            code = process.exitcode
            worker.kill()
            raise RewardPoolError(
                f"a reward worker for {self.fn} did not start within "
                f"{self.start_timeout_s:.0f} s (exit code {code}): the function or its module "
                f"cannot be loaded; try `python -c 'from areal_flow.usercode import resolve; "
                f'resolve("{self.fn}")\'` to see why'
            )
        return worker

    def _dispatch(self, slot: int) -> None:
        """One worker's feeding loop: runs in a caller thread until `close`."""
        while True:
            chunk = self._next_chunk()
            if chunk is None:
                self._workers[slot].stop(grace_s=2.0)
                return
            live = [task for task in chunk if task.future.set_running_or_notify_cancel()]
            try:
                self._serve(slot, live)
            except RewardPoolError as error:
                self._broken = error
                for task in live:
                    if not task.future.done():
                        task.future.set_exception(error)
                self._fail_pending(error)
                return

    def _next_chunk(self) -> list[_Task] | None:
        """Up to ``max_chunk`` queued tasks, shared fairly between slots; None means stop."""
        first = self._tasks.get()
        if first is None:
            return None
        chunk = [first]
        wanted = min(self.max_chunk, 1 + self._tasks.qsize() // self.workers)
        while len(chunk) < wanted:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                break
            if task is None:
                self._tasks.put(None)  # stop after this chunk
                break
            chunk.append(task)
        return chunk

    def _serve(self, slot: int, tasks: list[_Task]) -> None:
        """Resolve every task of a chunk. The worker streams one reply per row, so each call gets
        its own deadline; the one that hangs or kills the worker gets the failure reward and the
        rest of the chunk goes to the replacement worker."""
        while tasks:
            done, failure = self._exchange(self._workers[slot], tasks)
            if failure is None:
                return
            message = f"no answer within {self.timeout_s:g} s" if failure == "timeout" else ""
            tasks[done].future.set_result(self._failed(failure, message or "the worker died"))
            self._replace(slot)
            tasks = tasks[done + 1 :]

    def _exchange(self, worker: _Worker, tasks: list[_Task]) -> tuple[int, str | None]:
        """Send a chunk and resolve its rows as replies stream in, each within ``timeout_s``.

        Returns how many were resolved and, if the worker failed on the next one, why.
        """
        done = 0
        try:
            send_json(worker.conn, [(t.task_id, t.kwargs) for t in tasks])
            for task in tasks:
                if not worker.conn.poll(self.timeout_s):
                    return done, "timeout"
                reply = recv_json(worker.conn)
                if reply[0] != task.task_id:
                    raise RewardPoolError("a reward worker answered out of order; this is a bug")
                task.future.set_result(self._result(reply[1:]))
                done += 1
        except (EOFError, BrokenPipeError, ConnectionResetError):
            return done, "worker_crash"
        return done, None

    def _result(self, reply: list[Any]) -> RewardResult:
        if reply[0] == "ok":
            _, reward, verdict, metrics = reply
            with self._lock:
                self._stats.scored += 1
            return RewardResult(float(reward), verdict, dict(metrics))
        _, reason, message = reply
        return self._failed(reason, message)

    def _failed(self, reason: str, message: str) -> RewardResult:
        with self._lock:
            self._stats.scored += 1
            self._stats.failures[reason] = self._stats.failures.get(reason, 0) + 1
        return RewardResult(self.failure_reward, reason, {}, reason, message)

    def _replace(self, slot: int) -> None:
        self._workers[slot].kill()
        self._workers[slot] = self._await_ready(*self._launch())
        with self._lock:
            self._stats.restarts += 1

    def _fail_pending(self, error: RewardPoolError) -> None:
        """A slot whose worker cannot be replaced fails every queued answer instead of hanging."""
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                return
            if task is None:
                self._tasks.put(None)  # leave the stop signal for another slot
                return
            if task.future.set_running_or_notify_cancel():
                task.future.set_exception(error)
