"""The trainer's AdamW step on CPU: torch's per-tensor loop, ``foreach`` and ``fused``.

Usage: ``python bench/optimizer.py [--threads 1] [--rounds 5]``

Model: SmolLM2-135M-Instruct (``prepare_model("smollm2")``), fp32 parameters as the trainer
holds them, every one with a random gradient. Each variant gets its own ``torch.optim.AdamW``
(the trainer's defaults: lr 2e-5, no weight decay), one untimed step (the state's allocation),
then ``--rounds`` timed steps. Printed: the median step in ms and the ratio against the
per-tensor loop (torch's default on CPU), measured in the same run, and the largest difference
between the weights the variants reach from the same start after the same steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

VARIANTS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def timed_steps(params: list[torch.Tensor], options: dict[str, bool], rounds: int) -> float:
    """Median seconds of one AdamW step over ``params`` (their ``grad`` set)."""
    optimizer = torch.optim.AdamW(params, lr=2e-5, **options)  # type: ignore[arg-type]
    optimizer.step()
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from areal_flow.models import load_causal_lm, prepare_model

    model = load_causal_lm(prepare_model("smollm2"), dtype=torch.float32)
    start = [p.detach().clone() for p in model.parameters()]
    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=generator) * 1e-3 for p in start]
    print(f"{sum(p.numel() for p in start) / 1e6:.1f} M parameters, {args.threads} thread(s)")
    medians, reached = {}, {}
    for name, options in VARIANTS.items():
        params = [p.clone().requires_grad_(True) for p in start]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        medians[name] = timed_steps(params, options, args.rounds)
        reached[name] = params
    for name, seconds in medians.items():
        ratio = medians["loop"] / seconds
        print(f"{name:<8} {seconds * 1e3:8.1f} ms a step   {ratio:5.2f}x the loop")
    for name in ("foreach", "fused"):
        diff = max(
            float((a - b).detach().abs().max())
            for a, b in zip(reached["loop"], reached[name], strict=True)
        )
        print(f"largest weight difference, loop vs {name}: {diff:.3g}")


if __name__ == "__main__":
    main()
