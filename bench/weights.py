"""The weight path: how long publishing blocks the trainer, and publish → active in generators.

Usage: ``python bench/weights.py [--rounds 5] [--engines vllm hf] [--engine-dtype float32|bfloat16]
[--threads N] [--lora RANK]``

Model: SmolLM2-135M-Instruct (``prepare_model("smollm2")``) as the trainer holds it (``Policy``,
fp32 parameters, 513 MiB), publishing to /dev/shm. Paths, run in one process, alternating their
order every round (medians over ``--rounds``):

- old: what the trainer did before: on its own thread, ``safetensors.save`` to bytes, sha256,
  write, rename; the publisher verifies sha256;
- new: ``WeightWriter.publish``: the trainer is blocked only for the snapshot into a reused
  buffer; safetensors ``save_file``, blake3 of the file and the rename run in the background;
  the publisher verifies blake3;
- new bf16 (with ``--engine-dtype bfloat16`` only: generators that load bf16, the one case the
  trainer publishes bf16): the same with a bf16 snapshot, half the bytes. The old path then
  publishes fp32 that the engines cast on load, as before;
- lora (with ``--lora RANK``): a LoRA trainer (``TrainerConfig.lora``, rank RANK on every
  attention and MLP projection) publishes only its adapter through the same writer; the
  generators merge it into their base (hf: the adapted tensors; vLLM: a whole reload), or, as
  engine ``vllm-lora``, vLLM loads it into its LoRA slot in place. The last line compares it
  with ``new`` (full weights, same dtype).

Columns: trainer blocked (the step waits this long), CPU s (process CPU time of the whole
publish, snapshot and background work: what the next training step competes with), step end →
file ready (the notice's ``created_at``), and per engine file ready → active: the real weight
publisher node's ``process`` (checksum verify, pruning) then the real generator node's
``on_weights`` (``update_weights``: pause, load in place, resume) on an idle engine —
``publish_to_active_s`` exactly as the generator reports it — and step end → active (the sum).
Ratios are old / new of the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from areal_flow import Staleness
from areal_flow.models import prepare_model
from areal_flow.node import NodeContext
from areal_flow.nodes.generator import Generator, GeneratorConfig
from areal_flow.nodes.trainer import TrainerConfig
from areal_flow.nodes.weight_publisher import WeightPublisher, WeightPublisherConfig
from areal_flow.train.algo import Optimizer
from areal_flow.train.lora import LoraConfig, adapter_config_json
from areal_flow.train.policy import Policy
from areal_flow.train.weight_writer import WeightWriter
from areal_flow.train.weights import (
    CHECKSUM_SUFFIX,
    SHM_ROOT,
    WEIGHTS_FILE,
    WeightsRef,
    replace_dir,
    unique_tensors,
    version_dir,
)


def old_publish(state: dict[str, torch.Tensor], root: Path, version: int) -> WeightsRef:
    """The trainer's publish before the background writer, line for line (sha256, named)."""
    from safetensors.torch import save

    tensors = {k: v.to("cpu").contiguous() for k, v in unique_tensors(state).items()}
    data = save(tensors, metadata={"version": str(version)})
    checksum = "sha256:" + hashlib.sha256(data).hexdigest()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".v{version}.", dir=root))
    (tmp / WEIGHTS_FILE).write_bytes(data)
    (tmp / (WEIGHTS_FILE + CHECKSUM_SUFFIX)).write_text(checksum + "\n")
    target = version_dir(root, version)
    replace_dir(tmp, target)
    return WeightsRef(version, str(target), checksum, time.time())


class Trainer:
    """The trainer's side: a Policy and both ways of publishing its weights."""

    def __init__(self, model: Path, root: Path, lora_rank: int = 0) -> None:
        self.policy = Policy(model, optimizer=Optimizer(), total_steps=1, bf16=False)
        self.root = root
        self.writers = {
            "new": WeightWriter(root),
            "new bf16": WeightWriter(root, dtype=torch.bfloat16),
        }
        self.policies = dict.fromkeys(self.writers, self.policy)
        if lora_rank:
            lora = LoraConfig(rank=lora_rank, alpha=2 * lora_rank)
            self.policies["lora"] = adapted = Policy(
                model, optimizer=Optimizer(), total_steps=1, bf16=False, lora=lora
            )
            config = adapter_config_json(adapted.peft)
            self.writers["lora"] = WeightWriter(root, adapter_config=config)
        for path, writer in self.writers.items():
            writer.prepare(self.policies[path].state_dict())  # as TrainingSession does at start

    def step(self) -> None:
        """Stand-in for an optimizer step: every trained parameter changes in place."""
        with torch.no_grad():
            for p in self.policy.model.parameters():
                p.mul_(1.0 + 1e-7)
            if "lora" in self.policies:
                for p in self.policies["lora"].model.parameters():
                    if p.requires_grad:
                        p.add_(1e-4)

    def publish(self, path: str, version: int) -> dict[str, Any]:
        cpu, began = time.process_time(), time.perf_counter()
        if path == "old":
            ref = old_publish(self.policy.state_dict(), self.root, version)
            blocked = ready = time.perf_counter() - began
        else:
            future = self.writers[path].publish(self.policies[path].state_dict(), version)
            blocked = time.perf_counter() - began
            done = future.result()
            ref, ready = done.ref, done.ready_s
        return {"ref": ref, "blocked": blocked, "ready": ready, "cpu": time.process_time() - cpu}

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


