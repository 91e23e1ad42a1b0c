"""Generation throughput and interrupt latency: the generator node vs raw vLLM vs HF generate.

Usage: ``python bench/generation.py [--prompts 16] [--n 4] [--max-tokens 256]
[--max-running 64] [--rounds 3] [--interrupts 4] [--interrupt-rounds 3]
[--modes inflight recompute abort drain] [--cpus 0 1] [--hf-engine]
[--preload [tcmalloc] [iomp]] [--dtype float32|bfloat16]``

Every row generates the same work: ``--prompts`` GSM8K questions (the first ones of
/work/shared/data/gsm8k/train.jsonl when present, else built-in questions) under SmolLM2-135M-
Instruct's chat template, ``--n`` samples each, T = 1, no top-k/top-p, until EOS or
``--max-tokens``: natural lengths (their spread is printed). At most ``--max-running``
sequences are in flight in every row (the generator's default, 64); with more prompts × n than
that the rest wait. The model is fp32 everywhere (``--dtype bfloat16``: bf16 everywhere). Rows:

- raw vLLM: ``AsyncLLM.generate`` with ``SamplingParams(n=N)`` and the same log-prob output
  (``logprobs=0``, flat), on the generator's own vLLM engine (``max_num_seqs`` = max running);
- generator node: ``nodes.generator.Generator`` as the runtime drives it — one prompt record
  batch in, rollout record batches out (one vLLM request per sample, stitching, versions, Arrow);
- HF generate: ``model.generate`` on the prompts × n rows in order, in batches of max running,
  each left-padded and run until its longest row ends; sampling with the same settings; torch on
  the same cores with as many threads as vLLM's worker;
- hf engine (``--hf-engine``): areal-flow's fallback engine (continuous batching), same cores.

These rows run in ``--rounds`` rounds, in an order rotated each round, in one process: vLLM stays
up but idle while HF runs (its processes then use ~0.01 cores). Then the node with ``--interrupts``
weight updates (``Generator.on_weights``, 135M fp32 from /dev/shm) spread evenly over what an
uninterrupted run takes, rotating the interrupt modes ``--modes`` (``engine.vllm_engine``) over
``--interrupt-rounds`` rounds: ``recompute`` (pause, drop the KV cache, recompute every prefix on
resume; the ratios' baseline), ``inflight`` (the default: pause and continue over the kept KV),
``abort`` (abort and resubmit prompt + partial response) and ``drain`` (finish running sequences
before loading). Reported per mode: tokens/s, the interrupt→resumed latency (how long
``on_weights`` holds generation: pause — for ``drain`` the wait for running sequences —, load,
resume), the wall time lost per interrupt at equal work (that plus any recompute), the share of
samples spanning several versions, and tokens/s against ``recompute``; then the idle update
latency. Every update loads the same weights, so this measures cost only: what each mode does to
off-policyness shows in bench/staleness_sweep.py ``--modes``. Tokens/s counts generated tokens (EOS
included); start-up is not counted. Ratios are medians of per-round ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, get_args

import pyarrow as pa

from areal_flow.engine.base import GenerationRequest, SamplingConfig
from areal_flow.engine.vllm_engine import DEFAULT_PRELOAD, InterruptMode, PreloadLibrary
from areal_flow.models import prepare_smollm2
from areal_flow.node import NodeContext
from areal_flow.nodes.generator import Generator, GeneratorConfig
from areal_flow.roles import Sampling
from areal_flow.schema import SCHEMAS

GSM8K_TRAIN = Path("/work/shared/data/gsm8k/train.jsonl")
FALLBACK_QUESTIONS = [
    "A farmer has 17 sheep and buys 3 times as many goats. How many animals does he have?",
    "Tom reads 12 pages a day. How many days does he need for a 300-page book?",
    "Explain why the sky is blue in two sentences.",
    "Write a short poem about rivers.",
]
Run = tuple[int, float]  # generated tokens, seconds
# generated tokens, seconds, update latencies, share of samples with several versions
InterruptedRun = tuple[int, float, list[float], float]
LENGTHS: list[int] = []  # response lengths of every uninterrupted and interrupted node run


def load_prompts(model_dir: Path, count: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    if GSM8K_TRAIN.is_file():
        lines = GSM8K_TRAIN.read_text().splitlines()[:count]
        questions = [json.loads(line)["question"] for line in lines]
    else:
        questions = [FALLBACK_QUESTIONS[i % len(FALLBACK_QUESTIONS)] for i in range(count)]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = []
    for q in questions:
        encoded: Any = tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True
        )
        prompts.append(list(encoded["input_ids"]))
    return prompts


def write_weights(model_dir: Path, out: Path, dtype: str = "float32") -> Path:
    """The model's state dict as the trainer would publish it (in ``dtype``)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"))
    return out


