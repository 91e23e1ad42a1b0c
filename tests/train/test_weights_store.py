"""Published weights: safetensors, named checksums, atomic folders, the weight publisher node."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import torch
from blake3 import blake3

from areal_flow.node import NodeContext
from areal_flow.nodes.weight_publisher import WeightPublisher, WeightPublisherConfig
from areal_flow.schema import SCHEMAS
from areal_flow.train.weights import (
    SHM_ROOT,
    ChecksumError,
    load_weights,
    publish_weights,
    verify_weights,
    weights_root,
)
from tests.train.scored import load_model


def test_weights_round_trip_with_checksum(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = load_model(tiny_model_dir)
    ref = publish_weights(model.state_dict(), tmp_path / "weights", 3)
    folder = Path(ref.path)
    assert folder == tmp_path / "weights" / "v3"
    file = folder / "model.safetensors"
    assert ref.checksum == "blake3:" + blake3(file.read_bytes()).hexdigest()
    assert (folder / "model.safetensors.checksum").read_text().strip() == ref.checksum
    assert [p.name for p in (tmp_path / "weights").iterdir()] == ["v3"]  # no temp left

    loaded = load_weights(folder, ref.checksum)
    state = model.state_dict()
    # the tied head is stored once, under the embedding's name (as save_pretrained does)
    assert set(loaded) == set(state) - {"lm_head.weight"}
    for name, tensor in loaded.items():
        assert torch.equal(tensor, state[name]), name

    fresh = load_model(tiny_model_dir)
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    result = fresh.load_state_dict(loaded, strict=False)
    assert result.missing_keys == ["lm_head.weight"]
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(fresh(input_ids=ids).logits, model(input_ids=ids).logits)


def test_corrupted_weights_are_rejected(tiny_model_dir: Path, tmp_path: Path) -> None:
    ref = publish_weights(load_model(tiny_model_dir).state_dict(), tmp_path, 1)
    verify_weights(ref.path, ref.checksum)
    file = Path(ref.path) / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="corrupt"):
        verify_weights(ref.path, ref.checksum)
    with pytest.raises(ChecksumError, match="corrupt"):
        load_weights(ref.path)  # checks against the .sha256 file beside it
    with pytest.raises(FileNotFoundError, match="deleted"):
        verify_weights(tmp_path / "v9", ref.checksum)


def test_republishing_a_version_replaces_it(tmp_path: Path) -> None:
    first = publish_weights({"w": torch.zeros(3)}, tmp_path, 2)
    second = publish_weights({"w": torch.ones(3)}, tmp_path, 2)
    assert first.path == second.path and first.checksum != second.checksum
    assert torch.equal(load_weights(second.path, second.checksum)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v2"]


def test_weights_roots(tmp_path: Path) -> None:
    run = tmp_path / "run-7"
    assert weights_root("run_dir", run) == run / "weights"
    assert weights_root("shm", run) == SHM_ROOT / "run-7"


def publisher(tmp_path: Path, keep: int) -> WeightPublisher:
    cfg = WeightPublisherConfig(name="publisher", store="run_dir", keep_versions=keep)
    node = WeightPublisher(cfg)
    node.setup(NodeContext(config=cfg, replica=0, replicas=1, run_dir=tmp_path, seed=0))
    return node


def test_publisher_verifies_forwards_and_keeps_newest_versions(tmp_path: Path) -> None:
    node = publisher(tmp_path, keep=2)
    root = tmp_path / "weights"
    refs = [publish_weights({"w": torch.full((4,), float(v))}, root, v) for v in range(1, 5)]
    for ref in refs:
        notice = ref.batch()
        assert notice.schema.equals(SCHEMAS["weights"])
        assert node.process(notice) is notice
    assert sorted(p.name for p in root.iterdir()) == ["v3", "v4"]
    assert node.ctx is not None
    metrics = node.ctx.metrics.snapshot()
    assert metrics["versions_deleted"] == 2
    assert metrics["version"] == 4
    assert 0 <= metrics["publish_to_forward_s"] < 60


def test_publisher_refuses_a_bad_checksum(tmp_path: Path) -> None:
    node = publisher(tmp_path, keep=2)
    ref = publish_weights({"w": torch.zeros(2)}, tmp_path / "weights", 1)
    row = {**ref.batch().to_pylist()[0], "checksum": "0" * 64}
    with pytest.raises(ChecksumError):
        node.process(pa.RecordBatch.from_pylist([row], schema=SCHEMAS["weights"]))


def test_publisher_frees_shared_memory_at_teardown(tmp_path: Path) -> None:
    cfg = WeightPublisherConfig(name="publisher", store="shm", keep_versions=3)
    node = WeightPublisher(cfg)
    run_dir = tmp_path / "areal-flow-test-run"
    node.setup(NodeContext(config=cfg, replica=0, replicas=1, run_dir=run_dir, seed=0))
    root = weights_root("shm", run_dir)
    for v in (1, 2):
        node.process(publish_weights({"w": torch.zeros(2)}, root, v).batch())
    assert root.is_dir()
    node.teardown()
    assert not root.exists()


def test_a_restarted_publisher_prunes_versions_from_before_its_restart(tmp_path: Path) -> None:
    root = tmp_path / "weights"
    refs = [publish_weights({"w": torch.full((2,), float(v))}, root, v) for v in range(1, 5)]
    node = publisher(tmp_path, keep=2)  # a fresh replica: v1..v3 came before it
    node.process(refs[3].batch())
    assert sorted(p.name for p in root.iterdir()) == ["v3", "v4"]
