"""Checks of the vLLM engine's interrupt modes (``VLLMEngineConfig.interrupt_mode``).

Each case takes a started engine and leaves it on its base weights, so cases share one engine.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import torch

from areal_flow.engine.base import GenerationRequest, Sample, SamplingConfig
from areal_flow.engine.vllm_engine import VLLMEngine
from tests.engine.engine_cases import LONG_TOKENS, fresh_id, interrupted_pair, prompts
from tests.engine.engine_harness import Reference, collect, generate


def long_prompt(length: int = 300) -> list[int]:
    """A prompt spanning whole KV blocks (32 tokens on CPU here; only full blocks are
    prefix-cached)."""
    return [100 + (37 * j) % 5000 for j in range(length)]


async def case_group_shares_short_prompt(engine: VLLMEngine, ref: Reference, tol: float) -> None:
    """The samples of one group share their prompt's whole 32-token blocks even when the prompt
    is shorter than vLLM-CPU's default 128-token block (math_rl's are ~55 tokens): each sample
    after the first reads them from the prefix cache, and the shared KV gives the reference's
    log-probs."""
    prompt = long_prompt(70)  # two whole 32-token blocks and a partial one
    before = engine.cached_prompt_tokens
    request = GenerationRequest(
        fresh_id("group"), prompt, n=4, sampling=SamplingConfig(temperature=1.0, max_tokens=6)
    )
    samples = list((await generate(engine, [request])).values())
    cached = engine.cached_prompt_tokens - before
    assert cached >= 3 * 64, f"{cached} prompt tokens shared by 4 samples of a 70-token prompt"
    for sample in samples:
        error = (ref.logprobs(sample, 1.0) - torch.tensor(sample.logprobs)).abs().max()
        assert error.item() < tol, f"sample {sample.sample_index} on shared KV: error {error:.2e}"


async def case_inflight_continues_over_old_kv(
    engine: VLLMEngine, model_dir: Path, base: Path, perturbed: Path, tol: float
) -> None:
    """``inflight``: a sequence interrupted by an update carries two versions; its tokens before
    the switch are the old weights' (fresh forward), those after are the new weights' over the
    KV the old weights computed, and not a fresh forward of the new weights: nothing was
    recomputed."""
    v0 = engine.version
    sample = await interrupted_pair(engine, v0 + 1, perturbed)
    assert sample.finish_reason == "length" and len(sample.response_token_ids) == LONG_TOKENS
    assert set(sample.versions) == {v0, v0 + 1}, sample.versions
    switch = sample.versions.index(v0 + 1)
    assert sample.versions == [v0] * switch + [v0 + 1] * (LONG_TOKENS - switch)
    assert switch > 0
    got = torch.tensor(sample.logprobs)
    old, new = Reference(model_dir).load(base), Reference(model_dir).load(perturbed)
    before = (old.logprobs(sample, 1.0)[:switch] - got[:switch]).abs().max().item()
    assert before < tol, f"tokens before the switch: log-prob error {before:.2e}"
    over_old_kv = (old.logprobs_over_old_kv(sample, switch, new) - got[switch:]).abs().max()
    assert over_old_kv.item() < tol, (
        f"tokens after the switch vs new weights over old KV: {over_old_kv:.2e}"
    )
    recomputed = (new.logprobs(sample, 1.0)[switch:] - got[switch:]).abs().max().item()
    assert recomputed > 100 * tol, (
        f"tokens after the switch equal a fresh forward of the new weights ({recomputed:.2e}): "
        "the prefix was recomputed, not kept"
    )
    await engine.update_weights(v0 + 2, base)


async def case_no_stale_prefix_after_update(
    engine: VLLMEngine, model_dir: Path, base: Path, perturbed: Path, tol: float
) -> None:
    """A prompt prefix-cached under the old weights is not reused after an update: the first
    request with it on the new weights reads no cached token and has the new weights' fresh
    log-probs; the cache itself stays on (the same prompt is reused before the update and
    again after it, on the new weights' KV)."""
    prompt = long_prompt()
    sampling = SamplingConfig(temperature=1.0, max_tokens=8)

    async def once() -> tuple[Sample, int]:
        before = engine.cached_prompt_tokens
        request = GenerationRequest(fresh_id("prefix"), prompt, sampling=sampling)
        sample = next(iter((await generate(engine, [request])).values()))
        return sample, engine.cached_prompt_tokens - before

    await once()
    assert (await once())[1] > 0, "the prefix cache is off: this case checks nothing"
    v0 = engine.version
    await engine.update_weights(v0 + 1, perturbed)
    new = Reference(model_dir).load(perturbed)
    try:
        for attempt in ("first", "second"):
            sample, cached = await once()
            assert sample.versions == [v0 + 1] * len(sample.versions)
            if attempt == "first":
                assert cached == 0, f"{cached} prompt tokens reused from the old weights' KV"
            else:
                assert cached > 0, "the new weights' prefix was not cached"
            error = (new.logprobs(sample, 1.0) - torch.tensor(sample.logprobs)).abs().max()
            assert error.item() < tol, f"{attempt} request on new weights: error {error:.2e}"
    finally:
        await engine.update_weights(v0 + 2, base)


async def case_drain_finishes_first(engine: VLLMEngine, perturbed: Path, base: Path) -> None:
    """``drain``: an update waits for the running sequence, which keeps one version; a request
    submitted while it drains queues and runs on the new weights only."""
    v0 = engine.version
    short = GenerationRequest(
        fresh_id("short"), prompts(1)[0], sampling=SamplingConfig(0.0, max_tokens=4)
    )
    long = GenerationRequest(
        fresh_id("long"), prompts(2)[1], sampling=SamplingConfig(0.0, max_tokens=LONG_TOKENS)
    )
    late = GenerationRequest(
        fresh_id("late"), prompts(3)[2], sampling=SamplingConfig(0.0, max_tokens=8)
    )
    await engine.submit(short)
    await engine.submit(long)
    order: list[str] = []
    update: list[asyncio.Task[None]] = []

    async def updated() -> None:
        await engine.update_weights(v0 + 1, perturbed)
        order.append("updated")

    async def on_sample(sample: Sample) -> None:
        order.append(sample.request_id)
        if sample.request_id == short.request_id:
            update.append(asyncio.create_task(updated()))
            while not await engine._llm.is_paused():  # the drain has begun in vLLM
                await asyncio.sleep(0.005)
            await engine.submit(late)

    samples = {s.request_id: s for s in await collect(engine, 3, on_sample=on_sample)}
    await update[0]
    await engine.update_weights(v0 + 2, base)
    assert samples[long.request_id].versions == [v0] * LONG_TOKENS
    assert samples[late.request_id].versions == [v0 + 1] * 8
    assert order.index(long.request_id) < order.index("updated"), order