def prompt_batch(prompts: list[list[int]], n: int, tag: str) -> pa.RecordBatch:
    rows = [
        {
            "prompt_id": str(i),
            "group_id": f"{tag}-{i}",
            "group_size": n,
            "epoch": 0,
            "level": "gsm8k",
            "prompt": "",
            "prompt_token_ids": p,
            "answer": "",
        }
        for i, p in enumerate(prompts)
    ]
    return pa.RecordBatch.from_pylist(rows, schema=SCHEMAS["prompt"])


async def run_node(
    node: Generator,
    batch: pa.RecordBatch,
    interrupt: tuple[int, float, Path] | None = None,
) -> InterruptedRun:
    """One prompt batch through the node; ``interrupt = (count, every, path)`` sends ``count``
    weight notices, one every ``every`` seconds. Returns (tokens, seconds, update latencies,
    share of samples spanning several versions)."""

    async def inputs() -> AsyncIterator[pa.RecordBatch]:
        yield batch

    latencies: list[float] = []
    done = asyncio.Event()

    async def interrupter(count: int, every: float, path: Path) -> None:
        for _ in range(count):
            await asyncio.sleep(every)
            if done.is_set():
                return
            began = time.perf_counter()
            await node.on_weights(node.engine.version + 1, {"path": str(path)})
            latencies.append(time.perf_counter() - began)

    start = time.perf_counter()
    task = asyncio.create_task(interrupter(*interrupt)) if interrupt else None
    lengths: list[int] = []
    multi_version = 0
    async for out in node.run(inputs()):
        assert isinstance(out, pa.RecordBatch)
        lengths += [len(ids) for ids in out.column("response_token_ids").to_pylist()]
        multi_version += sum(len(set(v)) > 1 for v in out.column("versions").to_pylist())
    elapsed = time.perf_counter() - start
    done.set()
    if task is not None:
        await task
    LENGTHS.extend(lengths)
    return sum(lengths), elapsed, latencies, multi_version / max(len(lengths), 1)


