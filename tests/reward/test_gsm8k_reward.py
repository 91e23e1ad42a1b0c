"""The verifier on real data: GSM8K train solutions against their own and shuffled references.

A shuffled reference can equal the true one by coincidence (GSM8K answers are small integers
that repeat: many questions have answer 10, 20, …). Those pairs are counted apart: the verifier
is right to call them correct. The ≥ 99.5 % wrong requirement applies to the others.
"""

from __future__ import annotations

import json
import random
import re
from decimal import Decimal
from pathlib import Path

import pytest

from areal_flow.data import load_problems
from areal_flow.reward import RewardConfig, VerifierPool

GSM8K_TRAIN = Path("/work/shared/data/gsm8k/train.jsonl")

pytestmark = pytest.mark.skipif(
    not GSM8K_TRAIN.is_file(), reason=f"GSM8K train split not found at {GSM8K_TRAIN}"
)


def _solutions_and_references() -> tuple[list[str], list[str]]:
    with GSM8K_TRAIN.open() as lines:
        solutions = [json.loads(line)["answer"] for line in lines if line.strip()]
    references = [p.answer for p in load_problems(GSM8K_TRAIN, name="gsm8k")]
    assert len(solutions) == len(references) == 7473
    return solutions, references


def _as_answer_is(solution: str) -> str:
    """The solution with its '#### N' line restated in the prompt's format."""
    return re.sub(r"^####\s*(.*)$", r"The answer is \1.", solution, flags=re.MULTILINE)


def test_reference_solutions_verify_against_their_answers() -> None:
    solutions, references = _solutions_and_references()
    with VerifierPool(RewardConfig(), workers=2) as pool:
        raw = pool.score_sync(zip(solutions, references, strict=True))
        restated = pool.score_sync(
            (_as_answer_is(s), r) for s, r in zip(solutions, references, strict=True)
        )
    assert sum(v.correct for v in raw) / len(raw) >= 0.995
    assert sum(v.correct for v in restated) / len(restated) >= 0.995
    assert all(v.format_ok for v in restated)
    # '#### N' is not the required format; a few solutions also say "The answer is ..." mid-text.
    assert sum(v.format_ok for v in raw) < 0.01 * len(raw)


def test_shuffled_references_are_wrong_except_true_coincidences() -> None:
    solutions, references = _solutions_and_references()
    shuffled = references[:]
    random.Random(0).shuffle(shuffled)
    same = [Decimal(a) == Decimal(b) for a, b in zip(references, shuffled, strict=True)]
    with VerifierPool(RewardConfig(), workers=2) as pool:
        verdicts = pool.score_sync(zip(solutions, shuffled, strict=True))
    distinct = [v for v, s in zip(verdicts, same, strict=True) if not s]
    coincident = [v for v, s in zip(verdicts, same, strict=True) if s]
    assert sum(not v.correct for v in distinct) / len(distinct) >= 0.995
    assert all(v.correct for v in coincident)  # equal numbers are rightly correct
    assert len(coincident) / len(verdicts) < 0.02
