"""How far the verifier agrees with a dataset's own answers: the check of a reward on real data.

Rules:
- *Reference agreement*: each reference solution, scored against its own final answer, should
  be correct — raw (GSM8K's ``#### N`` line) and restated in the prompt's format
  ("The answer is N.").
- *Shuffled disagreement*: each solution scored against another question's answer (a seeded
  shuffle) should be wrong. A shuffled answer can equal the true one by coincidence (GSM8K
  answers are small integers that repeat); those pairs are counted apart, since calling them
  correct is right.
- Times are wall-clock seconds of the verifier pool's scoring, pool start-up excluded.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from areal_flow.data import load_problems
from areal_flow.reward.math_reward import math_pool
from areal_flow.reward.pool import RewardResult


@dataclass(frozen=True)
class Agreement:
    """Fractions over all pairs of a dataset (see the module rules)."""

    pairs: int
    reference_correct: float  # raw solutions vs their own answers
    restated_correct: float  # "The answer is N." restatement vs their own answers
    restated_format_ok: float
    shuffled_wrong: float  # over pairs whose shuffled answer differs
    shuffled_wrong_all: float  # over all pairs, coincidences included
    coincidences: int
    seconds_per_answer: float


def restate(solution: str) -> str:
    """The solution with its ``#### N`` line restated as "The answer is N."."""
    return re.sub(r"^####\s*(.*)$", r"The answer is \1.", solution, flags=re.MULTILINE)


def gsm8k_agreement(path: Path, workers: int = 2, seed: int = 0) -> Agreement:
    """Score every GSM8K solution of ``path`` against its own and a shuffled reference."""
    with path.open() as lines:
        solutions = [json.loads(line)["answer"] for line in lines if line.strip()]
    references = [p.answer for p in load_problems(path, name="gsm8k")]
    if len(solutions) != len(references):
        raise ValueError(f"{path}: {len(solutions)} solutions but {len(references)} references")
    shuffled = references[:]
    random.Random(seed).shuffle(shuffled)
    same = [_equal(a, b) for a, b in zip(references, shuffled, strict=True)]
    with math_pool(workers=workers) as pool:
        began = time.perf_counter()
        raw = [_correct(r) for r in pool.score_sync(_rows(solutions, references))]
        restated_results = pool.score_sync(_rows(map(restate, solutions), references))
        crossed = [_correct(r) for r in pool.score_sync(_rows(solutions, shuffled))]
        elapsed = time.perf_counter() - began
    restated = [_correct(r) for r in restated_results]
    n = len(solutions)
    distinct = [c for c, s in zip(crossed, same, strict=True) if not s]
    return Agreement(
        pairs=n,
        reference_correct=sum(raw) / n,
        restated_correct=sum(restated) / n,
        restated_format_ok=sum(r.metrics.get("format_ok", 0.0) for r in restated_results) / n,
        shuffled_wrong=sum(not c for c in distinct) / max(len(distinct), 1),
        shuffled_wrong_all=sum(not c for c in crossed) / n,
        coincidences=n - len(distinct),
        seconds_per_answer=elapsed / (3 * n),
    )


def _rows(responses: Iterable[str], references: list[str]) -> list[dict[str, str]]:
    return [
        {"prompt": "", "response": r, "answer": a}
        for r, a in zip(responses, references, strict=True)
    ]


def _correct(result: RewardResult) -> bool:
    return result.metrics.get("correct", 0.0) == 1.0


def _equal(a: str, b: str) -> bool:
    try:
        return Decimal(a) == Decimal(b)
    except InvalidOperation:
        return a.strip() == b.strip()
