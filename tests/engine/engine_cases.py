"""Behaviour checks shared by the hf and vLLM engine tests (each takes a started engine).

Every case leaves the engine on its base weights, so cases can share one engine.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import torch

from areal_flow.engine.base import GenerationRequest, InferenceEngine, Sample, SamplingConfig
from tests.engine.engine_harness import Reference, collect, generate

_ids = itertools.count()


def fresh_id(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}"


def prompts(count: int, length: int = 6) -> list[list[int]]:
    """Distinct short prompts of ordinary vocabulary ids."""
    return [[100 + 37 * i + j for j in range(length + i % 3)] for i in range(count)]


async def case_logprobs_match_reference(
    engine: InferenceEngine, ref: Reference, temperature: float, tol: float, top_k: int = 0
) -> None:
    """Sampled tokens' log-probs equal log_softmax(logits / T) from a plain forward pass."""
    sampling = SamplingConfig(temperature=temperature, top_k=top_k, max_tokens=24)
    requests = [GenerationRequest(fresh_id("lp"), p, n=2, sampling=sampling) for p in prompts(4)]
    samples = await generate(engine, requests)
    assert len(samples) == 8
    worst = 0.0
    for sample in samples.values():
        assert sample.finish_reason in ("length", "stop")
        expected = ref.logprobs(sample, temperature, top_k=top_k)
        worst = max(worst, (expected - torch.tensor(sample.logprobs)).abs().max().item())
    assert worst < tol, f"max |engine - reference| log-prob error {worst:.2e} >= {tol:.0e}"


async def case_greedy_follows_argmax(engine: InferenceEngine, ref: Reference, tol: float) -> None:
    """Greedy tokens are the reference argmax (up to ``tol`` near-ties); n samples agree."""
    sampling = SamplingConfig(temperature=0.0, max_tokens=16)
    requests = [GenerationRequest(fresh_id("g"), p, n=2, sampling=sampling) for p in prompts(3)]
    samples = await generate(engine, requests)
    for (rid, _), sample in samples.items():
        assert sample.response_token_ids == samples[(rid, 0)].response_token_ids
        logits = ref.logits(sample)
        chosen = logits.gather(-1, torch.tensor(sample.response_token_ids)[:, None]).squeeze(-1)
        assert (logits.max(dim=-1).values - chosen).max().item() <= tol
        assert sample.versions == [engine.version] * 16, (sample.versions, engine.version)


# Long enough that the update lands before the long request ends even when the machine is loaded
# and the finished short request reaches this loop late (160 tokens once raced it in CI).
LONG_TOKENS = 480


async def interrupted_pair(
    engine: InferenceEngine, version: int, weights: Path, long_tokens: int = LONG_TOKENS
) -> Sample:
    """A long greedy request interrupted by a weight update once a short one has finished."""
    short = GenerationRequest(
        fresh_id("short"), prompts(1)[0], sampling=SamplingConfig(0, max_tokens=4)
    )
    long = GenerationRequest(
        fresh_id("long"), prompts(2)[1], sampling=SamplingConfig(0.0, max_tokens=long_tokens)
    )
    await engine.submit(short)
    await engine.submit(long)

    async def on_sample(sample: Sample) -> None:
        if sample.request_id == short.request_id:
            await engine.update_weights(version, weights)

    samples = await collect(engine, 2, on_sample=on_sample)
    return next(s for s in samples if s.request_id == long.request_id)


