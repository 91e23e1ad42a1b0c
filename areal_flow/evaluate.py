"""Held-out evaluation: pass@1 and pass@k of a model folder with the training verifier.

Rules:
- Data: ``arithmetic`` (the held-out test split of the built-in task, all training levels),
  ``arithmetic:add1,sub1`` (chosen levels), or a dataset file (JSONL / Parquet / save_to_disk
  folder, GSM8K answers understood). Problems are the first ``problems`` of the split, so two
  evaluations with the same arguments score the same problems.
- Prompts are rendered exactly as the prompt source renders them (chat template + the answer
  format instruction); answers are scored by the same verifier, strict extraction.
- A LoRA checkpoint (a peft adapter folder) is scored on its base model with the adapter
  merged in.
- pass@k uses the unbiased estimator of Chen et al. (2021) from n ≥ k samples per problem:
  1 − C(n − c, k) / C(n, k), averaged over problems.
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ALL = "all"


@dataclass
class EvalResult:
    """Scores overall (key ``all``) and per level."""

    model: str
    data: str
    samples: int
    k: int
    pass1: dict[str, float] = field(default_factory=dict)
    pass_k: dict[str, float] = field(default_factory=dict)
    format_rate: dict[str, float] = field(default_factory=dict)
    problems: dict[str, int] = field(default_factory=dict)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples (drawn from n with c correct) is correct."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def load_eval_problems(spec: str, problems: int, seed: int = 0) -> list[Any]:
    """The problems named by ``spec`` (see module rules)."""
    from areal_flow.data.arithmetic import DEFAULT_MIX, ArithmeticTask
    from areal_flow.data.datasets import load_problems

    if spec == "arithmetic" or spec.startswith("arithmetic:"):
        levels = spec.partition(":")[2]
        mix = {level: 1.0 for level in levels.split(",")} if levels else dict(DEFAULT_MIX)
        return list(ArithmeticTask(seed=seed, mix=mix).dataset("test", problems))
    return list(load_problems(spec))[:problems]


def evaluate(model: str | Path, data: str = "arithmetic", **settings: Any) -> EvalResult:
    """Score one model; ``settings`` as ``evaluate_models``."""
    return evaluate_models([model], data, **settings)[0]


def evaluate_models(
    models: Sequence[str | Path],
    data: str = "arithmetic",
    problems: int = 200,
    samples: int = 4,
    k: int = 4,
    temperature: float = 0.7,
    max_tokens: int = 96,
    engine: Literal["vllm", "hf"] = "vllm",
    seed: int = 0,
) -> list[EvalResult]:
    """Score several checkpoints of one model family with one engine: it starts on the first
    and loads each next one's weights in place (an engine start costs far more than a load).
    The tokenizer is the first model's."""
    if k > samples:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {samples}")
    if not models:
        return []
    names = [str(m) for m in models]
    return asyncio.run(
        _evaluate(names, data, problems, samples, k, temperature, max_tokens, engine, seed)
    )


async def _evaluate(
    models: list[str],
    data: str,
    problems: int,
    samples: int,
    k: int,
    temperature: float,
    max_tokens: int,
    engine_kind: str,
    seed: int,
) -> list[EvalResult]:
    from transformers import AutoTokenizer

    from areal_flow.data.problem import prompt_text
    from areal_flow.engine.adapter import adapter_base, is_adapter
    from areal_flow.models import prepare_model

    # A LoRA checkpoint (an adapter folder) is served on its base: the engine starts on the
    # first model's base and loads the adapter as merged weights (areal_flow.engine.adapter).
    folders = [Path(m) if is_adapter(m) else prepare_model(m) for m in models]
    start = prepare_model(adapter_base(folders[0])) if is_adapter(folders[0]) else folders[0]
    tokenizer = AutoTokenizer.from_pretrained(start)
    items = load_eval_problems(data, problems, seed)
    prompts = []
    for problem in items:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt_text(problem.question)}],
            tokenize=False,
            add_generation_prompt=True,
        )
        prompts.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    results = []
    engine = await _start_engine(engine_kind, str(start), seed)
    try:
        for version, (model, folder) in enumerate(zip(models, folders, strict=True)):
            if version or folder != start:  # the first model is loaded here if an adapter
                await engine.update_weights(version + 1, folder)
            answers = await _generate(engine, prompts, samples, temperature, max_tokens)
            results.append(await _score(model, data, items, answers, samples, k))
    finally:
        await engine.close()
    return results


async def _generate(
    engine: Any, prompts: list[list[int]], samples: int, temperature: float, max_tokens: int
) -> dict[int, list[str]]:
    from areal_flow.engine.base import GenerationRequest, SamplingConfig

    sampling = SamplingConfig(temperature=temperature, max_tokens=max_tokens)
    for index, ids in enumerate(prompts):
        await engine.submit(GenerationRequest(str(index), ids, n=samples, sampling=sampling))
    answers: dict[int, list[str]] = defaultdict(list)
    if not prompts:
        return answers
    async for sample in engine.samples():
        answers[int(sample.request_id)].append(sample.text)
        if sum(len(v) for v in answers.values()) == len(prompts) * samples:
            break
    return answers


async def _score(
    model: str, data: str, items: list[Any], answers: dict[int, list[str]], samples: int, k: int
) -> EvalResult:
    from areal_flow.reward import math_pool

    with math_pool(workers=2) as pool:
        rows = [
            {"prompt": items[i].question, "response": a, "answer": items[i].answer}
            for i in sorted(answers)
            for a in answers[i]
        ]
        results = await pool.score(rows)
    return _tally(model, data, items, answers, results, samples, k)


def _tally(
    model: str,
    data: str,
    items: list[Any],
    answers: dict[int, list[str]],
    results: list[Any],
    samples: int,
    k: int,
) -> EvalResult:
    result = EvalResult(model=model, data=data, samples=samples, k=k)
    by_level: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    cursor = 0
    for index in sorted(answers):
        chunk = results[cursor : cursor + len(answers[index])]
        cursor += len(chunk)
        correct = int(sum(r.metrics.get("correct", 0.0) for r in chunk))
        formatted = int(sum(r.metrics.get("format_ok", 0.0) for r in chunk))
        for level in (ALL, items[index].level):
            by_level[level].append((len(chunk), correct, formatted))
    for level, rows in sorted(by_level.items()):
        result.problems[level] = len(rows)
        result.pass1[level] = sum(c / n for n, c, _ in rows) / len(rows)
        result.pass_k[level] = sum(pass_at_k(n, c, k) for n, c, _ in rows) / len(rows)
        result.format_rate[level] = sum(f / n for n, _, f in rows) / len(rows)
    return result


async def _start_engine(kind: str, model: str, seed: int) -> Any:
    from areal_flow.engine import create_engine

    engine = create_engine(kind, model=model, seed=seed)
    await engine.start()
    return engine
