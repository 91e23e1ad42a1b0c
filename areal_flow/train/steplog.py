"""The trainer's step log: one JSON line of metrics per optimizer step, and sample rollouts.

Rules:
- ``<run>/metrics/steps.jsonl`` gets one object per step (``step``, ``version``, ``time`` and
  every batch and update metric), appended and flushed at once, so a crash loses at most the
  step that was running. The run tracker (MLflow) and the run summary read this file.
- Every ``samples_every`` steps, a few rollouts of the step's batch (prompt, response, answer,
  reward, versions) go to ``<run>/samples/step_<N>.jsonl`` — what a person reads to see what
  the policy actually writes.
- Lines are self-contained JSON; readers skip a torn last line.
- A resumed run appends again from its checkpoint's step: ``lineage`` separates the final
  policy's steps from the work a resume redid.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

SAMPLE_COLUMNS = (
    "group_id",
    "level",
    "prompt",
    "response",
    "answer",
    "reward",
    "verdict",
    "metrics",
)


def steps_path(run_dir: Path) -> Path:
    return run_dir / "metrics" / "steps.jsonl"


def samples_dir(run_dir: Path) -> Path:
    return run_dir / "samples"


class StepLog:
    """Appends the trainer's per-step records under ``run_dir``."""

    def __init__(self, run_dir: Path, samples_every: int = 10, samples_per_step: int = 8) -> None:
        self.path = steps_path(run_dir)
        self.samples = samples_dir(run_dir)
        self.samples_every = samples_every
        self.samples_per_step = samples_per_step
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, "time": time.time(), **metrics}
        with self.path.open("a") as out:
            out.write(json.dumps(record) + "\n")

    def maybe_write_samples(self, step: int, batch: pa.Table | None) -> Path | None:
        """Write sample rollouts of ``batch`` when ``step`` is a sampling step (and step 1)."""
        if batch is None or not (step == 1 or step % self.samples_every == 0):
            return None
        self.samples.mkdir(parents=True, exist_ok=True)
        path = self.samples / f"step_{step:06d}.jsonl"
        columns = [c for c in (*SAMPLE_COLUMNS, "versions") if c in batch.schema.names]
        rows = batch.select(columns).slice(0, self.samples_per_step).to_pylist()
        with path.open("w") as out:
            for row in rows:
                out.write(json.dumps(row) + "\n")
        return path


def read_steps(run_dir: Path) -> list[dict[str, Any]]:
    """Every complete step record of a run, in order (a torn last line is skipped)."""
    return list(iter_jsonl(steps_path(run_dir)))


def lineage(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(kept, redone): the steps of the final policy's history, and the records a resume
    rolled back and did again. A resumed trainer restarts from its last checkpoint, so a record
    whose step is not above the previous one supersedes every earlier record from that step on.
    """
    kept: list[dict[str, Any]] = []
    redone: list[dict[str, Any]] = []
    for record in records:
        step = int(record["step"])
        while kept and int(kept[-1]["step"]) >= step:
            redone.append(kept.pop())
        kept.append(record)
    return kept, redone


def iter_jsonl(path: Path, start: int = 0) -> Iterator[dict[str, Any]]:
    """The complete JSON lines of ``path`` from byte ``start`` on."""
    if not path.exists():
        return
    with path.open("rb") as src:
        src.seek(start)
        for line in src:
            if not line.endswith(b"\n"):
                return  # still being written
            yield json.loads(line)
