"""The run folder as the web view reads it: curves, held-out points, sample rollouts, logs.

Rules:
- Read by the server thread, never by the driver: the driver's loop only hands over memory.
- ``metrics/steps.jsonl`` and ``metrics/eval.jsonl`` are read incrementally (from the byte
  where the last read stopped; a torn last line waits for the next read), so a long run costs
  the same per refresh as a short one. Curves keep the last ``MAX_POINTS`` points.
- Every curve point carries the step and the wall time (seconds since the run's first record),
  so the page can plot against either.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from areal_flow.runtime.launcher import last_lines
from areal_flow.train.steplog import samples_dir, steps_path

MAX_POINTS = 2000
#: Step-log keys drawn as curves (those present): reward, accuracy, loss, throughput, lag.
CURVES = (
    "reward_mean",
    "reward/correct",
    "reward/format_ok",
    "loss",
    "tokens_per_s",
    "lag_mean",
    "entropy",
)
EVAL_FILE = "eval.jsonl"


def eval_path(run_dir: Path) -> Path:
    """Held-out points scored during training (``areal_flow.nodes.evaluator``)."""
    return run_dir / "metrics" / EVAL_FILE


class JsonlTail:
    """The complete JSON lines appended to a file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1  # a torn last line is read next time, whole
        self.offset += end
        records = []
        for line in data[:end].splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records


class RunFiles:
    """Curves, held-out points and samples of one run folder, refreshed on ``refresh()``."""

    def __init__(self, run_dir: Path, t0: float | None = None) -> None:
        self.run_dir = run_dir
        self._steps = JsonlTail(steps_path(run_dir))
        self._evals = JsonlTail(eval_path(run_dir))
        self.t0 = t0  # wall clock of the run's start (default: its first record)
        self.curves: dict[str, list[list[float]]] = {}  # name → [step, wall_s, value]
        self.evals: list[dict[str, Any]] = []
        self.samples: dict[str, Any] = {}
        self._samples_name = ""

    def refresh(self) -> bool:
        """Read what is new; True when anything changed."""
        steps, evals = self._steps.read(), self._evals.read()
        for record in steps:
            self._add_step(record)
        for record in evals:
            self.evals.append(record)
        del self.evals[:-MAX_POINTS]
        return bool(steps or evals) | self._refresh_samples()

    def _wall(self, record: dict[str, Any]) -> float:
        stamp = float(record.get("time", 0.0))
        if self.t0 is None:
            self.t0 = stamp
        return round(stamp - self.t0, 3)

    def _add_step(self, record: dict[str, Any]) -> None:
        step, wall = int(record.get("step", 0)), self._wall(record)
        for key in CURVES:
            value = record.get(key)
            if isinstance(value, int | float):
                points = self.curves.setdefault(key, [])
                points.append([step, wall, float(value)])
                del points[:-MAX_POINTS]

    def _refresh_samples(self) -> bool:
        folder = samples_dir(self.run_dir)
        files = sorted(folder.glob("step_*.jsonl")) if folder.is_dir() else []
        if not files or files[-1].name == self._samples_name:
            return False
        rows = JsonlTail(files[-1]).read()[:4]
        self._samples_name = files[-1].name
        self.samples = {
            "step": int(files[-1].stem.removeprefix("step_")),
            "rows": [
                {
                    "prompt": str(r.get("prompt", ""))[-160:],
                    "response": str(r.get("response", ""))[:400],
                    "answer": str(r.get("answer", "")),
                    "reward": r.get("reward"),
                }
                for r in rows
            ],
        }
        return True

    def eval_points(self) -> list[dict[str, Any]]:
        """Held-out points with their wall time on the curves' clock."""
        return [{**e, "wall_s": self._wall(e)} for e in self.evals]

    def view(self) -> dict[str, Any]:
        return {"curves": self.curves, "evals": self.eval_points(), "samples": self.samples}


def node_logs(run_dir: Path, node: str, replicas: int, count: int = 30) -> dict[str, list[str]]:
    """The last ``count`` log lines of each replica of ``node``."""
    folder = run_dir / "logs"
    return {f"{node}/{r}": last_lines(folder / f"{node}.{r}.log", count) for r in range(replicas)}