async def start_generator(engine: str, run_dir: Path, dtype: str, lora_rank: int) -> Generator:
    """``vllm-lora``: the vLLM engine serving adapters with vLLM's LoRA (``lora: vllm``)."""
    config = GeneratorConfig(
        name=f"gen_{engine.replace('-', '_')}",
        engine="hf" if engine == "hf" else "vllm",
        dtype=dtype,
        max_running=8,
        kv_cache_gib=1,
        max_model_len=1024,
        lora="vllm" if engine == "vllm-lora" else "merge",
    )
    # The generator reads the trainer's lora rank from the graph (nodes) it runs in.
    trainer = TrainerConfig(name="trainer", lora=LoraConfig(rank=lora_rank or 16))
    graph: Any = SimpleNamespace(nodes=[trainer], staleness=Staleness())
    node = Generator(config)
    await node.setup(NodeContext(config, 0, 1, run_dir, seed=0, graph=graph))
    return node


def start_publisher(run_dir: Path) -> WeightPublisher:
    config = WeightPublisherConfig(name="publisher", store="shm", keep_versions=2)
    node = WeightPublisher(config)
    node.setup(NodeContext(config, 0, 1, run_dir, seed=0))
    return node


async def deliver(publisher: WeightPublisher, generator: Generator, ref: WeightsRef) -> float:
    """File ready → active: the publisher forwards the notice, the generator loads it. The
    engines are served one after another here, so the time already spent on the ones before
    (since the file was ready) is taken off: each engine's figure is as if it were alone."""
    waited = time.time() - ref.created_at
    out = publisher.process(ref.batch())
    assert out is not None and not isinstance(out, dict)
    row = out.to_pylist()[0]
    await generator.on_weights(int(row["version"]), row)
    assert generator.ctx is not None
    return generator.ctx.metrics.gauges["publish_to_active_s"] - waited


async def bench(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    model = prepare_model("smollm2")
    run_dir = Path(tempfile.mkdtemp(prefix="bench-weights-"))
    root = SHM_ROOT / run_dir.name  # where the publisher's 'shm' store puts this run
    trainer = Trainer(model, root, args.lora)
    publisher = start_publisher(run_dir)
    generators = {}
    for engine in args.engines:
        began = time.perf_counter()
        generators[engine] = await start_generator(engine, run_dir, args.engine_dtype, args.lora)
        print(f"[bench] {engine} engine up in {time.perf_counter() - began:.0f} s", flush=True)
    paths = ["old", "new"] + (["new bf16"] if args.engine_dtype == "bfloat16" else [])
    paths += ["lora"] if args.lora else []
    results: dict[str, dict[str, list[float]]] = {p: {} for p in paths}
    version = 0
    try:
        for r in range(args.rounds + 1):  # round 0 warms every path up, uncounted
            for path in paths[r % len(paths) :] + paths[: r % len(paths)]:
                trainer.step()
                version += 1
                pub = trainer.publish(path, version)
                row = {k: pub[k] for k in ("blocked", "ready", "cpu")}
                for engine, generator in generators.items():
                    row[engine] = await deliver(publisher, generator, pub["ref"])
                if r:
                    for key, value in row.items():
                        results[path].setdefault(key, []).append(value)
                print(f"[bench] round {r} {path:8} " + " ".join(
                    f"{k} {v * 1000:.0f} ms" for k, v in row.items()), flush=True)  # fmt: skip
    finally:
        for generator in generators.values():
            await generator.teardown()
        trainer.close()
        publisher.teardown()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)
    return results


def print_table(results: dict[str, dict[str, list[float]]], engines: list[str]) -> None:
    med = {p: {k: statistics.median(v) for k, v in cols.items()} for p, cols in results.items()}
    old = med["old"]
    head = ["path", "blocked ms", "vs old", "CPU s", "step end → ready ms"]
    for engine in engines:
        head += [f"ready → active {engine} ms", f"step end → active {engine} ms", "vs old"]
    print("\n| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for path, m in med.items():
        cells = [path, f"{m['blocked'] * 1000:.0f}", f"{old['blocked'] / m['blocked']:.1f}×",
                 f"{m['cpu']:.2f}", f"{m['ready'] * 1000:.0f}"]  # fmt: skip
        for engine in engines:
            total, old_total = m["ready"] + m[engine], old["ready"] + old[engine]
            cells += [f"{m[engine] * 1000:.0f}", f"{total * 1000:.0f}", f"{old_total / total:.2f}×"]
        print("| " + " | ".join(cells) + " |")
    if "lora" in med:
        lora, new = med["lora"], med["new"]
        line = [f"\nlora vs new (full): blocked {new['blocked'] / lora['blocked']:.1f}×"]
        line += [f"step end → ready {new['ready'] / lora['ready']:.1f}×"]
        for engine in engines:
            full, adapter = new["ready"] + new[engine], lora["ready"] + lora[engine]
            line += [f"step end → active {engine} {full / adapter:.2f}×"]
        print(", ".join(line) + " faster")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="counted rounds (median)")
    parser.add_argument("--engines", nargs="*", choices=("vllm", "hf", "vllm-lora"),
                        default=["vllm", "hf"], help="vllm-lora: vLLM's own LoRA")  # fmt: skip
    parser.add_argument("--engine-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="the generators' dtype (the trainer's default is fp32)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=0, help="trainer torch threads (0: all)")
    parser.add_argument("--lora", type=int, default=0, help="also a LoRA adapter of this rank")
    args = parser.parse_args()
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    results = asyncio.run(bench(args))
    print_table(results, args.engines)


if __name__ == "__main__":
    main()
