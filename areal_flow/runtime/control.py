"""The control plane's wire format and timing constants.

Rules:
- Control messages are single-frame JSON objects with a ``type`` (never pickle). Workers talk
  through a DEALER whose identity is ``node/replica``; the driver answers on a ROUTER with
  handover on, so a restarted replica takes over its identity.
- Worker → driver: hello, ready, heartbeat (with metrics), admit (staleness gate request),
  accepted, rejected, version, finished, error. Driver → worker: start, stop, drain, version,
  admit_reply.
- Every wait has a deadline: a replica silent for ``STUCK_AFTER_S`` is reported by name.
"""

from __future__ import annotations

import json
from typing import Any

HEARTBEAT_S = 0.5  # a worker sends metrics this often
STUCK_AFTER_S = 30.0  # a running replica silent this long is reported stuck
START_TIMEOUT_S = 600.0  # setup (model loading) must finish within this
STOP_GRACE_S = 3.0  # after 'stop', a replica has this long before it is killed
DRAIN_S = 5.0  # Ctrl-C: in-flight data gets this long to reach its sinks


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def decode(frame: bytes) -> dict[str, Any]:
    message = json.loads(frame)
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ValueError("control message must be a JSON object with a 'type'")
    return message


def identity(node: str, replica: int) -> bytes:
    return f"{node}/{replica}".encode()
