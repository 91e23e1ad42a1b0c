"""Choosing η and the interrupt mode: the same graph and trajectory budget at several settings.

For each η in ``--etas``, ``graphs/math_rl.py`` trains ``--steps`` steps through the real CLI
with ``--set staleness.max_lag=η`` (η = 0 also turns interruption off: the synchronous
baseline); then the base model and the final checkpoint of every run are scored on the same
held-out problems with one engine. Prints per run: wall time, trajectories/s, generated tokens/s,
the trainer's total time waiting for data, mean and max version lag of the trained trajectories,
the off-policy statistics the trainer logs per step (mean token lag, share of trajectories
spanning several versions, mean and max importance weight π_prox/π_behav, KL(π_behav ‖ π_prox)),
final held-out accuracy. The smallest η at which the trainer no longer waits gives the
throughput of asynchrony with the freshest data.

    python bench/staleness_sweep.py [--etas 0 1 2 4] [--steps 12] [--problems 100]
        [--modes inflight recompute abort drain] [--no-interrupt]
        [--workload default|longtail] [--repeats 1] [--set KEY=VALUE ...] [--resume]
        [--out bench/results]

``--modes`` runs every η > 0 once per generator interrupt mode (``nodes.gen.interrupt_mode``:
what new weights do to running sequences; ``engine.vllm_engine``), so the modes are compared on
the same workload; without it each η runs the graph's own mode. ``--no-interrupt`` adds, for
every η > 0, a run with ``staleness.interrupt=false``: new weights wait until the generator has
no episode running (η = 0 always runs that way). ``--workload longtail`` is
bench/async_vs_sync.py's long-tail workload (max tokens 512, easy and hard levels mixed).
``--repeats n`` runs the whole set n times, every other time in reverse order, so a drift in the
machine's speed does not favour the settings that run first. ``--set`` overrides the graph for
every run and for the scoring. ``--resume`` keeps the runs the saved results already hold with
the same name and settings (after a failed scoring, say) and trains only the others.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, get_args

from async_vs_sync import MODES, ROOT, WORKLOADS, generator_tokens_per_s, score_all, train
from rich.console import Console
from rich.table import Table

from areal_flow.engine.vllm_engine import InterruptMode


def runs_to_make(args: argparse.Namespace) -> dict[str, list[str]]:
    """Run name -> ``--set`` items, in the order they run: with ``--repeats`` n > 1 the set runs
    n times, named ``…-r1`` to ``…-rn``, odd repeats in reverse order."""
    once = settings_to_run(args)
    if args.repeats == 1:
        return once
    runs: dict[str, list[str]] = {}
    for repeat in range(args.repeats):
        names = list(once) if repeat % 2 == 0 else list(reversed(once))
        runs.update({f"{name}-r{repeat + 1}": once[name] for name in names})
    return runs


def settings_to_run(args: argparse.Namespace) -> dict[str, list[str]]:
    """Setting name -> ``--set`` items, one run each."""
    workload = [*args.set, *WORKLOADS[args.workload]]
    runs: dict[str, list[str]] = {}
    for eta in args.etas:
        if eta == 0:
            runs["eta0"] = [*workload, *MODES["sync"]]
            continue
        base = [*workload, f"staleness.max_lag={eta}"]
        for mode in args.modes or [None]:
            name = f"eta{eta}" + (f"-{mode}" if mode else "")
            runs[name] = base + ([f"nodes.gen.interrupt_mode={mode}"] if mode else [])
        if args.no_interrupt:
            runs[f"eta{eta}-nointerrupt"] = [*base, "staleness.interrupt=false"]
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--etas", type=int, nargs="+", default=[0, 1, 2, 4])
    parser.add_argument("--steps", type=int, default=12, help="Optimizer steps per run.")
    parser.add_argument("--problems", type=int, default=100, help="Held-out problems scored.")
    parser.add_argument(
        "--modes", nargs="+", choices=get_args(InterruptMode), default=None,
        help="generator interrupt modes, one run each per η > 0 (default: the graph's own)",
    )  # fmt: skip
    parser.add_argument(
        "--no-interrupt", action="store_true", help="also run each η > 0 uninterrupted"
    )
    parser.add_argument("--workload", choices=WORKLOADS, default="default")
    parser.add_argument("--repeats", type=int, default=1, help="Runs of each setting.")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="Overrides for every run."
    )
    parser.add_argument(
        "--resume", action="store_true", help="keep the saved runs of the same settings"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    args.eval_every = args.steps  # one checkpoint per run: the final one
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.workload == "default" else f"-{args.workload}"
    saved = args.out / f"staleness_sweep{suffix}.json"
    console = Console(width=200)  # the tables are wide; a log file would get 80 columns
    done = json.loads(saved.read_text()) if args.resume and saved.exists() else {}
    runs: dict[str, Any] = {}
    for name, sets in runs_to_make(args).items():
        kept = done.get(name, {})
        if kept.get("settings") == sets and kept["summary"]["steps"] == args.steps:
            console.print(f"{name}: kept from {saved}")
            runs[name] = done[name]
            continue
        console.print(f"[bold]{name}[/] ({args.workload}): training {args.steps} steps ...")
        runs[name] = {**train(f"{name}{suffix}", sets, args, args.out), "settings": sets}
        saved.write_text(json.dumps(runs, indent=2))  # a later failure loses no finished run
    console.print("scoring the base model and every final checkpoint (one engine) ...")
    base = score_all({"sweep": runs}, args)
    table = Table(
        title=f"staleness bound η and interrupt mode, {args.workload} workload, {args.steps} "
        f"steps each (base accuracy {base:.3f})"
    )
    columns = (
        "run", "wall s", "traj/s", "gen tok/s", "trainer waiting s", "lag mean", "lag max",
        "token lag", "multi-version", "iw mean", "iw max", "KL behav", "acc",
    )  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "run" else "right")
    for name, run in runs.items():
        s, off = run["summary"], run["off_policy"]
        table.add_row(
            name,
            f"{s['wall_s']:.0f}",
            f"{s['trajectories'] / s['wall_s']:.3f}",
            f"{generator_tokens_per_s(s):.0f}",
            f"{run['trainer_wait_s']:.0f}",
            f"{run['lag_mean']:.2f}",
            f"{run['lag_max']:.0f}",
            f"{off['token_lag_mean']:.2f}",
            f"{off['interrupted_frac']:.2f}",
            f"{off['iw_mean']:.4f}",
            f"{off['iw_max']:.2f}",
            f"{off['kl_behav_k3']:.2e}",
            f"{run['final_acc']:.3f}",
        )
    console.print(table)
    saved.write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
