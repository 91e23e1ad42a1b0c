"""The control plane's sockets, identities and timing constants (its messages: ``messages.py``).

Rules:
- Control messages are single JSON frames of the typed models in ``messages.py``, whose two
  unions are the list of messages (never pickle). Workers talk through a DEALER whose
  identity is ``node/replica``; the driver answers on a ROUTER with handover on, so a
  restarted replica takes over its identity.
- Every wait has a deadline or a liveness check: a running replica silent for
  ``STUCK_AFTER_S`` is reported stuck by name (its event loop is blocked, or it hangs); a
  replica whose driver is silent for ``DRIVER_SILENT_S`` stops.
"""

from __future__ import annotations

import os

HEARTBEAT_S = 0.5  # a worker sends metrics this often; the driver pings workers as often
# A worker whose driver is silent this long stops (the environment variable shortens it in tests).
DRIVER_SILENT_S = float(os.environ.get("AREAL_FLOW_DRIVER_SILENT_S", "60"))
STUCK_AFTER_S = 30.0  # a running replica silent this long is reported stuck
START_TIMEOUT_S = 600.0  # setup (model loading) must finish within this
STOP_GRACE_S = 3.0  # after 'stop', a replica has this long before it is killed
DRAIN_S = 5.0  # Ctrl-C: in-flight data gets this long to reach its sinks


def identity(node: str, replica: int) -> bytes:
    return f"{node}/{replica}".encode()
