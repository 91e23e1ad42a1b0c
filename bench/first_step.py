"""Time to the main job's first optimizer step, with set-up apart (the default) and without.

Usage: ``python bench/first_step.py [--rounds 3] [--set KEY=VALUE ...] [--out DIR]``

Each run is ``areal-flow run graphs/math_rl.py`` through the real CLI, stopped after its first
optimizer step (``nodes.trainer.steps=1``, no evaluation, no MLflow), on a machine that has run
the graph before (model converted, engine caches warm). Two arms, alternating, ``--rounds``
runs each:

- ``apart``: the default. While the graph sets up, the nodes without cores of their own and the
  lending trainer stay off the generator's core (``runtime.plan.setup_apart``);
- ``together``: ``AREAL_FLOW_SETUP_APART=0``, every process sets up where it will run.

Printed per run, in seconds from the command's launch: the generator's set-up, all nodes ready,
the first prompt issued, the first batch complete (the ``batch_groups``-th accepted group: how
long the generator took to produce a trainable batch, which depends on how many of the base
model's groups the filter drops), and the first optimizer step; then each arm's median and the
ratio of medians (together / apart). Run the machine quiet: every other process slows set-up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GRAPH = ROOT / "graphs" / "math_rl.py"
ARMS = {"apart": {}, "together": {"AREAL_FLOW_SETUP_APART": "0"}}
RUN_SETTINGS = ["nodes.trainer.steps=1", "evaluation=null", "tracking.enabled=false"]
COLUMNS = ("gen set-up", "all ready", "first prompt", "first batch", "first step")


def one_run(arm: str, index: int, args: argparse.Namespace) -> dict[str, float]:
    """One run of the graph in ``arm``; its start-up marks in seconds from launch."""
    run_dir = args.out / f"{arm}-{index}"
    shutil.rmtree(run_dir, ignore_errors=True)
    sets = [*args.set, *RUN_SETTINGS]
    command = [sys.executable, "-m", "areal_flow.cli", "run", str(GRAPH), "-q", "--no-web"]
    command += ["--run-dir", str(run_dir)] + [a for s in sets for a in ("--set", s)]
    env = {**os.environ, **ARMS[arm]}
    log = args.out / f"{arm}-{index}.log"
    launched = time.time()
    with log.open("w") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    if code.returncode != 0:
        raise SystemExit(f"{arm} run {index} failed (exit {code.returncode}); see {log}")
    marks = startup_marks(run_dir, launched)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # ~1.5 GB each, unused
    return marks


def startup_marks(run_dir: Path, launched: float) -> dict[str, float]:
    """The run's start-up marks (``COLUMNS``) from its summary and ledger, in seconds from
    ``launched`` (the summary counts from the command's own start, a little later)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    startup = summary["startup_s"]
    graph = json.loads((run_dir / "graph.json").read_text())
    trainer = next(n for n in graph["nodes"] if n["kind"] == "trainer")
    ledger = [json.loads(line) for line in (run_dir / "ledger.jsonl").open()]
    issued = [r["t"] for r in ledger if r["e"] == "issued"]
    accepted = sorted(r["t"] for r in ledger if r["e"] == "accepted")
    batch = accepted[trainer["batch_groups"] - 1]
    driver = next(r["t"] for r in ledger if r["e"] == "start") - launched
    shift = driver - startup["command → driver"]  # the command's start, from ``launched``
    return {
        "gen set-up": driver + startup["setup/gen"],
        "all ready": shift + startup["all nodes ready"],
        "first prompt": min(issued) - launched,
        "first batch": batch - launched,
        "first step": shift + startup["first optimizer step"],
    }


def report(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Print every run and each arm's medians; returns the medians."""
    print(f"{'arm':<10}" + "".join(f"{c:>14}" for c in COLUMNS))
    medians = {}
    for arm, marks in runs.items():
        for m in marks:
            print(f"{arm:<10}" + "".join(f"{m[c]:>14.1f}" for c in COLUMNS))
        medians[arm] = {c: statistics.median(m[c] for m in marks) for c in COLUMNS}
    for arm, med in medians.items():
        print(f"{arm + ' med':<10}" + "".join(f"{med[c]:>14.1f}" for c in COLUMNS))
    ratio = {c: medians["together"][c] / medians["apart"][c] for c in COLUMNS}
    print(f"{'together/apart':<10}" + "".join(f"{ratio[c]:>13.2f}x" for c in COLUMNS))
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="Runs per arm.")
    parser.add_argument("--set", action="append", default=[], help="Graph override KEY=VALUE.")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "first_step")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    for index in range(args.rounds):
        for arm in ARMS:  # alternating: a drift of the machine hits both arms alike
            runs[arm].append(one_run(arm, index, args))
            m = runs[arm][-1]
            print(f"  {arm} {index}: " + ", ".join(f"{c} {m[c]:.1f} s" for c in COLUMNS))
    medians = report(runs)
    (args.out / "first_step.json").write_text(json.dumps({"runs": runs, "medians": medians}))


if __name__ == "__main__":
    main()
