"""Start-up costs of a run: model conversion, and whether vLLM's torch.compile pays for itself.

Usage: ``python bench/startup.py [--prompts 16] [--n 4] [--max-tokens 128] [--rounds 2]
[--cpus 0] [--arms cold warm cold-noaot warm-noaot eager eager-worker-process]``

Model: SmolLM2-135M-Instruct (``prepare_model("smollm2")``), fp32, as the generator runs it.

1. Conversion: the GGUF → safetensors conversion into an empty cache (what a fresh install pays,
   once per machine), then the cached lookup every later node and run pays.
2. Engine arms, each in a fresh process (nothing shared in memory between them):

   - ``cold``: vLLM with torch.compile on empty compile caches (``VLLM_CACHE_ROOT`` and
     ``TORCHINDUCTOR_CACHE_DIR`` in a new temporary folder): a fresh install's first run;
   - ``warm``: the same, on the caches ``cold`` just filled: every later run on this machine;
   - ``cold-noaot``, ``warm-noaot``: the same pair with ``VLLM_USE_AOT_COMPILE=0`` (their own
     caches). vLLM 0.32's AOT artifact fails to load on CPU ("Compiling model again due to a
     load failure ... 'function' object has no attribute 'finalize_loading'", vLLM issue
     #45447), so ``warm`` compiles again, only faster through Inductor's own cache; without
     AOT, vLLM's older per-graph compile cache is used;
   - ``eager``: ``enforce_eager`` (the generator's ``eager: true``): no compilation at all;
   - ``eager-worker-process``: the same with vLLM's worker in a process of its own
     (``worker_process``, vLLM-CPU's default) instead of in the engine-core process: one more
     vLLM import at start-up.

   Each arm times ``engine.start()`` (start-up), then ``--rounds`` rounds of the same work:
   ``--prompts`` GSM8K questions × ``--n`` samples, T = 1, until EOS or ``--max-tokens``, all in
   flight at once (the generator's default max_running is 64). Tokens/s counts generated tokens.
   The first round includes whatever the engine still compiles lazily; the last is steady state.

Printed: start-up seconds and tokens/s per arm, also in CPU seconds of the engine's processes
(start-up CPU s, generated tokens per CPU second: what other jobs on a shared machine do not
inflate), ratios against ``eager`` measured in the same run, and the break-even: how many
generated tokens the compiled engine needs before its faster decoding has paid back its longer
start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from arm_process import run_arm_process  # bench/, first on sys.path for a bench script

ARMS = ("cold", "warm", "cold-noaot", "warm-noaot", "eager", "eager-worker-process")


def conversion_times() -> dict[str, float]:
    """Seconds to convert SmolLM2 into an empty cache, then to find it there."""
    from areal_flow.models import prepare_smollm2

    with tempfile.TemporaryDirectory(prefix="bench-startup-models-") as folder:
        began = time.perf_counter()
        prepare_smollm2(Path(folder))
        cold = time.perf_counter() - began
        began = time.perf_counter()
        prepare_smollm2(Path(folder))
        cached = time.perf_counter() - began
    return {"convert_cold_s": cold, "convert_cached_s": cached}


def tree_cpu_s() -> float:
    """CPU seconds of this process and every process under it (vLLM's engine core, its
    worker, the compiler runs they waited for): a measure that other jobs on the machine do
    not inflate, unlike wall time."""
    import psutil

    total = 0.0
    for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


async def run_arm(args: argparse.Namespace) -> dict[str, Any]:
    """One engine arm in this process: start-up seconds and (tokens, seconds) per round."""
    from areal_flow.engine import GenerationRequest, SamplingConfig, create_engine
    from areal_flow.models import prepare_smollm2

    sys.path.insert(0, str(Path(__file__).parent))
    from generation import load_prompts  # the same GSM8K prompts as bench/generation.py

    model = prepare_smollm2()
    prompts = load_prompts(model, args.prompts)
    engine = create_engine(
        "vllm",
        model=str(model),
        max_num_seqs=args.prompts * args.n,
        kv_cache_gib=2,
        cpus=tuple(args.cpus),
        enforce_eager=args.arm.startswith("eager"),
        worker_process=args.arm == "eager-worker-process",
    )
    began, cpu = time.perf_counter(), tree_cpu_s()
    await engine.start()
    out: dict[str, Any] = {
        "start_s": time.perf_counter() - began,
        "start_cpu_s": tree_cpu_s() - cpu,
        "rounds": [],
        "rounds_cpu_s": [],
    }
    sampling = SamplingConfig(temperature=1.0, max_tokens=args.max_tokens)
    samples = engine.samples().__aiter__()
    try:
        for r in range(args.rounds):
            began, cpu = time.perf_counter(), tree_cpu_s()
            for i, prompt in enumerate(prompts):
                await engine.submit(GenerationRequest(f"r{r}-{i}", prompt, args.n, sampling))
            tokens = 0
            for _ in range(args.prompts * args.n):
                tokens += len((await samples.__anext__()).response_token_ids)
            out["rounds"].append((tokens, time.perf_counter() - began))
            out["rounds_cpu_s"].append(tree_cpu_s() - cpu)
    finally:
        await engine.close()
    return out


def arm_in_subprocess(arm: str, args: argparse.Namespace, caches: Path) -> dict[str, Any]:
    """Run ``arm`` in a fresh interpreter; compiled arms share ``caches`` (cold fills them)."""
    env = dict(os.environ)
    if not arm.startswith("eager"):
        pair = "noaot" if arm.endswith("-noaot") else "aot"
        env["VLLM_CACHE_ROOT"] = str(caches / pair / "vllm")
        env["TORCHINDUCTOR_CACHE_DIR"] = str(caches / pair / "inductor")
        env["VLLM_USE_AOT_COMPILE"] = "0" if pair == "noaot" else "1"
    command = [sys.executable, __file__, "--arm", arm, *_passed(args)]
    began = time.perf_counter()
    result = run_arm_process(arm, command, env)
    result["process_s"] = time.perf_counter() - began
    return result


def _passed(args: argparse.Namespace) -> list[str]:
    return [
        *("--prompts", str(args.prompts), "--n", str(args.n)),
        *("--max-tokens", str(args.max_tokens), "--rounds", str(args.rounds)),
        "--cpus",
        *[str(c) for c in args.cpus],
    ]


def _rate(run: list[float]) -> float:
    return run[0] / run[1]


def report(conversion: dict[str, float], arms: dict[str, dict[str, Any]]) -> None:
    print(f"\nmodel conversion: {conversion['convert_cold_s']:.1f} s into an empty cache, "
          f"{conversion['convert_cached_s'] * 1000:.0f} ms when cached")  # fmt: skip
    print(f"\n{'arm':<22}{'start s':>10}{'start CPU s':>13}{'first tok/s':>14}"
          f"{'steady tok/s':>14}{'tok/CPU s':>11}{'process s':>12}")  # fmt: skip
    for name, arm in arms.items():
        first, last = _rate(arm["rounds"][0]), _rate(arm["rounds"][-1])
        per_cpu = arm["rounds"][-1][0] / arm["rounds_cpu_s"][-1]
        print(f"{name:<22}{arm['start_s']:>10.1f}{arm['start_cpu_s']:>13.1f}{first:>14.1f}"
              f"{last:>14.1f}{per_cpu:>11.1f}{arm['process_s']:>12.1f}")  # fmt: skip
    if "eager" not in arms:
        return
    eager = arms["eager"]
    eager_rate = _rate(eager["rounds"][-1])
    print("\nagainst eager (same run):")
    for name in ("cold", "warm", "cold-noaot", "warm-noaot", "eager-worker-process"):
        if name not in arms:
            continue
        arm = arms[name]
        extra = arm["start_s"] - eager["start_s"]
        rate = _rate(arm["rounds"][-1])
        line = f"  {name}: start {extra:+.1f} s, steady decode {rate / eager_rate:.2f}x"
        if rate > eager_rate and extra > 0:
            # Tokens T at which extra + T/rate = T/eager_rate.
            tokens = extra / (1 / eager_rate - 1 / rate)
            line += f"; pays back after {tokens:,.0f} generated tokens ({tokens / rate:.0f} s)"
        elif extra <= 0 and rate >= eager_rate:
            line += "; better from the start"
        else:
            line += "; never pays back"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cpus", type=int, nargs="+", default=[0])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # one arm, in-process
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(asyncio.run(run_arm(args))), flush=True)
        return
    for warm in ("warm", "warm-noaot"):
        if warm in args.arms and warm.replace("warm", "cold") not in args.arms:
            parser.error(f"--arms: '{warm}' reuses the caches its cold arm fills; add that arm")
    conversion = conversion_times()
    print(f"[bench] conversion {conversion}", flush=True)
    arms: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-startup-caches-") as caches:
        for arm in [a for a in ARMS if a in args.arms]:
            arms[arm] = arm_in_subprocess(arm, args, Path(caches))
            print(f"[bench] {arm}: {json.dumps(arms[arm])}", flush=True)
    report(conversion, arms)


if __name__ == "__main__":
    main()
