"""The model-free RL stand-ins (``areal_flow.fakes``) run the real driver, gate and ledger:
many generator replicas share the prompts and the run ends after the trainer's last step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from areal_flow.fakes import FakeGeneratorConfig, FakePromptsConfig, FakeTrainerConfig
from areal_flow.nodes import WeightPublisherConfig
from areal_flow.spec import Graph, Staleness
from areal_flow.testing import run_in_process

STEPS = 6


def fake_graph(replicas: int, batch_groups: int, sigma: float) -> Graph:
    return Graph(
        name="fakes",
        nodes=[
            FakePromptsConfig(name="prompts", group_size=4),
            FakeGeneratorConfig(
                name="gen", replicas=replicas, max_groups=2, median_tokens=20, sigma=sigma,
                max_tokens=200, token_s=0.002,
            ),
            FakeTrainerConfig(name="trainer", batch_groups=batch_groups, steps=STEPS),
            WeightPublisherConfig(name="publisher"),
        ],
        edges=["prompts -> gen", "gen -> trainer", "trainer -> publisher", "publisher -> gen"],
        staleness=Staleness(max_lag=1),
        tracking={"enabled": False},
    )  # fmt: skip


@pytest.mark.slow  # ~7 s: the fake trainer imports torch to publish real weight files
def test_fake_generators_share_the_prompts_and_the_trainer_ends_the_run(tmp_path: Path) -> None:
    replicas = 4
    result = run_in_process(fake_graph(replicas, batch_groups=4, sigma=0.8), tmp_path)
    assert result.ok, result.failure
    assert result.version == STEPS
    samples = [result.metrics[f"gen/{r}"].get("samples", 0) for r in range(replicas)]
    assert all(s > 0 for s in samples), f"a replica got no prompt: {samples}"
    assert result.staleness["accepted"] >= STEPS * 4
    # The final metrics count every sample the trainer took, also those generated after the
    # generators' last heartbeat (the driver reads their reports while it stops them).
    assert sum(samples) >= result.staleness["accepted"] * 4, (samples, result.staleness)
    # Every trained group was admitted by the gate, and the weights went round (versions > 0).
    assert result.staleness["admitted"] >= result.staleness["accepted"]
    assert any(lag > 0 for lag in (int(k[4:]) for k in result.staleness if k.startswith("lag/")))


def test_a_sample_s_tokens_carry_the_versions_loaded_while_it_ran() -> None:
    from areal_flow.fakes import FakeGenerator
    from areal_flow.node import NodeContext

    cfg = FakeGeneratorConfig(name="gen", token_s=1.0, max_tokens=10)
    gen = FakeGenerator(cfg)
    gen.setup(NodeContext(config=cfg, replica=0, replicas=1, run_dir=Path("."), seed=0))
    gen.load_times, gen.loaded = [0.0, 102.5, 104.5], [0, 1, 2]
    prompt = fake_prompt()
    batch = gen._rollouts(prompt, np.array([3, 5]), began=100.0)
    versions = batch.column("versions").to_pylist()
    # Tokens at 101, 102, 103 (, 104, 105): version 1 from 102.5, version 2 from 104.5.
    assert versions == [[0, 0, 1], [0, 0, 1, 1, 2]]
    assert batch.column("group_id").to_pylist() == ["0:3", "0:3"]


def fake_prompt() -> pa.RecordBatch:
    from areal_flow.fakes import FakePrompts
    from areal_flow.node import NodeContext

    cfg = FakePromptsConfig(name="prompts", group_size=2)
    source = FakePrompts(cfg)
    source.setup(NodeContext(config=cfg, replica=3, replicas=4, run_dir=Path("."), seed=0))
    batch = source.next_batch()
    assert isinstance(batch, pa.RecordBatch)
    return batch
