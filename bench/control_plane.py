"""The control plane at scale: one real driver against many light fake generator replicas.

The graph (``areal_flow.fakes``, real node kinds, no model): fake prompts → N fake generators
(long-tailed sleeps, ``max_groups`` groups in flight each) → a fake fast trainer (``--step-s``
per step) → the real weight publisher → back to every generator. The real driver, staleness
gate, ledger and ZeroMQ control and data paths run it; replicas are real processes
(``--launcher local``, the default) or asyncio tasks of the driver's own process
(``inprocess``: reaches replica counts the machine cannot start as processes, but then the
driver's CPU includes every replica's).

The trainer's batch is sized so the gate can keep every generator busy:
``batch_groups = ceil(N · max_groups / (η + 1))``. After all replicas run and ``--warmup``
seconds, each arm measures for ``--seconds``:

- admissions/s: prompt groups the gate admitted, per second (and trajectories the trainer got);
- heartbeat age: for every running replica, seconds since the driver last heard from it
  (heartbeats go every 0.5 s, so ~0.5 s is an idle driver; more is queueing in the driver);
  p50 and max over samples every 0.1 s;
- driver turn: the longest gap between two turns of the driver's loop;
- driver CPU: CPU seconds of this process (the driver, and with ``inprocess`` the replicas)
  per wall second (1.0 = one core); replicas' CPU: the same for every replica's worker
  process together (``local`` only): what the replicas themselves cost the machine;
- gate: whether it ever held more groups than its rule allows (capacity < 0 at any turn:
  over-admission), the largest trajectory lag it saw (the oldest token's version, against η)
  and the share of trajectories over η, and the run's failure if any (a stuck replica, a
  refused admission). The lag bound η holds when groups finish in the order they were
  admitted (``--sigma 0``: every sample takes the median time); a long tail lets a straggler
  admitted early reach the trainer after more than η newer versions (the rule counts groups,
  not which ones are late), which the share measures.

    python bench/control_plane.py [--replicas 1 8 32 64] [--launcher local|inprocess]
        [--seconds 15] [--warmup 3] [--max-lag 2] [--max-groups 4] [--token-s 0.001]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from areal_flow.fakes import FakeGeneratorConfig, FakePromptsConfig, FakeTrainerConfig
from areal_flow.nodes import WeightPublisherConfig
from areal_flow.runtime import run_graph
from areal_flow.spec import Graph, Staleness

AGE_EVERY_S = 0.1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def scale_graph(replicas: int, args: argparse.Namespace) -> Graph:
    batch_groups = max(1, math.ceil(replicas * args.max_groups / (args.max_lag + 1)))
    return Graph(
        name="control_plane",
        nodes=[
            FakePromptsConfig(name="prompts", group_size=args.group_size),
            FakeGeneratorConfig(
                name="gen",
                replicas=replicas,
                max_groups=args.max_groups,
                median_tokens=args.median_tokens,
                max_tokens=args.max_tokens,
                sigma=args.sigma,
                token_s=args.token_s,
            ),
            FakeTrainerConfig(
                name="trainer", batch_groups=batch_groups, steps=1_000_000, step_s=args.step_s
            ),
            WeightPublisherConfig(name="publisher"),
        ],
        edges=["prompts -> gen", "gen -> trainer", "trainer -> publisher", "publisher -> gen"],
        staleness=Staleness(max_lag=args.max_lag),
        tracking={"enabled": False},
    )


@dataclass
class Sampler:
    """Watches the driver every turn; measures one window; interrupts the run after it."""

    warmup: float
    seconds: float
    window_start: float | None = None
    window_end: float | None = None
    cpu_start: float = 0.0
    cpu_s: float = 0.0
    replica_cpu: tuple[float, float] = (0.0, 0.0)
    admitted: tuple[float, float] = (0.0, 0.0)
    accepted: tuple[float, float] = (0.0, 0.0)
    versions: tuple[float, float] = (0.0, 0.0)
    ages: list[float] = field(default_factory=list)
    turn_max: float = 0.0
    over_admitted: bool = False
    last_turn: float = 0.0
    next_age: float = 0.0
    running_at: float | None = None
    started: float = field(default_factory=time.monotonic)

    def __call__(self, driver: Any) -> None:
        now = time.monotonic()
        if self.running_at is None:
            if driver.replicas and all(r.status == "running" for r in driver.replicas.values()):
                self.running_at = now
                took = now - self.started
                print(f"  all {len(driver.replicas)} replicas running after {took:.1f} s")
            return
        if self.window_start is None:
            if now - self.running_at >= self.warmup:
                self.window_start = now
                self.cpu_start = time.process_time()
                self.replica_cpu = (replicas_cpu_s(driver), 0.0)
                self.admitted = (driver.gate.admitted, 0.0)
                self.accepted = (driver.gate.accepted, 0.0)
                self.versions = (driver.version, 0.0)
                self.last_turn = now
            return
        if self.window_end is not None:
            return
        self.turn_max = max(self.turn_max, now - self.last_turn)
        self.over_admitted |= driver.gate.capacity < 0
        self.last_turn = now
        if now >= self.next_age:
            self.next_age = now + AGE_EVERY_S
            running = [r.last_seen for r in driver.replicas.values() if r.status == "running"]
            if running:
                self.ages.append(now - min(running))
        if now - self.window_start >= self.seconds:
            self.window_end = now
            self.cpu_s = time.process_time() - self.cpu_start
            self.replica_cpu = (self.replica_cpu[0], replicas_cpu_s(driver))
            self.admitted = (self.admitted[0], driver.gate.admitted)
            self.accepted = (self.accepted[0], driver.gate.accepted)
            self.versions = (self.versions[0], driver.version)
            driver.interrupt()


def replicas_cpu_s(driver: Any) -> float:
    """CPU seconds used so far by every replica's worker process (0 for in-process replicas)."""
    total = 0.0
    for replica in driver.replicas.values():
        if replica.pid is None:
            continue
        try:
            fields = Path(f"/proc/{replica.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime
    return total


def run_arm(replicas: int, args: argparse.Namespace) -> dict[str, Any]:
    graph = scale_graph(replicas, args)
    sampler = Sampler(args.warmup, args.seconds)
    with tempfile.TemporaryDirectory(prefix="control-plane-") as folder:
        began = time.monotonic()
        result = run_graph(graph, run_dir=Path(folder), launcher=args.launcher, on_update=sampler)
        total = time.monotonic() - began
    if sampler.window_end is None or sampler.window_start is None:
        failure = str(result.failure).splitlines()[0] if result.failure else result.status
        print(f"  {replicas} replicas: the run ended before the window: {result.failure}")
        return {"replicas": replicas, "failure": f"ended before the window: {failure}"}
    wall = sampler.window_end - sampler.window_start
    lag_max = result.staleness.get("lag_max", 0.0)
    lags = {int(k[4:]): v for k, v in result.staleness.items() if k.startswith("lag/")}
    over = sum(v for lag, v in lags.items() if lag > args.max_lag) / max(sum(lags.values()), 1)
    return {
        "replicas": replicas,
        "batch_groups": graph.node("trainer").batch_groups,  # type: ignore[attr-defined]
        "admissions_s": (sampler.admitted[1] - sampler.admitted[0]) / wall,
        "trajectories_s": (sampler.accepted[1] - sampler.accepted[0]) * args.group_size / wall,
        "steps_s": (sampler.versions[1] - sampler.versions[0]) / wall,
        "age_p50": statistics.median(sampler.ages),
        "age_max": max(sampler.ages),
        "turn_max": sampler.turn_max,
        "cpu": sampler.cpu_s / wall,
        "replica_cpu": (sampler.replica_cpu[1] - sampler.replica_cpu[0]) / wall,
        "lag_max": lag_max,
        "over_share": over,
        "over_admitted": sampler.over_admitted,
        "failure": str(result.failure).splitlines()[0] if result.failure else "",
        "total_s": total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--launcher", choices=["local", "inprocess"], default="local")
    parser.add_argument("--seconds", type=float, default=15.0, help="Measured window per arm.")
    parser.add_argument("--warmup", type=float, default=3.0, help="Seconds before the window.")
    parser.add_argument("--max-lag", type=int, default=2, help="η of the staleness gate.")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-groups", type=int, default=4, help="Groups in flight per replica.")
    parser.add_argument("--median-tokens", type=int, default=500)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--sigma", type=float, default=0.8, help="Log-normal spread; 0 = none.")
    parser.add_argument("--token-s", type=float, default=0.001, help="Seconds per token.")
    parser.add_argument("--step-s", type=float, default=0.005, help="Fake trainer step time.")
    args = parser.parse_args()
    print(
        f"launcher {args.launcher}, η = {args.max_lag}, {args.max_groups} groups of "
        f"{args.group_size} in flight per replica, lengths log-normal (median "
        f"{args.median_tokens}, σ {args.sigma:g}, cap {args.max_tokens}) × "
        f"{args.token_s * 1000:g} ms/token; "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    rows = []
    for replicas in args.replicas:
        print(f"{replicas} replica(s) ...", flush=True)
        rows.append(run_arm(replicas, args))
    table = Table(title=f"control plane, {args.launcher} replicas, {args.seconds:g} s per arm")
    columns = [
        "replicas",
        "B",
        "admissions/s",
        "trajectories/s",
        "steps/s",
        "hb age p50 s",
        "hb age max s",
        "turn max s",
        "driver CPU",
        "replicas' CPU",
        "gate held",
        "lag max (η)",
        "lag > η",
        "failure",
    ]
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        if "admissions_s" not in row:
            table.add_row(str(row["replicas"]), *["-"] * (len(columns) - 2), row["failure"])
            continue
        table.add_row(
            str(row["replicas"]),
            str(row["batch_groups"]),
            f"{row['admissions_s']:.1f}",
            f"{row['trajectories_s']:.0f}",
            f"{row['steps_s']:.2f}",
            f"{row['age_p50']:.2f}",
            f"{row['age_max']:.2f}",
            f"{row['turn_max']:.3f}",
            f"{row['cpu']:.0%}",
            f"{row['replica_cpu']:.0%}" if args.launcher == "local" else "(in driver)",
            "OVER-ADMITTED" if row["over_admitted"] else "yes",
            f"{row['lag_max']:.0f} ({args.max_lag})",
            f"{row['over_share']:.1%}",
            row["failure"] or "-",
        )
    Console(width=200).print(table)
    measured = [row for row in rows if "admissions_s" in row]
    base = measured[0] if measured else {}
    for row in measured[1:]:
        print(
            f"{row['replicas']} vs {base['replicas']} replica(s): admissions ×"
            f"{row['admissions_s'] / max(base['admissions_s'], 1e-9):.1f}, driver CPU ×"
            f"{row['cpu'] / max(base['cpu'], 1e-9):.1f}"
        )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
