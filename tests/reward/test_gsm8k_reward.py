"""The verifier on real data: GSM8K train solutions against their own and shuffled references.

A shuffled reference can equal the true one by coincidence (GSM8K answers are small integers
that repeat: many questions have answer 10, 20, …). Those pairs are counted apart: the verifier
is right to call them correct. The ≥ 99.5 % wrong requirement applies to the others.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from areal_flow.reward.agreement import gsm8k_agreement

GSM8K_TRAIN = Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k" / "train.jsonl"

pytestmark = pytest.mark.skipif(
    not GSM8K_TRAIN.is_file(), reason=f"GSM8K train split not found at {GSM8K_TRAIN}"
)


def test_gsm8k_references_verify_and_shuffled_answers_do_not() -> None:
    result = gsm8k_agreement(GSM8K_TRAIN, workers=2)
    assert result.pairs == 7473
    assert result.reference_correct >= 0.995
    assert result.restated_correct >= 0.995
    assert result.restated_format_ok == 1.0
    assert result.shuffled_wrong >= 0.995
    # Coincidences are rare and rightly correct: the overall figure stays close.
    assert result.coincidences < 0.02 * result.pairs
    assert result.shuffled_wrong_all >= 1 - result.coincidences / result.pairs - 0.005
