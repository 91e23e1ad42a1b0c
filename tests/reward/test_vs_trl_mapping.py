"""bench/vs_trl.py's bridge to TRL: its reward function gives the math verifier's rewards, and its
GRPOConfig settings follow the graph (so the two arms cannot drift apart silently)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from areal_flow.loader import load_graph
from areal_flow.reward.math_reward import score

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def vs_trl() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vs_trl", ROOT / "bench" / "vs_trl.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RESPONSES = [
    "3 + 4 = 7. The answer is 7.",
    "The answer is 8.",
    "It is 7",  # right number, not in the required format: strict extraction finds nothing
    "\\boxed{7}",
]


def test_reward_function_gives_the_graphs_verifier_rewards(vs_trl: ModuleType) -> None:
    graph = load_graph(
        vs_trl.GRAPH,
        ["nodes.reward.reward_wrong=-1.0", "nodes.reward.format_reward=0.5"],
    )
    config = vs_trl.verifier_config(vs_trl.graph_nodes(graph)["reward"])
    reward = vs_trl.verifier_reward(config)
    logged: dict[str, float] = {}
    got = reward(
        prompts=["What is 3 + 4?"] * len(RESPONSES),
        completions=RESPONSES,
        answer=["7"] * len(RESPONSES),
        level=["add1"] * len(RESPONSES),
        log_metric=logged.__setitem__,
    )
    expected = [score("What is 3 + 4?", r, "7", **config.model_dump())["reward"] for r in RESPONSES]
    assert got == expected
    assert got[0] == 1.5 and got[1] == -0.5 and got[2] == -1.0  # correct+format, wrong+format
    assert logged == {"correct": 0.5, "format_ok": 0.5}


def test_grpo_settings_follow_the_graph(vs_trl: ModuleType) -> None:
    graph = load_graph(
        vs_trl.GRAPH,
        [
            "nodes.prompts.group_size=4",
            "nodes.trainer.batch_groups=6",
            "nodes.trainer.optimizer.lr=3e-6",
            "nodes.trainer.algo.eps_high=0.3",
            "nodes.gen.sampling.temperature=0.9",
            "nodes.gen.sampling.max_tokens=64",
        ],
    )
    settings = vs_trl.grpo_settings(graph)
    assert settings["num_generations"] == settings["per_device_train_batch_size"] == 4
    assert settings["gradient_accumulation_steps"] == 6  # 6 groups of 4 per optimizer step
    assert (settings["learning_rate"], settings["epsilon"], settings["epsilon_high"]) == (
        3e-6,
        0.2,
        0.3,
    )
    assert (settings["temperature"], settings["max_completion_length"]) == (0.9, 64)
    assert (settings["beta"], settings["loss_type"], settings["scale_rewards"]) == (
        0.0,
        "dapo",
        "group",
    )


def test_settings_without_a_trl_equivalent_are_refused(vs_trl: ModuleType) -> None:
    graph = load_graph(vs_trl.GRAPH, ["nodes.trainer.algo.advantage=rloo"])
    with pytest.raises(ValueError, match=r"advantage = 'rloo' has no TRL equivalent"):
        vs_trl.grpo_settings(graph)


def test_marks_end_at_the_budget(vs_trl: ModuleType) -> None:
    assert vs_trl.marks_of(600, 60) == [60 * i for i in range(1, 11)]
    assert vs_trl.marks_of(100, 30) == [30, 60, 90, 100]
    with pytest.raises(ValueError, match="--mark-s"):
        vs_trl.marks_of(10, 60)


def test_snapshots_of_published_and_in_memory_weights_load_as_the_policy(
    vs_trl: ModuleType, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The areal-flow arm copies the newest published version, the TRL arm writes the tensors
    it kept; either folder loads in transformers with exactly those weights."""
    import torch

    from areal_flow.models import load_causal_lm, prepare_model
    from areal_flow.train.weights import publish_weights, unique_tensors

    model = load_causal_lm(tiny_model_dir, dtype=torch.float32)
    store = tmp_path / "store"
    assert vs_trl.newest_version(store) is None
    publish_weights(model.state_dict(), store, 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    publish_weights(model.state_dict(), store, 2)
    version, folder = vs_trl.newest_version(store)
    assert version == 2
    kept = {k: v.clone() for k, v in unique_tensors(model.state_dict()).items()}
    for snapshot in (
        vs_trl.write_snapshot(tmp_path / "published", tiny_model_dir, folder / vs_trl.WEIGHTS),
        vs_trl.write_snapshot(tmp_path / "kept", tiny_model_dir, kept),
    ):
        assert prepare_model(snapshot) == snapshot
        loaded = load_causal_lm(snapshot, dtype=torch.float32).state_dict()
        for name, tensor in model.state_dict().items():
            assert torch.equal(loaded[name], tensor), name
