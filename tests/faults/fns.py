"""Functions for ``function`` nodes in fault tests (imported by worker processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pyarrow as pa


def block_event_loop(batch: pa.RecordBatch) -> Coroutine[Any, Any, pa.RecordBatch]:
    """A process() whose coroutine blocks the replica's event loop (a blocking call in async
    code): heartbeats stop. Writes when it blocked (CLOCK_MONOTONIC, shared by processes)."""

    async def hog() -> pa.RecordBatch:
        marker = Path(os.environ["AREAL_FLOW_TEST_MARKER"])
        marker.write_text(str(time.monotonic()))
        time.sleep(3600)
        return batch

    return hog()


FAMILY = Path(__file__).with_name("family.py")
FAMILY_ROLES = ("stubborn", "grandchild", "own-session", "daemon")
_family: list[subprocess.Popen[bytes]] = []


def spawn_family(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Passes batches on; before the first one, the replica starts the processes of
    ``family.py`` (once per process), all ignoring SIGTERM: one with a grandchild, one in a
    session of its own, and a double-forked daemon."""
    if not _family:
        for role, own_session in (("stubborn", False), ("own-session", True), ("forker", False)):
            command = [sys.executable, str(FAMILY), role]
            _family.append(subprocess.Popen(command, start_new_session=own_session))
    return batch
