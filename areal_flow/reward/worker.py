"""The body of one reward worker process: call the reward function on each row it is sent.

Role: receive a chunk of (task id, keyword arguments) over a pipe, call the reward function
(``areal_flow.usercode`` reference) with them and the pool's fixed ``params``, and send back
each outcome as soon as it is known. One call at a time, in the process's main thread (where
``signal.alarm``, which math-verify uses, works).

Rules:
- The parent owns the hard deadline: a worker that does not answer in time is killed and
  replaced. The worker's own defence is an address-space limit, so a runaway computation ends
  in MemoryError instead of swapping the machine.
- The function gets the row and the pool's ``params`` as keyword arguments (``params`` win a
  clash). A return value becomes (reward, verdict, metrics): a number is the reward; a dict needs a
  finite number under ``reward``, may give a ``verdict`` string, and every other key is a
  named metric (a number or a bool). Anything else is the failure ``bad_return``; an exception
  is the failure ``exception``. Failures are replies, never a dead worker.
- Messages are JSON, never pickle (rows carry model output). The worker exits when the pipe
  closes or it receives None. Ctrl-C belongs to the parent: workers ignore SIGINT.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import signal
from multiprocessing.connection import Connection
from numbers import Real
from typing import Any

from areal_flow.usercode import load_graph_modules, resolve

#: A chunk is a list of Task in; one reply per task comes out, in the same order:
#: [id, "ok", reward, verdict, metrics] or [id, "fail", reason, message].
Task = tuple[int, dict[str, Any]]


class BadReturn(ValueError):
    """A reward function returned something that is not a reward."""


def serve(
    conn: Connection,
    fn: str,
    params_json: str,
    modules: dict[str, str],
    warmup: str | None,
    memory_limit_mb: int | None,
) -> None:
    """Worker process entry point: load the function, warm up, say ready, then score."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # timeouts are counted, not logged
    if memory_limit_mb is not None:
        limit = memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    load_graph_modules(modules)
    function = resolve(fn)
    params = json.loads(params_json)
    if warmup is not None:  # slow first calls (imports) happen before any deadline runs
        resolve(warmup)()
    send_json(conn, ["ready", os.getpid()])
    while True:
        try:
            chunk: list[Task] | None = recv_json(conn)
        except EOFError:
            return
        if chunk is None:
            return
        for task_id, kwargs in chunk:
            send_json(conn, [task_id, *call(function, {**kwargs, **params})])


def call(function: Any, kwargs: dict[str, Any]) -> list[Any]:
    """["ok", reward, verdict, metrics] or ["fail", reason, message] for one call."""
    try:
        value = function(**kwargs)
    except Exception as err:  # user code: every error is a counted verdict, never a crash
        return ["fail", "exception", f"{type(err).__name__}: {str(err)[:300]}"]
    try:
        return ["ok", *normalise(value)]
    except BadReturn as err:
        return ["fail", "bad_return", str(err)]


def normalise(value: Any) -> tuple[float, str, dict[str, float]]:
    """(reward, verdict, metrics) from what a reward function returned (module rules)."""
    if isinstance(value, dict):
        if "reward" not in value:
            raise BadReturn(f"a dict without 'reward' (keys: {sorted(value)[:8]})")
        reward = _number("reward", value["reward"])
        verdict = value.get("verdict", "")
        if not isinstance(verdict, str):
            raise BadReturn(f"'verdict' must be a string, got {type(verdict).__name__}")
        metrics = {
            str(k): _number(str(k), v) for k, v in value.items() if k not in ("reward", "verdict")
        }
        return reward, verdict, metrics
    return _number("reward", value), "", {}


def _number(name: str, value: Any) -> float:
    if not isinstance(value, Real):  # bool is Real: True/False count as 1/0
        raise BadReturn(f"{name!r} must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise BadReturn(f"{name!r} is {number}, not a finite number")
    return number


def send_json(conn: Connection, message: object) -> None:
    """Pipe messages are JSON bytes, never pickle: worker replies carry model output."""
    conn.send_bytes(json.dumps(message).encode())


def recv_json(conn: Connection) -> Any:
    return json.loads(conn.recv_bytes())
