"""The control plane's wire format and timing constants.

Rules:
- Control messages are single-frame JSON objects with a ``type`` (never pickle). Workers talk
  through a DEALER whose identity is ``node/replica``; the driver answers on a ROUTER with
  handover on, so a restarted replica takes over its identity.
- Worker → driver: hello, ready, heartbeat (with metrics), admit (staleness gate request),
  cancel (admitted, not sent), issued/took/sent (prompt groups, for the ledger), accepted,
  rejected, version (with the weights notice), finished, error. Driver → worker: start (version,
  ledger on, producers already ended, newest weights notice), stop, drain, version, capacity,
  admit_reply, reissue/settled (to gated sources), ping.
- Every wait has a deadline or a liveness check: a running replica silent for
  ``STUCK_AFTER_S`` is reported stuck by name (its event loop is blocked, or it hangs); a
  replica whose driver is silent for ``DRIVER_SILENT_S`` stops.
"""

from __future__ import annotations

import json
import os
from typing import Any

HEARTBEAT_S = 0.5  # a worker sends metrics this often; the driver pings workers as often
# A worker whose driver is silent this long stops (the environment variable shortens it in tests).
DRIVER_SILENT_S = float(os.environ.get("AREAL_FLOW_DRIVER_SILENT_S", "60"))
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
