"""The body of one verifier worker process.

Role: receive a chunk of (task id, response, reference) over a pipe, score each with
`areal_flow.reward.scoring.score_answer` and send back its verdict fields as soon as it is done.
One answer at a time, in the process's main thread, where math-verify's ``signal.alarm`` works.
Chunks exist so the worker never idles waiting for a round trip (~0.1 ms, more than a plain
answer costs to score).

Rules:
- The parent owns the hard deadline: a worker that does not answer in time is killed and
  replaced. The worker's own defences are math-verify's alarm and an address-space limit, so a
  runaway big-number computation ends in MemoryError instead of swapping the machine.
- Messages are tuples of str/float/bool only. The worker exits when the pipe closes or it
  receives None.
- Ctrl-C belongs to the parent: workers ignore SIGINT and are shut down by the pool.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
from multiprocessing.connection import Connection
from typing import Any

from areal_flow.reward.scoring import RewardConfig, score_answer

#: A chunk is a list of Task in; one Reply per task comes out, in the same order.
Task = tuple[int, str, str]
Reply = tuple[int, float, bool, bool, str, "str | None"]


def serve(conn: Connection, config_json: str, memory_limit_mb: int | None) -> None:
    """Worker process entry point: warm up, say ready, then score until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # timeouts are counted, not logged
    if memory_limit_mb is not None:
        limit = memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    config = RewardConfig.model_validate_json(config_json)
    # The first math-verify call imports sympy and builds the LaTeX parser (~0.5 s); pay that
    # before announcing readiness so no answer's deadline includes it.
    score_answer("\\boxed{\\frac{1}{2}}", "0.5", config)
    send_json(conn, ["ready", os.getpid()])
    while True:
        try:
            chunk: list[Task] | None = recv_json(conn)
        except EOFError:
            return
        if chunk is None:
            return
        for task_id, response, reference in chunk:
            v = score_answer(response, reference, config)
            reply: Reply = (task_id, v.reward, v.correct, v.format_ok, v.reason, v.extracted)
            send_json(conn, reply)  # one reply per answer: the parent times each answer on its own


def send_json(conn: Connection, message: object) -> None:
    """Pipe messages are JSON bytes, never pickle: worker replies carry model output."""
    conn.send_bytes(json.dumps(message).encode())


def recv_json(conn: Connection) -> Any:
    return json.loads(conn.recv_bytes())
