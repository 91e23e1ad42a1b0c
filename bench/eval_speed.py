"""The end-of-run evaluation's speed: vLLM's automatic core binding against every core.

Usage: ``python bench/eval_speed.py [--graph graphs/math_rl.py] [--arms auto all-cores ...]
[--model smollm2]``

Each arm scores ``--model`` with the evaluation the graph's run ends with (``eval_settings``:
100 problems × 4 samples for graphs/math_rl.py, the generator's engine settings) through
``evaluate_with`` (``evaluate_models``), as ``areal-flow run`` does, one arm after the other in
this process:

- ``auto``: ``cpus`` unset, vLLM binds its OpenMP threads itself and keeps one core for its
  scheduler (``VLLM_CPU_NUM_OF_RESERVED_CPU``): on two cores the model runs on one. The
  evaluation's engine ran this way until ``engine_config`` gave it every core.
- ``all-cores``: every core of this process (the default now, ``areal_flow.evaluate``).
- ``all-cores-bf16``: the same in bfloat16 instead of the generator's float32 (faster matmuls
  on CPUs with AVX-512 BF16; scores may move a little, since the policy trained in fp32).

Printed per arm: engine start, scoring (the episodes and the verifier), the whole call, episodes
per second and pass@1; ratios against ``auto`` measured in the same run. Nothing else should
run meanwhile (``areal-flow run`` evaluates after its nodes stopped).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from areal_flow.loader import load_graph
from areal_flow.report import eval_settings, evaluate_with

ROOT = Path(__file__).resolve().parents[1]
EVERY = tuple(sorted(os.sched_getaffinity(0)))
ARMS: dict[str, dict[str, Any]] = {
    "auto": {"cpus": None},
    "all-cores": {"cpus": EVERY},
    "all-cores-bf16": {"cpus": EVERY, "dtype": "bfloat16"},
}


class StageClock:
    """Takes the time of each stage ``evaluate_models`` reports (its progress interface)."""

    def __init__(self) -> None:
        self.stages: list[tuple[str, float]] = []

    def stage(self, text: str) -> None:
        self.stages.append((text, time.perf_counter()))

    def add_total(self, n: int) -> None:
        pass

    def advance(self) -> None:
        pass


def run_arm(arm: str, model: str, settings: Any) -> dict[str, float]:
    clock = StageClock()
    began = time.perf_counter()
    result = evaluate_with(
        settings,
        [model],
        clock,  # type: ignore[arg-type]
        engine_settings={**settings.engine_settings, **ARMS[arm]},
    )[0]
    ended = time.perf_counter()
    scoring = next(t for text, t in clock.stages if text.startswith("scoring"))
    episodes = settings.problems * settings.samples
    return {
        "start_s": scoring - began,
        "scoring_s": ended - scoring,
        "total_s": ended - began,
        "episodes_per_s": episodes / (ended - scoring),
        "pass1": result.pass1["all"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graph", type=Path, default=ROOT / "graphs" / "math_rl.py")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--model", default=None, help="Model or checkpoint (the graph's).")
    args = parser.parse_args()
    settings = eval_settings(load_graph(args.graph))
    if settings is None:
        raise SystemExit(f"{args.graph} has no evaluation")
    model = args.model or settings.model
    console = Console()
    rows = {}
    for arm in args.arms:
        console.print(f"[bold]{arm}[/]: scoring {model} ...")
        rows[arm] = run_arm(arm, model, settings)
        console.print(rows[arm])
    table = Table(
        title=f"evaluation of {model}: {settings.problems} problems × {settings.samples} "
        f"samples, {len(EVERY)} cores"
    )
    for column in ("arm", "engine start s", "scoring s", "total s", "episodes/s", "pass@1"):
        table.add_column(column, justify="left" if column == "arm" else "right")
    base = rows.get("auto")
    for arm, row in rows.items():
        ratio = f" ({base['total_s'] / row['total_s']:.2f}×)" if base else ""
        table.add_row(
            arm,
            f"{row['start_s']:.1f}",
            f"{row['scoring_s']:.1f}",
            f"{row['total_s']:.1f}{ratio}",
            f"{row['episodes_per_s']:.2f}",
            f"{row['pass1']:.3f}",
        )
    console.print(table)


if __name__ == "__main__":
    main()
