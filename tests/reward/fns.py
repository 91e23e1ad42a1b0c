"""Reward functions for the reward-pool tests: good ones, and every way user code goes wrong."""

from __future__ import annotations

import os
import time
from typing import Any


def brevity(prompt: str, response: str, answer: str, **row: Any) -> dict[str, Any]:
    """Graded: 1 for the right answer, minus a length penalty; extra row fields as a metric."""
    correct = answer in response
    return {
        "reward": float(correct) - 0.01 * len(response),
        "verdict": "correct" if correct else "wrong",
        "correct": correct,
        "length": len(response),
        "bonus": float(row.get("bonus", 0.0)),
    }


def plain_float(prompt: str, response: str, answer: str, **row: Any) -> float:
    return 0.5 if response == answer else 0.25


def raises(prompt: str, response: str, answer: str, **row: Any) -> float:
    raise ValueError(f"cannot score {response!r}")


def returns_text(prompt: str, response: str, answer: str, **row: Any) -> Any:
    return "great answer"


def returns_nan(prompt: str, response: str, answer: str, **row: Any) -> Any:
    return {"reward": float("nan")}


def returns_no_reward(prompt: str, response: str, answer: str, **row: Any) -> Any:
    return {"score": 1.0}


def sleeps(prompt: str, response: str, answer: str, **row: Any) -> float:
    time.sleep(float(response))
    return 1.0


def dies(prompt: str, response: str, answer: str, **row: Any) -> float:
    if response == "die":
        os._exit(3)
    return 1.0
