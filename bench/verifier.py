"""Verifier throughput: answers per second in-process and with 1 and 2 worker processes.

Usage: ``python bench/verifier.py [--answers 6000] [--workers 1 2] [--pathological 0.001]``

The answer mix imitates what a math-RL run scores: short arithmetic replies (half wrong), long
GSM8K-style solutions ending in "The answer is N.", LaTeX fractions in \\boxed{} (the math-verify
path), replies with units, replies with no answer at all, and a ``--pathological`` share of
adversarial ones (each may cost math-verify's 1 s alarm, so even 0.1 % shows in the total).
GSM8K solutions come from /work/shared/data/gsm8k/train.jsonl when present, else from the
arithmetic task. Prints a table; pool start-up time is reported separately, not counted.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from collections import Counter
from pathlib import Path

from areal_flow.data import ArithmeticTask
from areal_flow.reward import RewardConfig, math_pool, score_answer

GSM8K_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"


def _gsm8k_solutions(rng: random.Random, n: int) -> list[tuple[str, str]]:
    if GSM8K_TRAIN.is_file():
        rows = [json.loads(line) for line in GSM8K_TRAIN.read_text().splitlines() if line.strip()]
        picked = rng.sample(rows, min(n, len(rows)))
        out = []
        for row in picked:
            answer = row["answer"].rsplit("####", 1)[1].strip().replace(",", "")
            text = re.sub(r"^####\s*(.*)$", r"The answer is \1.", row["answer"], flags=re.M)
            out.append((text, answer))
        return out
    task = ArithmeticTask(seed=rng.randrange(1000), mix={"word2": 1.0})
    return [
        (f"{p.question} Let me think. The answer is {p.answer}.", p.answer)
        for p in (task.item("train", i) for i in range(n))
    ]


def answer_mix(n: int, seed: int, pathological: float) -> list[tuple[str, str]]:
    """``n`` (response, reference) pairs in the proportions described in the module docstring."""
    rng = random.Random(seed)
    task = ArithmeticTask(seed=seed)
    mix: list[tuple[str, str]] = []
    for i in range(int(n * 0.40)):
        p = task.item("train", i)
        said = p.answer if rng.random() < 0.5 else str(int(p.answer) + rng.randint(1, 3))
        mix.append((f"{p.question[8:-1]} = {said}. The answer is {said}.", p.answer))
    mix += _gsm8k_solutions(rng, int(n * 0.25))
    for _ in range(int(n * 0.15)):
        a, b = rng.randint(1, 999), rng.randint(2, 999)  # mostly distinct: no cache hits
        said = f"\\frac{{{a * rng.choice((1, 2))}}}{{{b * rng.choice((1, 2))}}}"
        mix.append((f"Simplify step by step.\n\\boxed{{{said}}}", f"\\frac{{{a}}}{{{b}}}"))
    for _ in range(int(n * 0.10)):
        value = rng.randint(1, 500)
        mix.append((f"She pays ${value} in total. The answer is ${value} dollars.", str(value)))
    adversarial = ["\\boxed{10^{10^{10}}}", "\\boxed{" + "{" * 40, "The answer is " + "9" * 300]
    for i in range(round(n * pathological)):
        mix.append((adversarial[i % len(adversarial)], "5"))
    while len(mix) < n:
        mix.append(("I think we should add the numbers and then see what happens.", "7"))
    rng.shuffle(mix)
    return mix


def bench_in_process(pairs: list[tuple[str, str]], config: RewardConfig) -> float:
    start = time.perf_counter()
    for response, reference in pairs:
        score_answer(response, reference, config)
    return time.perf_counter() - start


def bench_pool(
    pairs: list[tuple[str, str]], config: RewardConfig, workers: int
) -> tuple[float, float, Counter[str]]:
    start = time.perf_counter()
    with math_pool(config, workers=workers, timeout_s=5.0) as pool:
        started = time.perf_counter()
        rows = [{"prompt": "", "response": r, "answer": a} for r, a in pairs]
        results = pool.score_sync(rows)
        scored = time.perf_counter()
    return started - start, scored - started, Counter(r.verdict for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--answers", type=int, default=6000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pathological", type=float, default=0.001, help="adversarial share")
    args = parser.parse_args()
    config = RewardConfig()
    pairs = answer_mix(args.answers, args.seed, args.pathological)
    rows: list[tuple[str, str, float, float | None]] = []
    # In-process has no deadline, so the pathological answers run to math-verify's alarm.
    elapsed = bench_in_process(pairs, config)
    rows.append(("in-process", "-", elapsed, None))
    reasons: Counter[str] = Counter()
    for workers in args.workers:
        startup, pool_elapsed, reasons = bench_pool(pairs, config, workers)
        rows.append(("pool", str(workers), pool_elapsed, startup))
    print(f"{len(pairs)} answers; verdicts: {dict(reasons.most_common())}")
    header = ("mode", "workers", "seconds", "answers/s", "ms/answer", "start s")
    print(
        f"{header[0]:<11} "
        + " ".join(f"{h:>{w}}" for h, w in zip(header[1:], (7, 8, 10, 10, 8), strict=True))
    )
    for mode, workers_text, seconds, started_in in rows:
        start_text = f"{started_in:8.2f}" if started_in is not None else f"{'-':>8}"
        print(
            f"{mode:<11} {workers_text:>7} {seconds:8.2f} {len(pairs) / seconds:10.0f} "
            f"{1000 * seconds / len(pairs):10.3f} {start_text}"
        )


if __name__ == "__main__":
    main()