async def case_interrupt_keeps_versions(
    engine: InferenceEngine, model_dir: Path, base: Path, perturbed: Path, tol: float
) -> None:
    """After an interrupt a sequence carries two versions, and each token's log-prob is that of
    the weights its version names (so the new weights and a fresh KV cache were used)."""
    v0 = engine.version
    sample = await interrupted_pair(engine, v0 + 1, perturbed)
    assert sample.finish_reason == "length" and len(sample.response_token_ids) == LONG_TOKENS
    assert set(sample.versions) == {v0, v0 + 1}, "the update landed after the long request ended"
    switch = sample.versions.index(v0 + 1)
    assert sample.versions == [v0] * switch + [v0 + 1] * (LONG_TOKENS - switch)
    engine_lp = torch.tensor(sample.logprobs)
    for weights, span in ((base, slice(0, switch)), (perturbed, slice(switch, None))):
        expected = Reference(model_dir).load(weights).logprobs(sample, temperature=1.0)
        error = (expected[span] - engine_lp[span]).abs().max().item()
        diffs = (expected - engine_lp).abs()
        assert error < tol, (
            f"tokens of {weights.name}: log-prob error {error:.2e}, switch at {switch}, "
            f"per-token errors {[round(d, 4) for d in diffs.tolist()]}"
        )
    await engine.update_weights(v0 + 2, base)


async def case_update_changes_output(engine: InferenceEngine, base: Path, perturbed: Path) -> None:
    """Perturbed weights change the greedy output; restoring them brings it back."""
    sampling = SamplingConfig(temperature=0.0, max_tokens=24)

    async def greedy() -> list[list[int]]:
        requests = [GenerationRequest(fresh_id("u"), p, sampling=sampling) for p in prompts(3)]
        samples = await generate(engine, requests)
        return [samples[(r.request_id, 0)].response_token_ids for r in requests]

    before = await greedy()
    v0 = engine.version
    await engine.update_weights(v0 + 1, perturbed)
    changed = await greedy()
    await engine.update_weights(v0 + 2, base)
    restored = await greedy()
    assert changed != before
    assert restored == before


async def case_adapter_matches_peft(
    engine: InferenceEngine, model_dir: Path, adapter: Path, base: Path | None, tol: float
) -> None:
    """A LoRA version (an adapter folder) is served as base + adapter: log-probs equal
    transformers + peft's, and differ from the base's; the ``base`` weights load back after
    (None: the engine keeps the adapter, as one serving vLLM's LoRA must)."""
    v0 = engine.version
    await engine.update_weights(v0 + 1, adapter)
    sampling = SamplingConfig(temperature=1.0, max_tokens=16)
    requests = [GenerationRequest(fresh_id("lora"), p, n=2, sampling=sampling) for p in prompts(3)]
    samples = await generate(engine, requests)
    peft_ref, base_ref = Reference(model_dir).with_adapter(adapter), Reference(model_dir)
    worst, moved = 0.0, 0.0
    for sample in samples.values():
        assert sample.versions == [v0 + 1] * len(sample.response_token_ids)
        got = torch.tensor(sample.logprobs)
        worst = max(worst, (peft_ref.logprobs(sample, 1.0) - got).abs().max().item())
        moved = max(moved, (base_ref.logprobs(sample, 1.0) - got).abs().max().item())
    if base is not None:
        await engine.update_weights(v0 + 2, base)
    assert worst < tol, f"max |engine - transformers+peft| log-prob error {worst:.2e}"
    assert moved > 100 * tol, f"the adapter barely changed the policy ({moved:.2e})"


async def case_adapter_interrupts(
    engine: InferenceEngine, model_dir: Path, adapters: tuple[Path, Path], tol: float
) -> None:
    """Adapters arriving mid-sequence (the first on the base, then one replacing it): each
    token's log-prob is that of the adapter its version names (transformers + peft)."""
    v0 = engine.version
    refs = {v0: Reference(model_dir)}
    for step, adapter in enumerate(adapters, start=1):
        before = engine.version
        sample = await interrupted_pair(engine, v0 + step, adapter, long_tokens=600)
        refs[v0 + step] = Reference(model_dir).with_adapter(adapter)
        spans = [(v, sample.versions.count(v)) for v in sorted(set(sample.versions))]
        assert set(sample.versions) == {before, v0 + step}, (spans, sample.finish_reason)
        switch = sample.versions.index(v0 + step)
        got = torch.tensor(sample.logprobs)
        for version, span in ((before, slice(0, switch)), (v0 + step, slice(switch, None))):
            error = (refs[version].logprobs(sample, 1.0)[span] - got[span]).abs().max().item()
            assert error < tol, f"tokens of version {version}: log-prob error {error:.2e}"


