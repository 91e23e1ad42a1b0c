"""Generation throughput and interrupt latency: the vLLM engine wrapper vs raw vLLM vs HF.

Usage: ``python bench/generation.py [--prompts 16] [--n 4] [--max-tokens 256] [--cpus 0 1]``

All rows use SmolLM2-135M-Instruct (fp32) on GSM8K questions under its chat template (from
/work/shared/data/gsm8k/train.jsonl when present, else built-in questions), sampled at T = 1
until EOS or ``--max-tokens``: natural, long-tailed lengths. Rows:

- raw vLLM: ``AsyncLLM.generate`` with ``SamplingParams(n=N)``, the same engine instance and
  the same sampling/log-prob settings as the wrapper (alternated with it, best of ``--rounds``);
- wrapper: ``VLLMEngine`` (one vLLM request per sample, stitching, versions);
- wrapper + interrupts, per mode (keep / abort): ``--interrupts`` weight updates spread evenly
  over the run; reports tokens/s, the interrupt→resumed latency (the time ``update_weights``
  holds generation: pause, load 135M params from /dev/shm, resume) and the wall time lost per
  interrupt at equal work (that plus recomputing every in-flight prefix on the new weights);
- idle weight update: ``update_weights`` with nothing in flight;
- HF generate: ``model.generate`` on all prompts in one left-padded batch (after vLLM is shut
  down, so it has the cores alone); the hf engine (continuous batching) for reference.
Tokens/s counts generated tokens only (EOS included); start-up is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from areal_flow.engine.base import GenerationRequest, InferenceEngine, SamplingConfig
from areal_flow.engine.hf_engine import HFEngine, HFEngineConfig
from areal_flow.engine.vllm_engine import VLLMEngine, VLLMEngineConfig
from areal_flow.models import prepare_smollm2

GSM8K_TRAIN = Path("/work/shared/data/gsm8k/train.jsonl")
FALLBACK_QUESTIONS = [
    "A farmer has 17 sheep and buys 3 times as many goats. How many animals does he have?",
    "Tom reads 12 pages a day. How many days does he need for a 300-page book?",
    "Explain why the sky is blue in two sentences.",
    "Write a short poem about rivers.",
]


def load_prompts(model_dir: Path, count: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    if GSM8K_TRAIN.is_file():
        lines = GSM8K_TRAIN.read_text().splitlines()[:count]
        questions = [json.loads(line)["question"] for line in lines]
    else:
        questions = [FALLBACK_QUESTIONS[i % len(FALLBACK_QUESTIONS)] for i in range(count)]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return [
        list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True
            )["input_ids"]
        )
        for q in questions
    ]


def write_weights(model_dir: Path, out: Path) -> Path:
    """The model's state dict as the trainer would publish it."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"))
    return out


async def run_wrapper(
    engine: InferenceEngine,
    prompts: list[list[int]],
    n: int,
    sampling: SamplingConfig,
    tag: str,
    interrupt: tuple[int, float, Path] | None = None,
) -> tuple[int, float, list[float]]:
    """Generate everything through the engine interface; returns (tokens, seconds, update
    latencies); ``interrupt = (count, every, path)`` updates weights ``count`` times, one every
    ``every`` seconds."""
    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        await engine.submit(GenerationRequest(f"{tag}-{i}", prompt, n=n, sampling=sampling))
    latencies: list[float] = []
    done = asyncio.Event()

    async def interrupter(count: int, every: float, path: Path) -> None:
        for _ in range(count):
            await asyncio.sleep(every)
            if done.is_set():
                return
            begin = time.perf_counter()
            await engine.update_weights(engine.version + 1, path)
            latencies.append(time.perf_counter() - begin)

    task = asyncio.create_task(interrupter(*interrupt)) if interrupt else None
    tokens = 0
    received = 0
    async for sample in engine.samples():
        tokens += len(sample.response_token_ids)
        received += 1
        if received == len(prompts) * n:
            break
    elapsed = time.perf_counter() - start
    done.set()
    if task is not None:
        await task
    return tokens, elapsed, latencies


