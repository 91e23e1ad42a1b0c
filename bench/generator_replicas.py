"""Generator replicas scale the rollout rate: 1 against N real generator replicas, same run.

The graph: the arithmetic prompt source → the real generator (the tiny random model with
SmolLM2's tokenizer by default, ``--engine hf`` or ``vllm``) with 1, then N replicas pinned to
one core each → a fake fast trainer (``areal_flow.fakes``: it keeps the staleness gate moving
without a model, so training costs nothing and the generators are the bottleneck) whose weight
notices go to a sink (the generators keep their initial weights). Each arm
measures, after every replica runs and ``--warmup`` seconds, for ``--seconds``: samples the
generators finished per second (their ``samples`` counters) and trajectories the trainer
received per second; then prints N's ratio to 1.
Needs N + 1 cores to be fair (N pinned generators, the rest share one); say how loaded the
machine was (the load average is printed).

    python bench/generator_replicas.py [--replicas 2] [--seconds 30] [--rounds 2]
        [--engine hf|vllm]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from control_plane import Sampler  # bench/ is the script's folder

from areal_flow.fakes import FakeTrainerConfig
from areal_flow.nodes import GeneratorConfig, PromptSourceConfig, Sampling
from areal_flow.runtime import run_graph
from areal_flow.spec import Graph, Resources, Staleness
from areal_flow.testing import CollectSinkConfig

GROUP_SIZE = 4


def replicas_graph(model: Path, replicas: int, args: argparse.Namespace) -> Graph:
    return Graph(
        name="generator_replicas",
        nodes=[
            PromptSourceConfig(name="prompts", model=str(model), group_size=GROUP_SIZE),
            GeneratorConfig(
                name="gen",
                model=str(model),
                engine=args.engine,
                replicas=replicas,
                sampling=Sampling(temperature=1.0, max_tokens=args.max_tokens),
                resources=Resources(cpus=1),
                kv_cache_gib=1,
            ),
            FakeTrainerConfig(
                name="trainer",
                model=str(model),
                batch_groups=2 * replicas,
                steps=1_000_000,
                store="run_dir",
            ),
            CollectSinkConfig(name="versions", keep=False),
        ],
        # The notices go to a sink: the generators keep their weights, the gate still moves.
        edges=["prompts -> gen", "gen -> trainer", "trainer -> versions"],
        staleness=Staleness(max_lag=2),
        tracking={"enabled": False},
    )


def run_arm(model: Path, replicas: int, args: argparse.Namespace) -> dict[str, Any]:
    sampler = Sampler(args.warmup, args.seconds)
    samples: list[float] = []  # every generator replica's samples, at window start and end

    def generated(driver: Any) -> float:
        gens = [r for r in driver.replicas.values() if r.plan.node == "gen"]
        return sum(r.metrics.get("samples", 0.0) for r in gens)

    def update(driver: Any) -> None:
        opened = sampler.window_start is not None
        sampler(driver)
        if not opened and sampler.window_start is not None:
            samples.append(generated(driver))
        if sampler.window_end is not None and len(samples) == 1:
            samples.append(generated(driver))

    graph = replicas_graph(model, replicas, args)
    with tempfile.TemporaryDirectory(prefix="gen-replicas-") as folder:
        result = run_graph(graph, run_dir=Path(folder), on_update=update)
    if sampler.window_start is None or sampler.window_end is None:
        raise SystemExit(f"{replicas} replica(s): ended before the window: {result.failure}")
    wall = sampler.window_end - sampler.window_start
    return {
        "replicas": replicas,
        "samples_s": (samples[1] - samples[0]) / wall,
        "trajectories_s": (sampler.accepted[1] - sampler.accepted[0]) * GROUP_SIZE / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=2, help="N, measured against 1.")
    parser.add_argument("--seconds", type=float, default=30.0, help="Measured window per arm.")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1, help="Arms of each; >1 alternates.")
    parser.add_argument("--model", type=Path, default=None, help="Default: the tiny model.")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    if args.replicas + 1 > cores:
        print(f"note: {args.replicas} pinned generators on {cores} cores: the rest shares them")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"engine {args.engine}, max_tokens {args.max_tokens}; load average {load}")
    with tempfile.TemporaryDirectory(prefix="tiny-") as folder:
        model = args.model
        if model is None:
            from areal_flow.models import make_tiny_model, prepare_smollm2

            model = make_tiny_model(Path(folder) / "tiny", tokenizer_from=prepare_smollm2())
        # 1, N, N, 1, …: load that drifts during the run hits both arms alike.
        pair = [1, args.replicas]
        order = [n for k in range(args.rounds) for n in (pair if k % 2 == 0 else pair[::-1])]
        rows = []
        for replicas in order:
            began = time.monotonic()
            rows.append(run_arm(model, replicas, args))
            row, took = rows[-1], time.monotonic() - began
            print(f"{replicas} replica(s): {row['samples_s']:.1f} samples/s generated, "
                  f"{row['trajectories_s']:.1f} trajectories/s trained ({took:.0f} s)")  # fmt: skip
    rate = {n: [r for r in rows if r["replicas"] == n] for n in (1, args.replicas)}

    def mean(n: int, key: str) -> float:
        return sum(r[key] for r in rate[n]) / len(rate[n])

    print(
        f"{args.replicas} replicas vs 1 (means of {args.rounds} arm(s) each): samples/s ×"
        f"{mean(args.replicas, 'samples_s') / max(mean(1, 'samples_s'), 1e-9):.2f}, "
        f"trajectories/s ×"
        f"{mean(args.replicas, 'trajectories_s') / max(mean(1, 'trajectories_s'), 1e-9):.2f}"
    )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
