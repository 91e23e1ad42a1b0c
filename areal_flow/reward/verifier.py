"""A pool of verifier worker processes with per-answer deadlines, usable from asyncio or not.

Role: score (response, reference) pairs in parallel without letting any answer stall or kill the
caller. Used by the math verifier node (async) and by `areal-flow eval` (sync).

Rules:
- Verification runs in worker PROCESSES (spawned, not forked: the caller may hold ZeroMQ
  sockets and threads). math-verify relies on ``signal.alarm``, which threads cannot use.
- Each worker has one dispatcher thread in the caller. It sends the worker a chunk of queued
  answers (one pipe round trip costs more than scoring a plain answer) and reads one reply per
  answer, waiting at most ``timeout_s`` for each. A worker that misses the deadline is killed and
  replaced; one that dies is replaced. Either way that answer gets a "wrong" verdict with reason
  ``timeout`` or ``worker_crash``, is counted, and the rest of its chunk goes to the replacement;
  the caller never sees the failure as an exception.
- Oversized responses are rejected in the caller (reason ``too_long``) so megabytes never cross
  the pipe.
- A worker that cannot start (import error, bad config) is an error, raised to the caller.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import multiprocessing
import queue
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from areal_flow.reward.scoring import Reason, RewardConfig, Verdict, make_verdict
from areal_flow.reward.worker import recv_json, send_json, serve


class VerifierError(RuntimeError):
    """The pool cannot score: a worker failed to start, or the pool is closed."""


@dataclass
class PoolStats:
    """Counters since the pool started: answers scored, verdicts by reason, workers replaced."""

    scored: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    restarts: int = 0


@dataclass
class _Task:
    task_id: int
    response: str
    reference: str
    future: concurrent.futures.Future[Verdict]


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


class VerifierPool:
    """``workers`` processes scoring answers with ``config``; each answer gets ``timeout_s``.

    Use as a context manager (or call `start` / `close`). `score` is the asyncio API, `score_sync`
    the blocking one; both return verdicts in input order.
    """

    def __init__(
        self,
        config: RewardConfig | None = None,
        *,
        workers: int = 2,
        timeout_s: float = 5.0,
        memory_limit_mb: int | None = 2048,
        start_timeout_s: float = 120.0,
        max_chunk: int = 32,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.config = config if config is not None else RewardConfig()
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
        self._broken: VerifierError | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> VerifierPool:
        """Start every worker and wait until all are ready (raises VerifierError if one is not)."""
        if self._started:
            return self
        self._started = True
        launched = [self._launch() for _ in range(self.workers)]
        self._workers = [self._await_ready(*pair) for pair in launched]
        for slot in range(self.workers):
            thread = threading.Thread(
                target=self._dispatch, args=(slot,), name=f"verifier-{slot}", daemon=True
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

    def __enter__(self) -> VerifierPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- scoring ---------------------------------------------------------------------------

    def submit(self, response: str, reference: str) -> concurrent.futures.Future[Verdict]:
        """Queue one answer; the future resolves to its verdict."""
        if not self._started or self._closed:
            raise VerifierError("the verifier pool is not running: use `with VerifierPool(...)`")
        if self._broken is not None:
            raise self._broken
        future: concurrent.futures.Future[Verdict] = concurrent.futures.Future()
        if len(response) > self.config.max_response_chars:
            future.set_result(self._record(make_verdict(self.config, "too_long", False, None)))
            return future
        self._tasks.put(_Task(next(self._ids), response, reference, future))
        return future

    def score_sync(self, pairs: Iterable[tuple[str, str]]) -> list[Verdict]:
        """Verdicts for (response, reference) pairs, in order; blocks until all are scored."""
        futures = [self.submit(response, reference) for response, reference in pairs]
        return [f.result() for f in futures]

    async def score(self, pairs: Iterable[tuple[str, str]]) -> list[Verdict]:
        """Verdicts for (response, reference) pairs, in order, without blocking the event loop."""
        futures = [self.submit(response, reference) for response, reference in pairs]
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))

    def stats(self) -> PoolStats:
        """A snapshot of the counters."""
        with self._lock:
            return PoolStats(self._stats.scored, dict(self._stats.by_reason), self._stats.restarts)

    def worker_pids(self) -> list[int | None]:
        """The process id of each worker slot's current process (for monitoring and tests)."""
        return [w.process.pid for w in self._workers]

    # --- internals -------------------------------------------------------------------------

    def _launch(self) -> tuple[BaseProcess, Connection]:
        parent_end, child_end = self._ctx.Pipe(duplex=True)
        args = (child_end, self.config.model_dump_json(), self.memory_limit_mb)
        process = self._ctx.Process(target=serve, args=args, name="verifier-worker", daemon=True)
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
            raise VerifierError(
                f"a verifier worker did not start within {self.start_timeout_s:.0f} s "
                f"(exit code {code}); run `python -c 'import math_verify'` to see why"
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
            except VerifierError as error:
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
        """Resolve every task of a chunk. The worker streams one reply per answer, so each answer
        gets its own deadline; the one that hangs or kills the worker gets the failure verdict
        and the rest of the chunk goes to the replacement worker."""
        while tasks:
            done, failure = self._exchange(self._workers[slot], tasks)
            if failure is None:
                return
            culprit = tasks[done]
            culprit.future.set_result(self._record(make_verdict(self.config, failure, False, None)))
            self._replace(slot)
            tasks = tasks[done + 1 :]

    def _exchange(self, worker: _Worker, tasks: list[_Task]) -> tuple[int, Reason | None]:
        """Send a chunk and resolve its answers as replies stream in, each within ``timeout_s``.

        Returns how many were resolved and, if the worker failed on the next one, why.
        """
        done = 0
        try:
            send_json(worker.conn, [(t.task_id, t.response, t.reference) for t in tasks])
            for task in tasks:
                if not worker.conn.poll(self.timeout_s):
                    return done, "timeout"
                reply = recv_json(worker.conn)
                if reply[0] != task.task_id:
                    raise VerifierError("a verifier worker answered out of order; this is a bug")
                task.future.set_result(self._record(Verdict(*reply[1:])))
                done += 1
        except (EOFError, BrokenPipeError, ConnectionResetError):
            return done, "worker_crash"
        return done, None

    def _replace(self, slot: int) -> None:
        self._workers[slot].kill()
        self._workers[slot] = self._await_ready(*self._launch())
        with self._lock:
            self._stats.restarts += 1

    def _record(self, verdict: Verdict) -> Verdict:
        with self._lock:
            self._stats.scored += 1
            reasons = self._stats.by_reason
            reasons[verdict.reason] = reasons.get(verdict.reason, 0) + 1
        return verdict

    def _fail_pending(self, error: VerifierError) -> None:
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