async def run_raw(llm: Any, prompts: list[list[int]], n: int, max_tokens: int, tag: str) -> Run:
    """The same work straight through ``AsyncLLM.generate`` (parallel sampling with n)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    params = SamplingParams(
        n=n,
        temperature=1.0,
        max_tokens=max_tokens,
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


class HFGenerate:
    """Batched ``generate``: the rows in batches of ``batch`` (in order), each left-padded and
    run until its longest row finishes; sampling like the vLLM rows."""

    def __init__(
        self,
        model: Path,
        prompts: list[list[int]],
        n: int,
        max_tokens: int,
        batch: int,
        dtype: str = "float32",
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.lm = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)).eval()
        self.pad = AutoTokenizer.from_pretrained(model).pad_token_id
        self.eos = self.lm.generation_config.eos_token_id
        rows = [p for p in prompts for _ in range(n)]
        self.batches = [rows[i : i + batch] for i in range(0, len(rows), batch)]
        self.max_tokens = max_tokens

    def __call__(self, seed: int) -> Run:
        import torch

        torch.manual_seed(seed)
        tokens = 0
        start = time.perf_counter()
        for rows in self.batches:
            width = max(len(p) for p in rows)
            ids = torch.tensor([[self.pad] * (width - len(p)) + p for p in rows])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rows])
            with torch.inference_mode():
                out = self.lm.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    do_sample=True,
                    temperature=1.0,
                    top_k=0,
                    top_p=1.0,
                    max_new_tokens=self.max_tokens,
                    pad_token_id=self.pad,
                    eos_token_id=self.eos,
                )
            for row in out[:, width:].tolist():
                tokens += row.index(self.eos) + 1 if self.eos in row else len(row)
        return tokens, time.perf_counter() - start


async def run_hf_engine(
    model: Path, prompts: list[list[int]], n: int, max_tokens: int, max_running: int
) -> Run:
    from areal_flow.engine.hf_engine import HFEngine, HFEngineConfig

    cpus = tuple(sorted(os.sched_getaffinity(0)))
    engine = HFEngine(HFEngineConfig(model=str(model), max_batch=max_running, cpus=cpus))
    await engine.start()
    sampling = SamplingConfig(temperature=1.0, max_tokens=max_tokens)
    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        await engine.submit(GenerationRequest(f"hf-{i}", prompt, n=n, sampling=sampling))
    tokens, received = 0, 0
    async for sample in engine.samples():
        tokens += len(sample.response_token_ids)
        received += 1
        if received == len(prompts) * n:
            break
    secs = time.perf_counter() - start
    await engine.close()
    return tokens, secs


def _progress(name: str, run: tuple) -> None:
    print(f"[bench] {name}: {run[0]} tokens in {run[1]:.1f} s = {run[0] / run[1]:.1f} tok/s",
          flush=True)  # fmt: skip


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    model = prepare_smollm2()
    prompts = load_prompts(model, args.prompts)
    os.sched_setaffinity(0, args.cpus)
    torch.set_num_threads(len(args.cpus))  # HF generate: as many threads as vLLM's worker
    weights = write_weights(model, Path("/dev/shm/areal-flow-bench-weights"))
    config = GeneratorConfig(
        name="gen",
        model=str(model),
        sampling=Sampling(temperature=1.0, max_tokens=args.max_tokens),
        max_running=args.max_running,
        kv_cache_gib=2,  # every running sequence fits: no preemption in any row
        preload=tuple(args.preload),
        dtype=args.dtype,
    )
    node = Generator(config)
    run_dir = Path(tempfile.mkdtemp(prefix="bench-generation-"))
    began = time.perf_counter()
    await node.setup(NodeContext(config, 0, 1, run_dir, seed=0, cpus=list(args.cpus)))
    out: dict[str, Any] = {"startup_s": time.perf_counter() - began}
    hf_generate = HFGenerate(model, prompts, args.n, args.max_tokens, args.max_running, args.dtype)
    await run_node(node, prompt_batch(prompts[:4], 1, "warm"))
    await run_raw(node.engine._llm, prompts[:4], 1, 16, "warm")
    LENGTHS.clear()

    runs: dict[str, list[Run]] = {"raw": [], "node": [], "hf": []}
    cases = list(runs)
    for r in range(args.rounds):
        for case in cases[r % 3 :] + cases[: r % 3]:
            if case == "raw":
                llm = node.engine._llm
                run = await run_raw(llm, prompts, args.n, args.max_tokens, f"raw{r}")
            elif case == "node":
                run = (await run_node(node, prompt_batch(prompts, args.n, f"node{r}")))[:2]
            else:
                run = hf_generate(r)  # blocks the loop: vLLM is idle meanwhile
            runs[case].append(run)
            _progress(f"round {r} {case}", run)
    out["runs"] = runs

    idle = []
    for _ in range(5):
        t0 = time.perf_counter()
        await node.on_weights(node.engine.version + 1, {"path": str(weights)})
        idle.append(time.perf_counter() - t0)
    out["idle_update_s"] = statistics.median(idle)

    every = statistics.median(secs for _, secs in runs["node"]) / (args.interrupts + 1)
    modes: dict[str, list[InterruptedRun]] = {mode: [] for mode in args.modes}
    for r in range(args.interrupt_rounds):
        shift = r % len(args.modes)
        for mode in args.modes[shift:] + args.modes[:shift]:
            # The engine reads the mode at each pause and submission: one engine serves all.
            engine = node.engine
            engine.config = engine.config.model_copy(update={"interrupt_mode": mode})
            batch = prompt_batch(prompts, args.n, f"{mode}{r}")
            modes[mode].append(await run_node(node, batch, (args.interrupts, every, weights)))
            _progress(f"round {r} node + {args.interrupts} interrupts, {mode}", modes[mode][-1])
    out["modes"] = modes
    await node.teardown()
    if args.hf_engine:
        out["hf_engine"] = await run_hf_engine(
            model, prompts, args.n, args.max_tokens, args.max_running
        )
        _progress("hf engine", out["hf_engine"])
    return out


def rate(run: tuple) -> float:
    return float(run[0] / run[1])


def paired(a: list, b: list) -> float:
    """Median over rounds of rate(a) / rate(b)."""
    return statistics.median(rate(x) / rate(y) for x, y in zip(a, b, strict=True))


def print_tables(res: dict[str, Any], args: argparse.Namespace) -> None:
    runs, modes = res["runs"], res["modes"]
    rows: list[tuple[str, list, bool]] = [  # name, runs, interleaved with raw and HF
        ("raw vLLM AsyncLLM", runs["raw"], True),
        ("generator node", runs["node"], True),
        (f"HF generate (batches of {args.max_running})", runs["hf"], True),
    ]
    if "hf_engine" in res:
        rows.append(("hf engine (cont. batching)", [res["hf_engine"]], False))
    print(
        f"\n{args.prompts} prompts x {args.n} samples, max {args.max_tokens} tokens, "
        f"cores {args.cpus}; medians of {args.rounds} rounds"
    )
    print(f"{'row':28} {'tokens':>7} {'s':>6} {'tok/s':>7} {'vs raw':>7} {'vs HF':>7}")
    for name, row_runs, interleaved in rows:
        tokens = statistics.median(r[0] for r in row_runs)
        secs = statistics.median(r[1] for r in row_runs)
        med = statistics.median(rate(r) for r in row_runs)
        vs_raw = f"{paired(row_runs, runs['raw']):.2f}x" if interleaved else "-"
        vs_hf = f"{paired(row_runs, runs['hf']):.2f}x" if interleaved else "-"
        print(f"{name:28} {tokens:>7.0f} {secs:>6.1f} {med:>7.1f} {vs_raw:>7} {vs_hf:>7}")
    cuts = statistics.quantiles(LENGTHS, n=10)
    capped = sum(n >= args.max_tokens for n in LENGTHS) / len(LENGTHS)
    print(
        f"response lengths (node runs): p10 {cuts[0]:.0f}, median {statistics.median(LENGTHS):.0f}"
        f", p90 {cuts[-1]:.0f}, max {max(LENGTHS)}; {capped:.0%} stopped at max tokens"
    )
    node_rate = statistics.median(rate(r) for r in runs["node"])
    for mode, mode_runs in modes.items():
        if not mode_runs:
            continue
        lat = [x for run in mode_runs for x in run[2]] or [0.0]
        # Extra wall time per interrupt at equal work: pause + load + any prefix recompute.
        lost = statistics.median((s - t / node_rate) / max(len(r), 1) for t, s, r, _ in mode_runs)
        mode_rate = statistics.median(rate(r) for r in mode_runs)
        multi = statistics.median(r[3] for r in mode_runs)
        vs = (
            f"; {paired(mode_runs, modes['recompute']):.2f}x recompute"
            if "recompute" in modes
            else ""
        )
        print(
            f"node + interrupts, {mode}: {mode_rate:.1f} tok/s ({mode_rate / node_rate:.2f}x "
            f"uninterrupted{vs}); {len(lat)} interrupts; interrupt→resumed median "
            f"{statistics.median(lat) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms; "
            f"wall time lost per interrupt {lost:.2f} s; {multi:.0%} of samples multi-version"
        )
    print(f"idle weight update (135M fp32, /dev/shm): {res['idle_update_s'] * 1000:.0f} ms")
    print(f"generator start-up (vLLM engine): {res['startup_s']:.1f} s")
    print(
        f"goals: node/raw = {paired(runs['node'], runs['raw']):.2f} (>= 0.9), "
        f"node/HF generate = {paired(runs['node'], runs['hf']):.2f} (>= 2.5)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=4, help="samples per prompt")
    parser.add_argument(
        "--max-running", type=int, default=64, help="sequences in flight (node, vLLM, HF batch)"
    )
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interrupts", type=int, default=4, help="weight updates per run")
    parser.add_argument("--interrupt-rounds", type=int, default=3)
    parser.add_argument(
        "--modes", nargs="+", default=list(get_args(InterruptMode)),
        choices=get_args(InterruptMode), help="interrupt modes compared (engine.vllm_engine)",
    )  # fmt: skip
    parser.add_argument(
        "--cpus", type=int, nargs="+", default=sorted(os.sched_getaffinity(0)), help="cores"
    )
    parser.add_argument("--hf-engine", action="store_true", help="also the hf engine row")
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32",
        help="weights and compute of every row (vLLM, the node and HF alike)",
    )  # fmt: skip
    parser.add_argument(
        "--preload", nargs="*", default=list(DEFAULT_PRELOAD), choices=get_args(PreloadLibrary),
        help="libraries preloaded into vLLM's processes (the generator's option); none: bare",
    )  # fmt: skip
    args = parser.parse_args()
    print_tables(asyncio.run(bench(args)), args)


if __name__ == "__main__":
    main()
