"""How long a weight update pauses generation, against the engine's step token budget.

Usage: ``python bench/step_tokens.py [--budgets 2048 512] [--dtype bfloat16] [--eager]
[--rounds 3] [--updates 4] [--cpus 0]``

A weight update (``VLLMEngine.update_weights``, in-flight mode) first waits for the engine step
in progress, then loads and resumes. A step computes the running sequences' next tokens plus a
chunk of new prompts, up to the budget (vLLM's ``max_num_batched_tokens``; the generator's
``step_tokens``): a burst of new prompts makes long steps. Each arm, in a fresh process:
SmolLM2-135M-Instruct as ``graphs/math_rl.py``'s generator runs it (one core, max 64 running),
``--rounds`` rounds of a burst of 8 GSM8K prompts × 8 samples (T = 0.7, up to 96 tokens); from
the second round on, ``--updates`` updates 1.5 s apart (the same weights, in ``--dtype``, from
/dev/shm), each timed from the call to generating again (what ``publish_to_active_s`` counts
after the publisher). Printed per budget: engine start, tokens/s per round, update latency
median and max.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from arm_process import run_arm_process  # bench/, first on sys.path for a bench script

WEIGHTS = Path("/dev/shm/areal-flow-bench-step-tokens")


async def run_arm(args: argparse.Namespace) -> dict[str, Any]:
    from generation import load_prompts, write_weights  # bench/, first on sys.path

    from areal_flow.engine import GenerationRequest, SamplingConfig, create_engine
    from areal_flow.models import prepare_smollm2

    model = prepare_smollm2()
    prompts = load_prompts(model, 8)
    weights = write_weights(model, WEIGHTS, args.dtype)
    engine = create_engine(
        "vllm", model=str(model), dtype=args.dtype, max_num_seqs=64, max_model_len=1024,
        kv_cache_gib=1, cpus=tuple(args.cpus), enforce_eager=args.eager,
        max_batched_tokens=args.arm,
    )  # fmt: skip
    began = time.perf_counter()
    await engine.start()
    out: dict[str, Any] = {"start_s": time.perf_counter() - began, "rounds": [], "updates": []}
    sampling = SamplingConfig(temperature=0.7, max_tokens=96)
    samples = engine.samples().__aiter__()
    version = 0

    async def updates() -> None:
        nonlocal version
        for _ in range(args.updates):
            await asyncio.sleep(1.5)
            version += 1
            began = time.perf_counter()
            await engine.update_weights(version, str(weights))
            out["updates"].append(time.perf_counter() - began)

    try:
        for r in range(args.rounds):
            began = time.perf_counter()
            for i, prompt in enumerate(prompts):
                await engine.submit(GenerationRequest(f"r{r}-{i}", prompt, 8, sampling))
            updater = asyncio.create_task(updates()) if r else None
            tokens = 0
            for _ in range(len(prompts) * 8):
                tokens += len((await samples.__anext__()).response_token_ids)
            if updater is not None:
                await updater
            out["rounds"].append(tokens / (time.perf_counter() - began))
    finally:
        await engine.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[2048, 512])
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--eager", action="store_true", help="no torch.compile (math_rl's)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--updates", type=int, default=4, help="per round after the first")
    parser.add_argument("--cpus", type=int, nargs="+", default=[0])
    parser.add_argument("--arm", type=int, help=argparse.SUPPRESS)  # one budget, in-process
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(asyncio.run(run_arm(args))), flush=True)
        return
    passed = ["--dtype", args.dtype, "--rounds", str(args.rounds), "--updates", str(args.updates)]
    passed += ["--cpus", *map(str, args.cpus), *(["--eager"] if args.eager else [])]
    print(f"{'budget':>8}{'start s':>9}{'tokens/s per round':>30}{'update median':>15}{'max':>8}")
    for budget in args.budgets:
        command = [sys.executable, __file__, "--arm", str(budget), *passed]
        arm = run_arm_process(f"budget {budget}", command)
        rates = " ".join(f"{rate:.0f}" for rate in arm["rounds"])
        median, worst = statistics.median(arm["updates"]), max(arm["updates"])
        print(f"{budget:>8}{arm['start_s']:>9.1f}{rates:>30}{median:>13.2f} s{worst:>6.2f} s")


if __name__ == "__main__":
    main()
