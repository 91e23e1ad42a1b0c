"""The verifier against GSM8K's own answers (issue: reward on real data).

Scores all 7,473 GSM8K train solutions against their own final answer (raw ``#### N`` and
restated as "The answer is N.") and against a shuffled answer, and prints the agreement figures
and the time per answer. The data is read from ``../shared/data/gsm8k/train.jsonl`` beside the
repository (or ``--data``); nothing is copied into the project.

    python bench/gsm8k_agreement.py [--workers 2] [--data PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from areal_flow.reward.agreement import gsm8k_agreement

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="Seed of the answer shuffle.")
    args = parser.parse_args()
    result = gsm8k_agreement(args.data, args.workers, args.seed)
    table = Table(title=f"GSM8K train ({result.pairs} solutions), {args.workers} workers")
    table.add_column("check")
    table.add_column("result", justify="right")
    table.add_row("own answer, raw '#### N', scored correct", f"{result.reference_correct:.2%}")
    table.add_row("own answer, 'The answer is N.', correct", f"{result.restated_correct:.2%}")
    table.add_row("shuffled answer (differing), scored wrong", f"{result.shuffled_wrong:.2%}")
    table.add_row("shuffled answer (all pairs), scored wrong", f"{result.shuffled_wrong_all:.2%}")
    table.add_row("shuffle coincidences (same number)", str(result.coincidences))
    table.add_row("time per answer", f"{result.seconds_per_answer * 1000:.2f} ms")
    Console().print(table)


if __name__ == "__main__":
    main()
