"""Choosing η: the same graph and trajectory budget at several staleness bounds.

For each η in ``--etas``, ``graphs/math_rl.py`` trains ``--steps`` steps through the real CLI
with ``--set staleness.max_lag=η`` (η = 0 also turns interruption off: the synchronous
baseline); then the base model and the final checkpoint of every run are scored on the same
held-out problems with one engine. Prints per η: wall time, trajectories/s, the trainer's
total time waiting for data, mean and max version lag of the trained trajectories, final
held-out accuracy. The smallest η at which the trainer no longer waits gives the throughput of
asynchrony with the freshest data.

    python bench/staleness_sweep.py [--etas 0 1 2 4] [--steps 12] [--problems 100]
        [--no-interrupt] [--out bench/results]

``--no-interrupt`` runs every η > 0 with ``staleness.interrupt=false``: new weights wait until
the generator has nothing in flight instead of interrupting it (η = 0 always runs that way).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from async_vs_sync import MODES, ROOT, score_all, train
from rich.console import Console
from rich.table import Table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--etas", type=int, nargs="+", default=[0, 1, 2, 4])
    parser.add_argument("--steps", type=int, default=12, help="Optimizer steps per run.")
    parser.add_argument("--problems", type=int, default=100, help="Held-out problems scored.")
    parser.add_argument("--no-interrupt", action="store_true", help="interruption off for η > 0")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    args.eval_every = args.steps  # one checkpoint per run: the final one
    args.out.mkdir(parents=True, exist_ok=True)
    console = Console()
    runs: dict[str, Any] = {}
    for eta in args.etas:
        sets = MODES["sync"] if eta == 0 else [f"staleness.max_lag={eta}"]
        if args.no_interrupt and eta > 0:
            sets = [*sets, "staleness.interrupt=false"]
        console.print(f"[bold]η = {eta}[/]: training {args.steps} steps ...")
        name = f"eta{eta}" + ("-nointerrupt" if args.no_interrupt and eta > 0 else "")
        runs[name] = train(name, sets, args, args.out)
        (args.out / "staleness_sweep.json").write_text(json.dumps(runs, indent=2))
    console.print("scoring the base model and every final checkpoint (one engine) ...")
    base = score_all({"sweep": runs}, args)
    table = Table(title=f"staleness bound η, {args.steps} steps each (base accuracy {base:.3f})")
    for column in ("run", "wall s", "traj/s", "trainer waiting s", "lag mean", "lag max", "acc"):
        table.add_column(column, justify="right")
    for name, run in runs.items():
        s = run["summary"]
        table.add_row(
            name,
            f"{s['wall_s']:.0f}",
            f"{s['trajectories'] / s['wall_s']:.3f}",
            f"{run['trainer_wait_s']:.0f}",
            f"{run['lag_mean']:.2f}",
            f"{run['lag_max']:.0f}",
            f"{run['final_acc']:.3f}",
        )
    console.print(table)
    (args.out / "staleness_sweep.json").write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
