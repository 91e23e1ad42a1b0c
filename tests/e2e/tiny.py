"""The math-shaped graphs shrunk for tests: the tiny random model on the hf engine, two steps."""

from __future__ import annotations

from pathlib import Path


def tiny_overrides(model: Path, **extra: object) -> list[str]:
    """``--set`` items for a graph with prompts/gen/filter/trainer nodes (math_rl's names)."""
    settings: dict[str, object] = {
        "nodes.prompts.model": model,
        "nodes.prompts.group_size": 4,
        "nodes.gen.model": model,
        "nodes.gen.engine": "hf",
        "nodes.gen.sampling.max_tokens": 16,
        "nodes.trainer.model": model,
        "nodes.trainer.batch_groups": 2,
        "nodes.trainer.steps": 2,
        # A random model earns the same reward everywhere: keep uniform groups so it trains.
        "nodes.filter.drop_uniform_reward": "false",
        **extra,
    }
    return [f"{k}={v}" for k, v in settings.items()]