async def run_raw(
    llm: Any, prompts: list[list[int]], n: int, sampling: SamplingConfig, tag: str
) -> tuple[int, float]:
    """The same work straight through ``AsyncLLM.generate`` (parallel sampling with n)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    params = SamplingParams(
        n=n,
        temperature=sampling.temperature,
        max_tokens=sampling.max_tokens,
        logprobs=0,
        flat_logprobs=True,
        output_kind=RequestOutputKind.FINAL_ONLY,
    )

    async def one(i: int, prompt: list[int]) -> int:
        final = None
        async for out in llm.generate({"prompt_token_ids": prompt}, params, f"{tag}-{i}"):
            final = out
        assert final is not None
        return sum(len(c.token_ids) for c in final.outputs)

    start = time.perf_counter()
    counts = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    return sum(counts), time.perf_counter() - start


def _progress(name: str, run: tuple) -> None:
    print(f"[bench] {name}: {run[1]} tokens in {run[2]:.1f} s = {run[0]:.1f} tok/s", flush=True)


async def bench_vllm(args: argparse.Namespace, model: Path, prompts: list[list[int]]) -> dict:
    sampling = SamplingConfig(temperature=1.0, max_tokens=args.max_tokens)
    weights = write_weights(model, Path("/dev/shm/areal-flow-bench-weights"))
    config = VLLMEngineConfig(
        model=str(model), cpus=tuple(args.cpus) if args.cpus else None, kv_cache_gib=2
    )
    engine = VLLMEngine(config)
    begin = time.perf_counter()
    await engine.start()
    results: dict[str, Any] = {"startup_s": time.perf_counter() - begin}
    await run_wrapper(engine, prompts[:4], 1, SamplingConfig(max_tokens=16), "warm")
    raw, wrapped = [], []
    for r in range(args.rounds):
        order = ("raw", "wrapper") if r % 2 == 0 else ("wrapper", "raw")
        for kind in order:
            if kind == "raw":
                tokens, secs = await run_raw(engine._llm, prompts, args.n, sampling, f"raw{r}")
                raw.append((tokens / secs, tokens, secs))
                _progress(f"raw vLLM round {r}", raw[-1])
            else:
                tokens, secs, _ = await run_wrapper(engine, prompts, args.n, sampling, f"w{r}")
                wrapped.append((tokens / secs, tokens, secs))
                _progress(f"wrapper round {r}", wrapped[-1])
    results["raw"], results["wrapper"] = max(raw), max(wrapped)
    idle = []
    for _ in range(5):
        t0 = time.perf_counter()
        await engine.update_weights(engine.version + 1, weights)
        idle.append(time.perf_counter() - t0)
    results["idle_update_s"] = statistics.median(idle)
    # Interrupts spread evenly over what an uninterrupted run takes.
    every = results["wrapper"][2] / (args.interrupts + 1)
    runs: dict[str, list[tuple]] = {"keep": [], "abort": []}
    for r in range(args.interrupt_rounds):
        for mode in ("keep", "abort") if r % 2 == 0 else ("abort", "keep"):
            # The mode is read at each pause, so one engine serves both measurements.
            engine.config = engine.config.model_copy(update={"interrupt_mode": mode})
            tokens, secs, lat = await run_wrapper(
                engine, prompts, args.n, sampling, f"{mode}{r}", (args.interrupts, every, weights)
            )
            runs[mode].append((tokens / secs, tokens, secs, lat))
            _progress(f"{mode} + {len(lat)} interrupts round {r}", runs[mode][-1])
    for mode, mode_runs in runs.items():
        results[mode] = max(mode_runs, key=lambda run: run[0])
    await engine.close()
    return results


def bench_hf_generate(model: Path, prompts: list[list[int]], n: int, max_tokens: int) -> tuple:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    rows = [p for p in prompts for _ in range(n)]
    width = max(len(p) for p in rows)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in rows])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rows])
    eos = lm.generation_config.eos_token_id
    start = time.perf_counter()
    with torch.no_grad():
        out = lm.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            max_new_tokens=max_tokens,
            pad_token_id=pad,
        )
    secs = time.perf_counter() - start
    tokens = 0
    for row in out[:, width:].tolist():
        tokens += row.index(eos) + 1 if eos in row else len(row)
    return tokens / secs, tokens, secs


async def bench_hf_engine(model: Path, prompts: list[list[int]], n: int, max_tokens: int) -> tuple:
    engine = HFEngine(HFEngineConfig(model=str(model), max_batch=len(prompts) * n))
    await engine.start()
    sampling = SamplingConfig(temperature=1.0, max_tokens=max_tokens)
    tokens, secs, _ = await run_wrapper(engine, prompts, n, sampling, "hf")
    await engine.close()
    return tokens / secs, tokens, secs


def print_table(vllm: dict, hf_gen: tuple, hf_eng: tuple | None) -> None:
    raw = vllm["raw"][0]
    rows = [
        ("raw vLLM AsyncLLM", vllm["raw"]),
        ("VLLMEngine wrapper", vllm["wrapper"]),
        ("wrapper + interrupts, keep", vllm["keep"]),
        ("wrapper + interrupts, abort", vllm["abort"]),
        ("HF generate (one batch)", hf_gen),
    ]
    if hf_eng is not None:
        rows.append(("hf engine (cont. batching)", hf_eng))
    print(f"\n{'row':30} {'tokens':>8} {'seconds':>8} {'tok/s':>8} {'vs raw':>7} {'vs HF':>7}")
    for name, run in rows:
        rate, tokens, secs = run[0], run[1], run[2]
        print(
            f"{name:30} {tokens:8d} {secs:8.2f} {rate:8.1f} "
            f"{rate / raw:6.2f}x {rate / hf_gen[0]:6.2f}x"
        )
    for mode in ("keep", "abort"):
        rate, tokens, secs, lat = vllm[mode]
        # Extra wall time per interrupt at equal work: pause + load + the prefix recompute.
        lost = (secs - tokens / vllm["wrapper"][0]) / max(len(lat), 1)
        print(
            f"interrupt ({mode}): {len(lat)} interrupts; interrupt→resumed (update_weights "
            f"call) median {statistics.median(lat) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms;"
            f" wall time lost per interrupt incl. recompute {lost:.2f} s"
        )
    print(f"idle weight update (135M fp32, /dev/shm): {vllm['idle_update_s'] * 1000:.0f} ms")
    print(f"vLLM engine start-up: {vllm['startup_s']:.1f} s")
    print(
        f"goals: wrapper/raw = {vllm['wrapper'][0] / raw:.2f} (>= 0.9), "
        f"wrapper/HF generate = {vllm['wrapper'][0] / hf_gen[0]:.2f} (>= 2.5)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=4, help="samples per prompt")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--interrupts", type=int, default=4, help="weight updates per run")
    parser.add_argument("--interrupt-rounds", type=int, default=2)
    parser.add_argument("--cpus", type=int, nargs="*", help="cores for vLLM (default: auto)")
    parser.add_argument("--skip-hf-engine", action="store_true")
    args = parser.parse_args()
    model = prepare_smollm2()
    prompts = load_prompts(model, args.prompts)
    vllm = asyncio.run(bench_vllm(args, model, prompts))
    hf_gen = bench_hf_generate(model, prompts, args.n, args.max_tokens)
    _progress("HF generate", hf_gen)
    hf_eng = None
    if not args.skip_hf_engine:
        hf_eng = asyncio.run(bench_hf_engine(model, prompts, args.n, args.max_tokens))
    print_table(vllm, hf_gen, hf_eng)


if __name__ == "__main__":
    main()
