"""Functions for ``function`` nodes in fault tests (imported by worker processes)."""

from __future__ import annotations

import os
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
