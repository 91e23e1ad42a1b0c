"""Prompt source → generator → sink through the runtime, on a tiny random model."""

from __future__ import annotations

from pathlib import Path

import pytest

from areal_flow.nodes.generator import GeneratorConfig
from areal_flow.nodes.prompt_source import PromptSourceConfig
from areal_flow.roles import Sampling
from areal_flow.spec import Graph
from areal_flow.testing import CollectSinkConfig, read_sink, run_in_process


@pytest.mark.slow
def test_prompt_groups_come_back_as_whole_rollout_groups(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    model = str(tiny_model_dir)
    graph = Graph(
        name="gen",
        nodes=[
            PromptSourceConfig(name="prompts", model=model, group_size=3, epochs=1, size=5),
            GeneratorConfig(
                name="gen",
                model=model,
                engine="hf",
                max_running=4,
                sampling=Sampling(temperature=1.0, max_tokens=6),
            ),
            CollectSinkConfig(name="sink"),
        ],
        edges=["prompts -> gen", "gen -> sink"],
    )
    result = run_in_process(graph, run_dir=tmp_path)
    assert result.ok, result.failure
    rows = read_sink(tmp_path, "sink").to_pylist()
    assert len(rows) == 15
    groups: dict[str, list[int]] = {}
    for row in rows:
        groups.setdefault(row["group_id"], []).append(row["sample_index"])
        n = len(row["response_token_ids"])
        assert 1 <= n <= 6
        assert len(row["logprobs"]) == n and all(lp <= 0 for lp in row["logprobs"])
        assert row["versions"] == [0] * n
        assert row["finish_reason"] in ("stop", "length")
        assert row["prompt"].endswith("assistant\n")  # the chat template's generation prompt
    assert len(groups) == 5 and all(sorted(v) == [0, 1, 2] for v in groups.values())
