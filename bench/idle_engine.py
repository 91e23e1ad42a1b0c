"""What an idle vLLM-CPU engine costs the cores it shares (colocated placement's premise).

Usage: ``python bench/idle_engine.py [--model smollm2] [--cpus 0 1] [--window 5]
[--kv-cache-gib 2] [--eager]``

Starts the vLLM engine (``areal_flow.engine.vllm_engine``) on ``--cpus``, then measures the
CPU time of every process of the engine (the caller, vLLM's engine core, which runs the worker
on CPU, and the worker's own process under ``worker_process``) over
``--window`` seconds in each phase:

- generating: 64 sequences of up to 256 tokens in flight (the baseline the others are
  compared with);
- idle right after: the window starting as the last sample arrives;
- idle: a window later still;
- paused: after ``pause_generation(mode="keep", clear_cache=True)``, what the engine does on a
  weight update.

Prints cores used per phase (1.0 = one core busy all the time) and each as a share of the
generating phase. vLLM's OpenMP threads sleep after ``KMP_BLOCKTIME`` (vLLM-CPU sets 5 ms) and
the engine core blocks on its input queue (a worker process of its own polls its queue for 1 s
after its last message before it blocks), so an idle engine should cost next to nothing:
colocated placement
(``areal_flow/colocation.py``) relies on that instead of putting the engine to sleep (vLLM's
``sleep()`` is a no-op on CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import psutil
from rich.console import Console
from rich.table import Table


def cpu_seconds() -> float:
    """CPU time so far of this process and everything it started."""
    me = psutil.Process()
    total = 0.0
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.Error:  # ended meanwhile
            continue
        total += times.user + times.system
    return total


async def cores_used(seconds: float) -> float:
    before, start = cpu_seconds(), time.perf_counter()
    await asyncio.sleep(seconds)
    return (cpu_seconds() - before) / (time.perf_counter() - start)


async def measure(args: argparse.Namespace) -> dict[str, float]:
    from areal_flow.engine.base import GenerationRequest, SamplingConfig
    from areal_flow.engine.vllm_engine import VLLMEngine, VLLMEngineConfig
    from areal_flow.models import prepare_model

    model = str(prepare_model(args.model))
    engine = VLLMEngine(
        VLLMEngineConfig(
            model=model,
            cpus=tuple(args.cpus),
            kv_cache_gib=args.kv_cache_gib,
            enforce_eager=args.eager,
        )
    )
    await engine.start()
    try:
        sampling = SamplingConfig(temperature=1.0, max_tokens=256)
        for i in range(16):
            request = GenerationRequest(
                request_id=f"r{i}", prompt_token_ids=[1, 2, 3 + i], n=4, sampling=sampling
            )
            await engine.submit(request)
        samples = engine.samples()
        generating = asyncio.create_task(cores_used(args.window))
        for _ in range(64):
            await anext(samples)
        phases = {"generating": await generating}
        phases["idle right after"] = await cores_used(args.window)
        phases["idle"] = await cores_used(args.window)
        await engine.pause()
        await asyncio.sleep(1.5)  # past the worker's 1 s of polling after the pause's messages
        phases["paused"] = await cores_used(args.window)
        await engine.resume()
        return phases
    finally:
        await engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="HF folder, .gguf or 'smollm2'.")
    parser.add_argument("--cpus", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--window", type=float, default=5.0, help="Seconds per phase.")
    parser.add_argument("--kv-cache-gib", type=int, default=2, help="The engine's KV cache.")
    parser.add_argument("--eager", action="store_true", help="Skip torch.compile (fast start).")
    args = parser.parse_args()
    phases = asyncio.run(measure(args))
    table = Table(title=f"vLLM-CPU engine on cores {args.cpus}: cores used per phase")
    for column in ("phase", "cores used", "vs generating"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for phase, used in phases.items():
        table.add_row(phase, f"{used:.3f}", f"{used / phases['generating']:.1%}")
    Console().print(table)


if __name__ == "__main__":
    main()
