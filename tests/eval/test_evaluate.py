"""areal-flow eval: the pass@k estimator by hand, and a real evaluation on a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from areal_flow.evaluate import evaluate, load_eval_problems, pass_at_k


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 0, 1, 0.0),
        (4, 1, 1, 0.25),
        (4, 1, 2, 0.5),
        (4, 2, 2, 5 / 6),
        (4, 4, 3, 1.0),
        (8, 6, 3, 1.0),
    ],
)
def test_pass_at_k_by_hand(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_eval_problems_are_held_out_and_stable() -> None:
    first = load_eval_problems("arithmetic:add1,sub1", 30)
    assert first == load_eval_problems("arithmetic:add1,sub1", 30)
    assert {p.level for p in first} <= {"add1", "sub1"}
    assert all("-test-" in p.id for p in first)


def test_eval_reads_gsm8k_file() -> None:
    gsm8k = Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k" / "train.jsonl"
    problems = load_eval_problems(str(gsm8k), 5)
    assert len(problems) == 5 and problems[0].answer == "72"


@pytest.mark.slow
def test_evaluate_tiny_model_end_to_end(tiny_model_dir: Path) -> None:
    result = evaluate(
        tiny_model_dir, "arithmetic:add1", problems=6, samples=2, k=2, max_tokens=8, engine="hf"
    )
    assert result.problems == {"all": 6, "add1": 6}
    # A random 2-layer model never answers in the required format, so nothing is correct.
    assert result.pass1["all"] == 0.0 and result.pass_k["all"] == 0.0
    assert result.format_rate["all"] == 0.0


def test_tally_scores_real_verdicts_per_level() -> None:
    from areal_flow.data.problem import Problem
    from areal_flow.evaluate import _tally
    from areal_flow.reward import math_pool

    items = [Problem("a", "3 + 4?", "7", "add1"), Problem("b", "9 - 2?", "7", "sub1")]
    answers = {
        0: ["The answer is 7.", "The answer is 8.", "7", "The answer is 7."],
        1: ["The answer is 6.", "so 7", "The answer is 5.", "The answer is 4."],
    }
    rows = [
        {"prompt": items[i].question, "response": a, "answer": items[i].answer}
        for i in sorted(answers)
        for a in answers[i]
    ]
    with math_pool(workers=1) as pool:
        results = pool.score_sync(rows)
    result = _tally("m", "d", items, answers, results, samples=4, k=2)
    assert result.pass1 == {"add1": 0.5, "sub1": 0.0, "all": 0.25}
    assert result.pass_k["add1"] == pytest.approx(1 - 1 / 6)  # 2 of 4 correct, k = 2
    assert result.format_rate == {"add1": 0.75, "sub1": 0.75, "all": 0.75}


def test_a_vllm_evaluation_gets_every_core_unless_its_settings_name_cores() -> None:
    import os

    from areal_flow.data.prompting import PromptFormat
    from areal_flow.episodes.runner import EpisodePlan
    from areal_flow.evaluate import _Settings, engine_config

    def settings(engine: str, **engine_settings: object) -> _Settings:
        return _Settings(
            "arithmetic", 10, 4, 4, 0.7, 96, engine, 0, PromptFormat(), EpisodePlan(),
            dict(engine_settings),
        )  # fmt: skip

    every = tuple(sorted(os.sched_getaffinity(0)))
    config = engine_config(settings("vllm", dtype="float32"))
    assert config["cpus"] == every and config["dtype"] == "float32"
    assert config["max_model_len"] == EpisodePlan().max_model_len
    assert engine_config(settings("vllm", cpus=None))["cpus"] is None  # vLLM's own binding
    assert engine_config(settings("vllm", cpus=(0,)))["cpus"] == (0,)
    assert "cpus" not in engine_config(settings("hf"))
