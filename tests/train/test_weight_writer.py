"""Publishing off the trainer's critical path: the snapshot, the background write, the notice.

A gate in front of ``write_version`` (the background writer's one call) holds a version's write
until the test lets it go, so the tests see what the trainer does while a write is in flight.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file

from areal_flow.node import NodeContext
from areal_flow.nodes.generator import GeneratorConfig
from areal_flow.nodes.trainer import Trainer, TrainerConfig, _weights_dtype
from areal_flow.nodes.weight_publisher import WeightPublisherConfig
from areal_flow.spec import Graph
from areal_flow.train import weight_writer
from areal_flow.train.algo import DecoupledPPO, Optimizer
from areal_flow.train.session import TrainingSession
from areal_flow.train.steplog import read_steps
from areal_flow.train.weight_writer import WeightWriter
from areal_flow.train.weights import (
    HASH_ALL_CORES,
    ChecksumError,
    file_checksum,
    verify_weights,
)
from tests.train.scored import load_model, scored_group

REWARDS = [(1.0, 0.0, 0.5, 0.0), (0.0, 1.0, 1.0, 0.0), (0.2, 0.9, 0.0, 0.4)]


class Gate:
    """Wraps ``write_version``: versions in ``hold`` wait for ``open_``; ``fail`` raises."""

    def __init__(self, hold: set[int] = frozenset(), fail: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.hold, self.fail = hold, fail
        self.opened = threading.Event()
        self.finished: dict[int, float] = {}  # version → perf_counter when its file was ready
        self.real = weight_writer.write_version

    def __call__(
        self, tensors: dict[str, torch.Tensor], root: Path, version: int, **kwargs: Any
    ) -> Any:
        if version in self.hold and not self.opened.wait(timeout=60):
            raise TimeoutError("the test never opened the gate")
        if version in self.fail:
            raise OSError(28, "No space left on device (injected)")
        ref = self.real(tensors, root, version, **kwargs)
        self.finished[version] = time.perf_counter()
        return ref


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Gate]:
    def install(**kwargs: set[int]) -> Gate:
        g = Gate(**kwargs)
        monkeypatch.setattr(weight_writer, "write_version", g)
        return g

    return install


@pytest.fixture(scope="module")
def groups(tiny_model_dir: Path) -> list[pa.RecordBatch]:
    model = load_model(tiny_model_dir)
    return [scored_group(model, f"0:{g}", REWARDS[g], seed=g) for g in range(3)]


def config(model_dir: Path, **overrides: Any) -> TrainerConfig:
    values: dict[str, Any] = {
        "name": "trainer",
        "model": str(model_dir),
        "batch_groups": 2,  # K = 2 minibatches need at least 2 groups (validation)
        "steps": 3,
        "bf16": False,
        "micro_batch_tokens": 64,
        "checkpoint_every": 100,
        "optimizer": Optimizer(lr=1e-2, grad_clip=1e9),
        "algo": DecoupledPPO(updates_per_batch=2),
        **overrides,
    }
    return TrainerConfig.model_validate(values)


def params(session: TrainingSession) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in session.policy.state_dict().items()}


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.005)


def test_next_step_runs_while_a_write_is_in_flight_and_leaves_its_snapshot_alone(
    tiny_model_dir: Path, tmp_path: Path, groups: list[pa.RecordBatch], gate: Callable[..., Gate]
) -> None:
    g = gate(hold={1})
    session = TrainingSession(
        config(tiny_model_dir), temperature=1.0, run_dir=tmp_path, store="run_dir"
    )
    session.prepare(groups[:1])
    first, metrics = session.train_next()
    after_step_1 = params(session)
    assert not first.done()  # train_next returned while version 1 is still being written
    assert metrics["publish_block_s"] >= 0

    second: dict[str, Any] = {}
    step_2 = threading.Thread(target=lambda: second.update(out=session.train_next()))
    step_2.start()
    # The second optimizer step completes although version 1's file is not written yet ...
    wait_until(lambda: session.step == 2, "step 2 ran")
    assert not first.done()
    after_step_2 = params(session)
    assert any(not torch.equal(after_step_1[k], after_step_2[k]) for k in after_step_1)
    g.opened.set()
    step_2.join(timeout=60)

    # ... and version 1's file holds the weights of step 1, not of step 2.
    v1 = first.result(timeout=60).ref
    v2 = second["out"][0].result(timeout=60).ref
    assert (v1.version, v2.version) == (1, 2) and v1.created_at <= v2.created_at
    for ref, expected in ((v1, after_step_1), (v2, after_step_2)):
        verify_weights(ref.path, ref.checksum)
        written = load_file(str(Path(ref.path) / "model.safetensors"))
        assert set(written) == set(expected) - {"lm_head.weight"}  # tied: written once
        for name, tensor in written.items():
            assert torch.equal(tensor, expected[name]), (ref.version, name)
    session.close()


def test_checkpoint_and_close_wait_for_the_write_in_flight(
    tiny_model_dir: Path, tmp_path: Path, groups: list[pa.RecordBatch], gate: Callable[..., Gate]
) -> None:
    g = gate(hold={1})
    session = TrainingSession(
        config(tiny_model_dir), temperature=1.0, run_dir=tmp_path, store="run_dir"
    )
    session.prepare(groups[:1])
    future, _ = session.train_next()
    done = threading.Event()
    checkpoint = threading.Thread(
        target=lambda: (session.checkpoint(session.snapshot()), done.set())
    )
    checkpoint.start()
    assert not done.wait(timeout=0.5)  # held while version 1's write is in flight
    g.opened.set()
    assert done.wait(timeout=60)
    assert future.done() and g.finished[1] > 0
    assert (tmp_path / "checkpoints" / "step_1").is_dir()
    session.close()
    assert not [p for p in (tmp_path / "weights").iterdir() if p.name.startswith(".")]


def trainer_node(model_dir: Path, run_dir: Path, **overrides: Any) -> Trainer:
    cfg = config(model_dir, **overrides)
    graph = Graph(
        name="g",
        nodes=[cfg, WeightPublisherConfig(name="publisher", store="run_dir")],
        edges=["trainer -> publisher"],
    )
    node = Trainer(cfg)
    node.setup(NodeContext(config=cfg, replica=0, replicas=1, run_dir=run_dir, seed=0,
                           graph=graph))  # fmt: skip
    return node


async def feed(batches: list[pa.RecordBatch]) -> AsyncIterator[pa.RecordBatch]:
    for batch in batches:
        yield batch


async def poll(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.005)


def test_node_trains_on_while_a_notice_waits_for_its_file(
    tiny_model_dir: Path, tmp_path: Path, groups: list[pa.RecordBatch], gate: Callable[..., Gate]
) -> None:
    g = gate(hold={1})
    node = trainer_node(tiny_model_dir, tmp_path)

    async def main() -> list[tuple[dict[str, Any], float]]:
        agen = node.run(feed(groups))
        first = asyncio.ensure_future(agen.__anext__())
        await poll(lambda: node.session.step == 2, "step 2 ran")
        assert not first.done()  # no notice of a file still being written
        g.opened.set()
        notices = [(await first, time.perf_counter())]
        async for out in agen:
            notices.append((out, time.perf_counter()))
        await node.teardown()
        return [(out.to_pylist()[0], at) for out, at in notices]

    notices = asyncio.run(main())
    assert [n["version"] for n, _ in notices] == [1, 2, 3]
    for notice, received in notices:
        assert received > g.finished[notice["version"]]  # the file was complete first
        verify_weights(notice["path"], notice["checksum"])
    steps = read_steps(tmp_path)
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert all(0 <= s["publish_block_s"] < 60 for s in steps)
    assert "publish_ready_s" in node.ctx.metrics.snapshot()  # type: ignore[union-attr]


def test_a_failing_background_write_fails_the_trainer(
    tiny_model_dir: Path, tmp_path: Path, groups: list[pa.RecordBatch], gate: Callable[..., Gate]
) -> None:
    gate(fail={2})
    node = trainer_node(tiny_model_dir, tmp_path)

    async def main() -> list[int]:
        versions = []
        with pytest.raises(OSError, match="No space left"):
            async for out in node.run(feed(groups)):
                versions.append(out.to_pylist()[0]["version"])
        await node.teardown()  # no checkpoint of a failed run; the writer is stopped
        return versions

    assert asyncio.run(main()) == [1]
    assert node.failed
    assert not (tmp_path / "checkpoints").exists()  # nothing of the failed state was saved
    with pytest.raises(OSError, match="No space left"):
        node.session.writer.wait()  # the error stays, for every later publish too


def test_bf16_snapshot_is_what_a_bf16_engine_would_load(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    model = load_model(tiny_model_dir)
    with torch.no_grad():
        for p in model.parameters():  # values that bf16 must round
            p.add_(torch.randn_like(p) * 1e-3)
    state = dict(model.state_dict())
    state["step_counter"] = torch.arange(5)  # an integer tensor keeps its dtype
    writer = WeightWriter(tmp_path, dtype=torch.bfloat16, keep_fp32=("norm",))
    ref = writer.publish(state, 1).result(timeout=60).ref
    writer.close()
    written = load_file(str(Path(ref.path) / "model.safetensors"))
    assert written["step_counter"].dtype == torch.int64
    assert written["model.norm.weight"].dtype == torch.float32  # a keep_fp32 module
    assert written["model.embed_tokens.weight"].dtype == torch.bfloat16

    # A bf16 engine loading the fp32 weights ends up with exactly the bf16 file's values.
    engine = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    fp32 = {k: v for k, v in state.items() if k != "step_counter"}
    engine.load_state_dict(fp32, strict=False)
    from_fp32 = {k: v.clone() for k, v in engine.state_dict().items()}
    engine.load_state_dict({k: v for k, v in written.items() if k != "step_counter"},
                           strict=False)  # fmt: skip
    for name, tensor in engine.state_dict().items():
        assert torch.equal(tensor, from_fp32[name]), name


def test_weights_dtype_follows_the_generators(tiny_model_dir: Path) -> None:
    def graph(*dtypes: str) -> Graph:
        gens = [
            GeneratorConfig(name=f"gen{i}", model=str(tiny_model_dir), dtype=d)  # type: ignore[arg-type]
            for i, d in enumerate(dtypes)
        ]
        return Graph(
            name="g",
            nodes=[config(tiny_model_dir), WeightPublisherConfig(name="publisher"), *gens],
            edges=["trainer -> publisher"]
            + [f"publisher -> gen{i}.weights" for i in range(len(dtypes))],
        )

    assert _weights_dtype("trainer", graph("bfloat16", "bfloat16")) == "bfloat16"
    assert _weights_dtype("trainer", graph("bfloat16", "float32")) is None
    assert _weights_dtype("trainer", graph("float32")) is None
    assert _weights_dtype("trainer", None) is None


def test_checksums_name_their_algorithm(tmp_path: Path) -> None:
    import hashlib

    writer = WeightWriter(tmp_path)
    ref = writer.publish({"w": torch.arange(6.0)}, 1).result(timeout=60).ref
    writer.close()
    assert ref.checksum.startswith("blake3:")
    file = Path(ref.path) / "model.safetensors"
    verify_weights(ref.path, "sha256:" + hashlib.sha256(file.read_bytes()).hexdigest())
    with pytest.raises(ChecksumError, match="corrupt"):
        verify_weights(ref.path, "sha256:" + "0" * 64)
    with pytest.raises(ChecksumError, match="must read '<algorithm>:<hex>'"):
        verify_weights(ref.path, ref.checksum.removeprefix("blake3:"))  # unnamed: refused
    with pytest.raises(ChecksumError, match="must read"):
        verify_weights(ref.path, "md5:" + "0" * 32)


def test_blake3_on_every_core_gives_the_one_thread_digest(tmp_path: Path) -> None:
    # Large enough (16 MiB) for blake3 to split the work over threads.
    file = tmp_path / "model.safetensors"
    file.write_bytes(torch.randint(0, 255, (1 << 24,), dtype=torch.uint8).numpy().tobytes())
    one = file_checksum(file)
    assert file_checksum(file, threads=HASH_ALL_CORES) == one
    (tmp_path / "model.safetensors.checksum").write_text(one)
    verify_weights(tmp_path, threads=HASH_ALL_CORES)
    data = bytearray(file.read_bytes())
    data[-1] ^= 1  # one bit of the last byte
    file.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="corrupt"):
        verify_weights(tmp_path, threads=HASH_ALL_CORES)


def test_the_snapshot_is_taken_on_one_thread_on_the_callers_own_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lending trainer's threads may run on a generator's core too; the snapshot's copy runs
    on the trainer's own cores, on one thread, as one call over every tensor (the GIL taken
    once), and the thread's settings come back afterwards."""
    import os

    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        pytest.skip("needs two cores to pin the snapshot to one of them")
    own = {min(allowed)}
    seen: list[tuple[set[int], int, int]] = []
    real = torch._foreach_copy_

    def recording(dst: list[torch.Tensor], src: list[torch.Tensor], **kw: bool) -> None:
        seen.append((os.sched_getaffinity(0), torch.get_num_threads(), len(src)))
        real(dst, src, **kw)

    monkeypatch.setattr(torch, "_foreach_copy_", recording)
    threads = torch.get_num_threads()
    writer = WeightWriter(tmp_path, cores=sorted(own))
    state = {"w": torch.arange(6.0), "b": torch.ones(2), "step": torch.tensor([3])}
    path = writer.publish(state, 1).result(timeout=60).ref.path
    writer.close()
    assert seen == [(own, 1, 3)]
    written = load_file(str(Path(path) / "model.safetensors"))
    assert {k: v.tolist() for k, v in written.items()} == {k: v.tolist() for k, v in state.items()}
    assert os.sched_getaffinity(0) == allowed
    assert torch.get_num_threads() == threads
