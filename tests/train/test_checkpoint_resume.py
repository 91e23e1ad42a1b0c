"""The trainer node through its ``run()`` generator: weight notices, checkpoints, exact resume."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import torch

from areal_flow.node import NodeContext
from areal_flow.nodes.trainer import Trainer, TrainerConfig
from areal_flow.nodes.weight_publisher import WeightPublisherConfig
from areal_flow.schema import SCHEMAS
from areal_flow.spec import Graph
from areal_flow.train.algo import DecoupledPPO, Optimizer
from areal_flow.train.batch import trajectory_ids
from areal_flow.train.checkpoint import resolve_checkpoint
from areal_flow.train.weights import verify_weights
from tests.train.scored import load_model, scored_group

GROUP_REWARDS = [(1.0, 0.0, 0.5, 0.0), (0.0, 1.0, 1.0, 0.0), (0.2, 0.9, 0.0, 0.4)]


@pytest.fixture(scope="module")
def scored_groups(tiny_model_dir: Path) -> list[pa.RecordBatch]:
    model = load_model(tiny_model_dir)
    return [
        scored_group(model, f"0:{g}", GROUP_REWARDS[g % 3], seed=g, version=0) for g in range(6)
    ]


def trainer(
    model_dir: Path, run_dir: Path, resume_state: dict[str, Any] | None = None, **overrides: Any
) -> Trainer:
    values: dict[str, Any] = {
        "name": "trainer",
        "model": str(model_dir),
        "batch_groups": 2,  # K = 2 minibatches need at least 2 groups (validation)
        "steps": 6,
        "bf16": False,
        "micro_batch_tokens": 64,
        "checkpoint_every": 100,
        "optimizer": Optimizer(lr=1e-3, warmup_steps=2, schedule="cosine"),
        "algo": DecoupledPPO(updates_per_batch=2),
        **overrides,
    }
    cfg = TrainerConfig.model_validate(values)
    graph = Graph(
        name="g",
        nodes=[cfg, WeightPublisherConfig(name="publisher", store="run_dir")],
        edges=["trainer -> publisher"],  # the trainer writes where its publisher's store says
    )
    node = Trainer(cfg)
    ctx = NodeContext(
        config=cfg,
        replica=0,
        replicas=1,
        run_dir=run_dir,
        seed=0,
        graph=graph,
        resume_state=resume_state,
    )
    node.setup(ctx)
    return node


async def feed(batches: list[pa.RecordBatch]) -> AsyncIterator[pa.RecordBatch]:
    for batch in batches:
        yield batch


def drive(
    node: Trainer, batches: list[pa.RecordBatch], stop_at: int | None = None, held: int = 0
) -> list[dict]:
    """Run the node's ``run()`` on ``batches``; stop early (a clean stop) at version ``stop_at``,
    after holding that notice until the trainer reached step ``held``."""

    async def main() -> list[dict]:
        notices: list[dict] = []
        agen = node.run(feed(batches))
        async for out in agen:
            assert isinstance(out, pa.RecordBatch) and out.schema.equals(SCHEMAS["weights"])
            notices.extend(out.to_pylist())
            if stop_at is not None and notices[-1]["version"] == stop_at:
                deadline = time.monotonic() + 60
                while node.session.step < held:
                    assert time.monotonic() < deadline, f"step {held} never ran"
                    await asyncio.sleep(0.005)
                await agen.aclose()  # type: ignore[attr-defined]
                break
        await node.teardown()
        return notices

    return asyncio.run(main())


def params(node: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in node.session.policy.model.parameters()]


def test_node_emits_increasing_versions_and_checkpoints(
    tiny_model_dir: Path, tmp_path: Path, scored_groups: list[pa.RecordBatch]
) -> None:
    node = trainer(tiny_model_dir, tmp_path, steps=3, checkpoint_every=2)
    notices = drive(node, scored_groups)
    assert [n["version"] for n in notices] == [1, 2, 3]
    for n in notices:
        assert Path(n["path"]) == tmp_path / "weights" / f"v{n['version']}"
        verify_weights(n["path"], n["checksum"])
    assert notices[0]["created_at"] <= notices[-1]["created_at"]
    metrics = node.ctx.metrics.snapshot()  # type: ignore[union-attr]
    for name in ("loss", "clip_frac", "iw_mean", "iw_max", "kl_behav_k3", "entropy", "grad_norm"):
        assert name in metrics, name
    assert metrics["steps"] == 3 and metrics["reward_mean"] > 0 and metrics["tokens_per_s"] > 0
    assert node.state() == {"checkpoint": str(tmp_path / "checkpoints/step_3"), "version": 3,
                            "step": 3}  # fmt: skip

    latest = resolve_checkpoint(tmp_path)
    assert latest.name == "step_3" and (tmp_path / "checkpoints/step_2").is_dir()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(latest)
    for a, b in zip(loaded.parameters(), params(node), strict=True):
        assert torch.equal(a, b)
    assert AutoTokenizer.from_pretrained(latest)("2+2").input_ids
    meta = json.loads((latest / "trainer.json").read_text())
    # groups 0-1 in two minibatch steps; the budget's last step trains groups 2-3 whole in one
    assert meta["version"] == 3 and len(meta["trained_ids"]) == 16


def test_node_returns_when_input_ends_early(
    tiny_model_dir: Path, tmp_path: Path, scored_groups: list[pa.RecordBatch]
) -> None:
    node = trainer(tiny_model_dir, tmp_path, steps=50, algo=DecoupledPPO(), batch_groups=1)
    assert [n["version"] for n in drive(node, scored_groups[:2])] == [1, 2]
    assert resolve_checkpoint(tmp_path).name == "step_2"


def test_resume_trains_every_id_exactly_once_and_matches_an_uninterrupted_run(
    tiny_model_dir: Path, tmp_path: Path, scored_groups: list[pa.RecordBatch]
) -> None:
    reference = trainer(tiny_model_dir, tmp_path / "ref")
    assert [n["version"] for n in drive(reference, scored_groups)] == [1, 2, 3, 4, 5, 6]

    first = trainer(tiny_model_dir, tmp_path / "a")
    # The trainer runs ahead of its notices, by at most two steps: while the consumer holds
    # notice 1, notice 2 waits in the queue and step 3 cannot hand over its own (backpressure).
    # The clean stop then checkpoints after step 3, inside a batch: 1 of its 2 minibatches done.
    drive(first, scored_groups, stop_at=1, held=3)
    assert first.session.step == 3 and first.session.has_batch
    assert resolve_checkpoint(tmp_path / "a").name == "step_3"

    resumed = trainer(tiny_model_dir, tmp_path / "b", resume_from=tmp_path / "a")
    notices = drive(resumed, scored_groups)  # the source replays everything
    # the resumed version is re-published first, then the versions continue
    assert [n["version"] for n in notices] == [3, 4, 5, 6]

    trained = resumed.session.trained
    assert Counter(trained).most_common(1)[0][1] == 1  # nothing trained twice
    done = len(first.session.trained)
    assert trained[:done] == first.session.trained  # the resumed run continues the first one
    assert trained == reference.session.trained  # ... and loses nothing
    assert set(trained) == {i for g in scored_groups for i in trajectory_ids(g)}
    assert resumed.session.duplicates > 0
    for a, b in zip(params(resumed), params(reference), strict=True):
        assert torch.equal(a, b)  # bit for bit: nothing of the state was lost


def test_resume_state_from_the_runtime_takes_precedence(
    tiny_model_dir: Path, tmp_path: Path, scored_groups: list[pa.RecordBatch]
) -> None:
    node = trainer(tiny_model_dir, tmp_path / "a", steps=2, algo=DecoupledPPO(), batch_groups=1)
    drive(node, scored_groups)
    state = node.state()
    resumed = trainer(tiny_model_dir, tmp_path / "b", resume_state=state, steps=3,
                      algo=DecoupledPPO(), batch_groups=1)  # fmt: skip
    assert (resumed.session.step, resumed.session.version) == (2, 2)
    assert [n["version"] for n in drive(resumed, scored_groups)] == [2, 3]
    assert resumed.session.trained[-4:] == trajectory_ids(scored_groups[2])
