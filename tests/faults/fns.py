"""Functions for ``function`` nodes in fault tests (imported by worker processes)."""

from __future__ import annotations

import asyncio
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


async def two_turns_with_a_pause(llm: Any, row: Any) -> Any:
    """An episode of two turns with an inserted result and a pause between them, so a replica
    killed while it holds groups is killed mid-episode."""
    episode = llm.episode()
    episode.add_sampled(await llm.generate(episode, max_tokens=8))
    episode.add_inserted(llm.encode(" <result>1</result>"))
    await asyncio.sleep(0.3)
    episode.add_sampled(await llm.generate(episode, max_tokens=8))
    episode.metrics["turns"] = 2.0
    return episode
