"""Asynchronous vs synchronous RL on the same graph, model, machine and trajectory budget.

For each workload, ``graphs/math_rl.py`` runs up to four times through the real CLI:

- ``async``: η = staleness.max_lag, interruptible generation, ``placement=disaggregated``: the
  generator and the trainer on cores of their own (1 + 1 on two cores).
- ``async-lending``: the same with ``placement=lending``: the trainer also computes on the
  generator's core while the generator is idle (``areal_flow/lending.py``).
- ``sync-colocated``: ``--set staleness.max_lag=0 --set staleness.interrupt=false --set
  placement=colocated``: the generator and the trainer each on every core, taking turns — the
  honest synchronous baseline (AReaL's, veRL's and TRL's sync runs give each phase every
  device). The headline ratios are each async arm against this one.
- ``sync-split``: η = 0 on the 1 + 1 split (the old baseline), kept as a labelled third row:
  each phase leaves the other's core idle, so async vs this arm partly measures that idle core.

All train the same number of steps, i.e. the same number of trajectories. Checkpoints every
``--eval-every`` steps are scored afterwards on the same held-out problems (one engine per run,
weights loaded in place), giving held-out accuracy against wall-clock time since launch.

Workloads:
- ``default``: the graph's embedded defaults.
- ``longtail``: max tokens 512 and a mix of easy and hard levels, so response lengths are
  long-tailed and generation dominates (the regime of the AReaL paper).

Prints per run: wall time, trajectories/s, generation and training tokens/s, final held-out
accuracy; per workload the async/sync ratios and the accuracy of each at the async run's finish
time. Writes the table as JSON and a PNG of accuracy vs wall-clock. A run made earlier into the
same ``--out`` folder (another workload, or a mode left out of ``--modes``) stays in the table
and the plot as it was (neither re-run nor re-scored), so runs may be made one at a time.
``--set`` items apply to every run and to the scoring (a smoke test on the tiny model).

    python bench/async_vs_sync.py [--workloads default longtail] [--modes async async-lending
        sync-colocated sync-split] [--steps 20] [--eval-every 5] [--problems 100]
        [--out bench/results] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
GRAPH = ROOT / "graphs" / "math_rl.py"
SYNC = ["staleness.max_lag=0", "staleness.interrupt=false"]
ASYNC = {
    "async": ["placement=disaggregated"],
    "async-lending": ["placement=lending"],
}
MODES = {
    **ASYNC,
    "sync-colocated": [*SYNC, "placement=colocated"],
    "sync-split": SYNC,
}
LABELS = {
    "async": "async 1+1",
    "async-lending": "async 1+1, lending",
    "sync-colocated": "sync colocated",
    "sync-split": "sync 1+1 (old)",
}
BASELINE = "sync-colocated"  # the ratio rows compare each async arm against this one
WORKLOADS = {
    "default": [],
    "longtail": [
        "nodes.gen.sampling.max_tokens=512",
        "nodes.prompts.levels=[add1,sub1,word1,add2,mul2,chain2,word2]",
    ],
}


def run_once(workload: str, mode: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    settings = [*args.set, *WORKLOADS[workload], *MODES[mode]]
    return train(f"{workload}-{mode}", settings, args, folder)


def train(name: str, settings: list[str], args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """One CLI run of the graph with ``settings`` (``--set`` items), ``args.steps`` steps and a
    checkpoint every ``args.eval_every``; returns its summary, per-step staleness and waiting,
    and the checkpoints with their time since launch."""
    run_dir = folder / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    sets = [
        *settings,
        f"nodes.trainer.steps={args.steps}",
        f"nodes.trainer.checkpoint_every={args.eval_every}",
        "nodes.trainer.keep_checkpoints=null",
        "evaluation=null",  # scored below, every checkpoint with one engine
        "tracking.enabled=false",
    ]
    command = [sys.executable, "-m", "areal_flow.cli", "run", str(GRAPH), "-q"]
    command += ["--run-dir", str(run_dir)] + [a for s in sets for a in ("--set", s)]
    launched = time.time()
    log = (folder / f"{name}.log").open("w")
    done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{name} run failed; see {log.name}")
    summary = json.loads((run_dir / "summary.json").read_text())
    steps = [json.loads(line) for line in (run_dir / "metrics" / "steps.jsonl").open()]
    at = {int(s["step"]): float(s["time"]) - launched for s in steps}
    checkpoints = sorted(
        (p for p in (run_dir / "checkpoints").glob("step_*") if p.is_dir()),
        key=lambda p: int(p.name.split("_")[1]),
    )
    for checkpoint in checkpoints:  # only the weights are scored; the optimizer is ~1 GB each
        (checkpoint / "train_state.pt").unlink(missing_ok=True)
    return {
        "run_dir": str(run_dir),
        "summary": summary,
        "lag_mean": sum(s["lag_mean"] for s in steps) / len(steps),
        "lag_max": max(s["lag_max"] for s in steps),
        "trainer_wait_s": sum(s.get("wait_s", 0.0) for s in steps),
        "off_policy": off_policy_stats(steps),
        "checkpoints": [(str(p), at[int(p.name.split("_")[1])]) for p in checkpoints],
    }


def off_policy_stats(steps: list[dict[str, Any]]) -> dict[str, float]:
    """How far behind the trained data was: means over steps of the trainer's per-step token
    lag, share of trajectories spanning several versions, importance weight π_prox/π_behav and
    KL(π_behav ‖ π_prox) (k3 estimator), and the largest importance weight of the run."""
    means = ("token_lag_mean", "interrupted_frac", "iw_mean", "iw_capped_frac", "kl_behav_k3")
    stats = {k: sum(float(s.get(k, 0.0)) for s in steps) / len(steps) for k in means}
    stats["iw_max"] = max(float(s.get("iw_max", 0.0)) for s in steps)
    return stats


def generator_tokens_per_s(summary: dict[str, Any]) -> float:
    """Generated tokens/s of the run over its wall time: every node rate but the trainer's, and
    not the generators' rates while generating (the same tokens over a shorter time)."""
    from areal_flow.report import BUSY

    busy = BUSY.format(node="")
    rates = summary["tokens_per_s"].items()
    return float(sum(v for k, v in rates if "train" not in k and not k.endswith(busy)))