async def case_many_interrupts(
    engine: InferenceEngine,
    base: Path,
    perturbed: Path,
    interrupts: int = 20,
    one_version_each: bool = False,
) -> None:
    """``interrupts`` weight updates during generation lose and duplicate no sample; samples
    span several versions (``one_version_each``: none does)."""
    # Staggered lengths: each finished sample triggers an update while longer ones still run.
    requests = [
        GenerationRequest(fresh_id("many"), p, n=2, sampling=SamplingConfig(max_tokens=16 + 6 * i))
        for i, p in enumerate(prompts(24))
    ]
    for request in requests:
        await engine.submit(request)
    v0 = engine.version
    updates = 0

    async def on_sample(sample: Sample) -> None:
        nonlocal updates
        if updates < interrupts:
            updates += 1
            await engine.update_weights(v0 + updates, perturbed if updates % 2 else base)

    samples = await collect(engine, 48, on_sample=on_sample, timeout=300)
    if updates % 2:  # leave the engine on its base weights
        await engine.update_weights(v0 + updates + 1, base)
    keys = sorted((s.request_id, s.sample_index) for s in samples)
    assert keys == sorted((r.request_id, i) for r in requests for i in range(2))
    assert updates == interrupts
    lengths = {r.request_id: r.sampling.max_tokens for r in requests}
    for sample in samples:
        assert sample.finish_reason == "length"
        assert len(sample.response_token_ids) == lengths[sample.request_id]
        assert sample.versions == sorted(sample.versions)
    if one_version_each:  # drain mode: updates wait for the running samples
        assert all(len(set(s.versions)) == 1 for s in samples)
    else:
        assert max(len(set(s.versions)) for s in samples) >= 3


async def case_abort_returns_partial(engine: InferenceEngine) -> None:
    """``abort`` ends every sample of the request with reason abort and its partial tokens."""
    short = GenerationRequest(fresh_id("s"), prompts(1)[0], sampling=SamplingConfig(max_tokens=4))
    long = GenerationRequest(
        fresh_id("a"), prompts(2)[1], n=2, sampling=SamplingConfig(max_tokens=1000)
    )
    await engine.submit(short)
    await engine.submit(long)

    async def on_sample(sample: Sample) -> None:
        if sample.request_id == short.request_id:
            await engine.abort(long.request_id)

    samples = await collect(engine, 3, on_sample=on_sample)
    aborted = [s for s in samples if s.request_id == long.request_id]
    assert sorted(s.sample_index for s in aborted) == [0, 1]
    for sample in aborted:
        assert sample.finish_reason == "abort"
        assert 0 < len(sample.response_token_ids) < 1000
        assert len(sample.logprobs) == len(sample.versions) == len(sample.response_token_ids)
    assert engine.num_unfinished() == 0


async def case_stop_string(engine: InferenceEngine) -> None:
    """A stop string ends the response (finish ``stop``), and the text ends with it."""
    prompt = prompts(1)[0]
    plain = await generate(
        engine,
        [GenerationRequest(fresh_id("p"), prompt, sampling=SamplingConfig(0.0, max_tokens=40))],
    )
    text = next(iter(plain.values())).text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip(), f"pick a visible stop string from {text!r}"
    request = GenerationRequest(
        fresh_id("p"), prompt, sampling=SamplingConfig(0.0, max_tokens=40, stop=(stop,))
    )
    stopped = next(iter((await generate(engine, [request])).values()))
    assert stopped.finish_reason == "stop"
    assert stop in stopped.text and len(stopped.response_token_ids) < 40
    assert text.startswith(stopped.text[: stopped.text.index(stop)])


async def wait_idle(engine: InferenceEngine, timeout: float = 30) -> None:
    """Poll until the engine has nothing in flight."""
    deadline = asyncio.get_running_loop().time() + timeout
    while engine.num_unfinished():
        assert asyncio.get_running_loop().time() < deadline, "engine did not drain"
        await asyncio.sleep(0.01)
