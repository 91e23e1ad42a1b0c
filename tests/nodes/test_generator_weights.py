"""A published version through the weight publisher into the generator (hf engine, tiny model):
the generator generates with it and reports file ready → active, which reaches the summary."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from areal_flow.node import NodeContext
from areal_flow.nodes.generator import Generator, GeneratorConfig
from areal_flow.nodes.weight_publisher import WeightPublisher, WeightPublisherConfig
from areal_flow.report import weight_path
from areal_flow.train.weight_writer import WeightWriter
from tests.train.scored import load_model


def test_a_published_version_becomes_active_and_its_latency_is_reported(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = load_model(tiny_model_dir)
    writer = WeightWriter(tmp_path / "weights")
    pub_cfg = WeightPublisherConfig(name="publisher", store="run_dir")
    publisher = WeightPublisher(pub_cfg)
    publisher.setup(NodeContext(config=pub_cfg, replica=0, replicas=1, run_dir=tmp_path, seed=0))
    gen_cfg = GeneratorConfig(name="gen", model=str(tiny_model_dir), engine="hf", max_running=2)
    generator = Generator(gen_cfg)

    async def main() -> list[dict[str, float]]:
        await generator.setup(
            NodeContext(config=gen_cfg, replica=0, replicas=1, run_dir=tmp_path, seed=0)
        )
        assert generator.ctx is not None
        seen = []
        for version in (1, 2):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.01 * version)
            ref = writer.publish(model.state_dict(), version).result(timeout=60).ref
            forwarded = publisher.process(ref.batch())
            assert forwarded is not None and not isinstance(forwarded, dict)
            row = forwarded.to_pylist()[0]
            await generator.on_weights(row["version"], row)
            seen.append(dict(generator.ctx.metrics.gauges))
        active = generator.engine._model.state_dict()  # type: ignore[attr-defined]
        for name, tensor in model.state_dict().items():
            assert torch.equal(active[name], tensor), name
        await generator.teardown()
        return seen

    first, second = asyncio.run(main())
    writer.close()
    assert generator.engine.version == 2
    for gauges in (first, second):
        # measured from the file being ready, so it covers the whole update
        assert gauges["publish_to_active_s"] >= gauges["update_s"] > 0
    assert second["publish_to_active_max_s"] == max(
        first["publish_to_active_s"], second["publish_to_active_s"]
    )
    steps = [{"step": 1, "publish_block_s": 0.02}, {"step": 2, "publish_block_s": 0.04}]
    summary = weight_path(steps, {"gen/0": second, "publisher/0": {"version": 2.0}})
    assert summary == pytest.approx(
        {
            "publish_block_s/mean": 0.03,
            "publish_block_s/max": 0.04,
            "gen/publish_to_active_s/max": second["publish_to_active_max_s"],
        }
    )