def score_all(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> float:
    """Held-out accuracy of the base model and of every checkpoint of every run not scored yet,
    with one engine (weights loaded in place); adds ``curve`` and ``final_acc`` to those runs
    and returns the base accuracy."""
    from areal_flow.evaluate import evaluate_models
    from areal_flow.loader import load_graph
    from areal_flow.report import eval_settings

    settings = eval_settings(load_graph(GRAPH, args.set))
    assert settings is not None
    runs = [run for runs in results.values() for run in runs.values() if "curve" not in run]
    paths = [settings.model] + [p for run in runs for p, _ in run["checkpoints"]]
    scores = iter(
        r.pass1["all"]
        for r in evaluate_models(
            paths, settings.data, args.problems, settings.samples, settings.k,
            settings.temperature, settings.max_tokens, settings.engine,  # type: ignore[arg-type]
        )
    )  # fmt: skip
    base = next(scores)
    for run in runs:
        run["curve"] = [(0.0, base)] + [(t, next(scores)) for _, t in run["checkpoints"]]
        run["final_acc"] = run["curve"][-1][1]
    return base


def accuracy_at(curve: list[tuple[float, float]], t: float) -> float:
    """Held-out accuracy of the newest checkpoint written by time ``t``."""
    return max((p for p in curve if p[0] <= t), key=lambda p: p[0])[1]


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, (workload, runs) in zip(axes[0], results.items(), strict=True):
        for mode, run in runs.items():
            xs, ys = zip(*run["curve"], strict=True)
            color = f"C{list(MODES).index(mode)}" if mode in MODES else None  # same in each panel
            ax.step(xs, ys, where="post", marker="o", label=LABELS.get(mode, mode), color=color)
        ax.set_title(f"{workload} workload")
        ax.set_xlabel("wall-clock since launch (s)")
        ax.set_ylabel("held-out accuracy (pass@1)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def ratio_row(mode: str, a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The table row of async arm ``a`` against the baseline ``b``: wall-time and rate ratios,
    and both accuracies when ``a`` finished."""
    t = a["summary"]["wall_s"]
    rate_a = a["summary"]["trajectories"] / t
    rate_b = b["summary"]["trajectories"] / b["summary"]["wall_s"]
    return [
        f"[bold]{LABELS[mode]} / {LABELS[BASELINE]}[/]",
        f"{b['summary']['wall_s'] / t:.2f}× faster",
        f"{rate_a / rate_b:.2f}×",
        "",
        "",
        f"at {t:.0f} s: {accuracy_at(a['curve'], t):.3f} vs {accuracy_at(b['curve'], t):.3f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--steps", type=int, default=20, help="Optimizer steps per run.")
    parser.add_argument("--eval-every", type=int, default=5, help="Checkpoint/eval interval.")
    parser.add_argument("--problems", type=int, default=100, help="Held-out problems scored.")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="Overrides for every run."
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    console = Console(width=200)  # the tables are wide; a log file would get 80 columns
    # Workloads run earlier into the same folder stay in the table and the plot.
    saved = args.out / "async_vs_sync.json"
    results: dict[str, dict[str, Any]] = json.loads(saved.read_text()) if saved.exists() else {}
    for workload in args.workloads:
        results.setdefault(workload, {})
        for mode in args.modes:
            console.print(f"[bold]{workload}/{mode}[/]: training {args.steps} steps ...")
            run = run_once(workload, mode, args, args.out)
            results[workload][mode] = run
            s = run["summary"]
            console.print(f"  {s['wall_s']:.0f} s, {s['trajectories']} trajectories")
            # Written after every run: a later failure loses no finished run.
            (args.out / "async_vs_sync.json").write_text(json.dumps(results, indent=2))
    console.print("scoring the base model and every checkpoint (one engine) ...")
    base = score_all(results, args)
    table = Table(title=f"async vs sync, {args.steps} steps each (base accuracy {base:.3f})")
    for column in ("workload", "mode", "wall s", "traj/s", "gen tok/s", "train tok/s", "final acc"):
        table.add_column(column, justify="left" if column in ("workload", "mode") else "right")
    for workload, runs in results.items():
        for mode, run in runs.items():
            s = run["summary"]
            rates = s["tokens_per_s"]
            table.add_row(
                workload,
                LABELS.get(mode, mode),
                f"{s['wall_s']:.0f}",
                f"{s['trajectories'] / s['wall_s']:.2f}",
                f"{generator_tokens_per_s(s):.0f}",
                f"{rates.get('trainer (training)', 0):.0f}",
                f"{run['final_acc']:.3f}",
            )
        for mode in ASYNC:
            if mode in runs and BASELINE in runs:
                table.add_row(workload, *ratio_row(mode, runs[mode], runs[BASELINE]))
    console.print(table)
    (args.out / "async_vs_sync.json").write_text(json.dumps(results, indent=2))
    plot(results, args.out / "async_vs_sync.png")
    console.print(f"wrote {args.out / 'async_vs_sync.json'} and {args.out / 'async_vs_sync.png'}")


if __name__ == "__main__":
    main()
