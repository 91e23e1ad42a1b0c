"""Functions used by ``function`` nodes in runtime tests (imported by worker processes)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc


def double(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Adds ``doubled = 2 * id``."""
    return batch.append_column("doubled", pc.multiply(batch.column("id"), 2))


def tag_pid(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Adds the worker's pid, to see which replica handled a batch."""
    return batch.append_column("pid", pa.array([os.getpid()] * batch.num_rows, pa.int64()))


def tag_affinity(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Adds how many cores this process may use and its OpenMP thread count."""
    n = batch.num_rows
    batch = batch.append_column("cores", pa.array([len(os.sched_getaffinity(0))] * n))
    return batch.append_column("omp_threads", pa.array([os.environ.get("OMP_NUM_THREADS")] * n))


def drop_odd(batch: pa.RecordBatch) -> pa.RecordBatch | None:
    """Keeps even ids only; None when nothing is left."""
    kept = batch.filter(pc.equal(pc.bit_wise_and(batch.column("id"), 1), 0))
    return kept if kept.num_rows else None


def explode_at_7(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Raises on the batch holding id 7."""
    if 7 in batch.column("id").to_pylist():
        raise ValueError("id 7 is cursed")
    return batch


def explode_always(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Raises on every batch: restarts cannot help."""
    raise RuntimeError(f"cannot handle ids {batch.column('id').to_pylist()}")


def crash_once(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Kills its own process (like a segfault) the first time it sees id 50 in a run folder."""
    marker = Path(os.environ.get("AREAL_FLOW_TEST_MARKER", "/nonexistent"))
    if 50 in batch.column("id").to_pylist() and not marker.exists():
        marker.write_text("crashed")
        os._exit(9)
    return batch
