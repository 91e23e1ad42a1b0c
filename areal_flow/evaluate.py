"""Held-out evaluation: pass@1 and pass@k of a model folder with the training verifier.

Rules:
- Data: ``arithmetic`` (the held-out test split of the built-in task, all training levels),
  ``arithmetic:add1,sub1`` (chosen levels), or a dataset file (JSONL / Parquet / save_to_disk
  folder, GSM8K answers understood). Problems are the first ``problems`` of the split, so two
  evaluations with the same arguments score the same problems.
- Prompts are rendered exactly as the prompt source renders them (its ``PromptFormat``: system
  message, example exchanges, instruction, chat template), and each sample is one episode of the
  generator's episode function with its limits (``EpisodePlan``: one answer by default, a
  tool-using conversation when the graph trains one), so a policy is scored the way it was
  trained. Answers are scored by the same verifier, strict extraction.
- A vLLM engine gets every core of this process unless the settings name ``cpus``
  (``engine_config``).
- A LoRA checkpoint (a peft adapter folder) is scored on its base model with the adapter
  merged in.
- ``episode_metrics`` holds the mean of each named episode metric (tool calls, turns) over all
  samples, and ``episode_failures`` the samples whose episode function failed.
- pass@k uses the unbiased estimator of Chen et al. (2021) from n ≥ k samples per problem:
  1 − C(n − c, k) / C(n, k), averaged over problems.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from areal_flow.data.prompting import PromptFormat
from areal_flow.episodes.runner import EpisodeOutcome, EpisodePlan

if TYPE_CHECKING:
    from areal_flow.eval_progress import EvalProgress

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
    episode_metrics: dict[str, float] = field(default_factory=dict)
    episode_failures: int = 0


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
    *,
    prompt_format: PromptFormat | None = None,
    episode: EpisodePlan | None = None,
    engine_settings: dict[str, Any] | None = None,
    progress: EvalProgress | None = None,
) -> list[EvalResult]:
    """Score several checkpoints of one model family with one engine: it starts on the first
    and loads each next one's weights in place (an engine start costs far more than a load).
    The tokenizer is the first model's. ``prompt_format`` and ``episode`` default to one answer
    to the default prompt. ``engine_settings``: further fields of the engine's config (the
    generator's, see ``GeneratorSpec.engine_settings``). ``progress`` is told each stage and
    each finished episode."""
    if k > samples:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {samples}")
    if not models:
        return []
    names = [str(m) for m in models]
    settings = _Settings(
        data, problems, samples, k, temperature, max_tokens, engine, seed,
        prompt_format or PromptFormat(), episode or EpisodePlan(), dict(engine_settings or {}),
    )  # fmt: skip
    return asyncio.run(_evaluate(names, settings, progress))


@dataclass(frozen=True)
class _Settings:
    data: str
    problems: int
    samples: int
    k: int
    temperature: float
    max_tokens: int
    engine: str
    seed: int
    prompt_format: PromptFormat
    episode: EpisodePlan
    engine_settings: dict[str, Any]


async def _evaluate(
    models: list[str], settings: _Settings, progress: EvalProgress | None
) -> list[EvalResult]:
    from transformers import AutoTokenizer

    from areal_flow.engine.adapter import adapter_base, is_adapter
    from areal_flow.models import prepare_model
    from areal_flow.reward import math_pool

    # A LoRA checkpoint (an adapter folder) is served on its base: the engine starts on the
    # first model's base and loads the adapter as merged weights (areal_flow.engine.adapter).
    folders = [Path(m) if is_adapter(m) else prepare_model(m) for m in models]
    start = prepare_model(adapter_base(folders[0])) if is_adapter(folders[0]) else folders[0]
    tokenizer = AutoTokenizer.from_pretrained(start)
    items = load_eval_problems(settings.data, settings.problems, settings.seed)
    rows = eval_rows(tokenizer, items, settings.prompt_format)
    results = []
    if progress is not None:
        progress.add_total(len(models) * len(rows) * settings.samples)
        progress.stage(f"starting the {settings.engine} engine")
    engine = await _start_engine(
        settings.engine, str(start), settings.seed, engine_config(settings)
    )
    try:
        for version, (model, folder) in enumerate(zip(models, folders, strict=True)):
            if progress is not None:
                label = "base model" if version == 0 and len(models) > 1 else Path(model).name
                progress.stage(f"scoring {label} ({version + 1}/{len(models)})")
            if version or folder != start:  # the first model is loaded here if an adapter
                await engine.update_weights(version + 1, folder)
            outcomes = await run_episodes(
                engine,
                tokenizer,
                rows,
                settings.samples,
                settings.temperature,
                settings.max_tokens,
                settings.episode,
                on_done=progress.advance if progress is not None else None,
            )
            with math_pool(workers=2) as pool:
                results.append(
                    await score_outcomes(
                        pool, model, settings.data, items, outcomes, settings.samples, settings.k
                    )
                )
    finally:
        await engine.close()
    return results


def engine_config(settings: _Settings) -> dict[str, Any]:
    """The engine's settings: the generator's (``engine_settings``) and, for vLLM, every core
    this process may use unless they name cores. An evaluation runs alone, and vLLM's automatic
    binding keeps one core for its scheduler — on two cores, half the machine
    (bench/eval_speed.py)."""
    config = {"max_model_len": settings.episode.max_model_len, **settings.engine_settings}
    if settings.engine == "vllm":
        config.setdefault("cpus", tuple(sorted(os.sched_getaffinity(0))))
    return config


def eval_rows(
    tokenizer: Any, items: list[Any], prompt_format: PromptFormat
) -> list[dict[str, Any]]:
    """One episode row per problem, its prompt rendered as the prompt source renders it."""
    from areal_flow.data.prompting import render_prompt

    rows = []
    for problem in items:
        text, ids = render_prompt(tokenizer, problem.question, prompt_format)
        rows.append(
            {
                **problem.extra,
                "prompt_id": problem.id,
                "level": problem.level,
                "prompt": text,
                "prompt_token_ids": ids,
                "answer": problem.answer,
            }
        )
    return rows


async def run_episodes(
    engine: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    samples: int,
    temperature: float,
    max_tokens: int,
    episode: EpisodePlan,
    on_done: Callable[[], None] | None = None,
) -> dict[int, list[EpisodeOutcome]]:
    """``samples`` episodes per row on a started engine, their outcomes by row index;
    ``on_done`` is called as each episode finishes."""
    from areal_flow.engine.base import SamplingConfig
    from areal_flow.episodes import EngineClient

    sampling = SamplingConfig(temperature=temperature, max_tokens=max_tokens)
    client = EngineClient(engine)
    runner = episode.runner(client, sampling, tokenizer)
    concurrency = asyncio.Semaphore(256)

    async def one(index: int) -> tuple[int, EpisodeOutcome]:
        async with concurrency:
            outcome = await runner.run(rows[index])
        if on_done is not None:
            on_done()
        return index, outcome

    reader = asyncio.create_task(client.serve())
    try:
        done = await asyncio.gather(*(one(i) for i in range(len(rows)) for _ in range(samples)))
    finally:
        reader.cancel()
    outcomes: dict[int, list[EpisodeOutcome]] = defaultdict(list)
    for index, outcome in done:
        outcomes[index].append(outcome)
    return outcomes


async def score_outcomes(
    pool: Any,
    model: str,
    data: str,
    items: list[Any],
    outcomes: dict[int, list[EpisodeOutcome]],
    samples: int,
    k: int,
) -> EvalResult:
    """Score episodes' answers with an open reward pool (the training verifier, strict)."""
    answers = {i: [o.episode.text for o in outcomes[i]] for i in outcomes}
    rows = [
        {"prompt": items[i].question, "response": a, "answer": items[i].answer}
        for i in sorted(answers)
        for a in answers[i]
    ]
    results = await pool.score(rows)
    result = _tally(model, data, items, answers, results, samples, k)
    every = [o for i in sorted(outcomes) for o in outcomes[i]]
    result.episode_failures = sum(o.failure is not None for o in every)
    names = sorted({name for o in every for name in o.episode.metrics})
    result.episode_metrics = {
        name: sum(o.episode.metrics.get(name, 0.0) for o in every) / len(every) for name in names
    }
    return result


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


async def _start_engine(kind: str, model: str, seed: int, settings: dict[str, Any]) -> Any:
    from areal_flow.engine import create_engine

    engine = create_engine(kind, model=model, seed=seed, **settings)
    await engine.start()
    return engine
