"""The trainer's synchronous core: data position, batch preparation, optimizer steps, publishing
and checkpoints. The trainer node drives it from its event loop (``nodes/trainer.py``).

Rules:
- Threads: ``add``/``take_groups``/``snapshot`` run on the node's event loop only; the
  heavy methods (``prepare``, ``train_next``, ``publish``, ``checkpoint``, ``close``) run in a
  worker thread and hold ``lock``, so a checkpoint taken at teardown waits for a step still
  running after its caller was cancelled, and always sees a whole step. Publishing takes a
  snapshot under the lock and leaves the write to the ``WeightWriter``'s own thread; the
  returned future completes when the file is ready. A checkpoint and ``close`` first wait for
  that write, so neither leaves a version half written, and a failed write raises there too.
- Data position: every accepted trajectory id is *known*; an id arriving twice (a source that
  replays after a resume) is dropped and counted. Ids become *trained* when the optimizer step
  that used them completes. Checkpoints store trained ids, pending groups and the interrupted
  batch, so a resumed run trains each id exactly once.
- A batch is prepared once: advantages (group-relative), π_prox per token with the weights before
  its first update, and a seeded split into K minibatches (K = ``updates_per_batch``, fewer when
  the step budget ends inside the batch, so every trained batch is trained whole).
- Truncated responses (``finish_reason == 'length'``) with ``truncated='mask'`` stay in their
  group's baseline but get no loss tokens (``trainable`` False).
- version = initial version + optimizer steps; after each step the weights are published
  (``publish_block_s``: how long that step was blocked by it).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from areal_flow.schema import SCHEMAS
from areal_flow.train.batch import (
    check_rows,
    minibatch_assignment,
    prepared_table,
    rows_of_minibatch,
    split_groups,
    to_sequences,
    trajectory_ids,
)
from areal_flow.train.weight_writer import Published, WeightWriter
from areal_flow.train.weights import Store, weights_root

if TYPE_CHECKING:
    from areal_flow.train.config import TrainingConfig


class TrainingSession:
    """One trainer's model, optimizer and data position."""

    def __init__(
        self,
        cfg: TrainingConfig,
        *,
        temperature: float,
        run_dir: Path,
        device: str = "cpu",
        seed: int = 0,
        store: Store = "shm",
        weights_dtype: str | None = None,
        resume_from: Path | None = None,
    ) -> None:
        import torch
        from transformers import AutoTokenizer

        from areal_flow.models import prepare_model
        from areal_flow.train.checkpoint import checkpoints_dir, load_checkpoint
        from areal_flow.train.lora import adapter_config_json
        from areal_flow.train.policy import Policy

        torch.manual_seed(seed)
        self.cfg = cfg
        self.seed = seed
        self.lock = threading.Lock()
        checkpoint = load_checkpoint(resume_from) if resume_from is not None else None
        # A LoRA checkpoint holds the adapter only: the base is the configured model.
        model_dir = checkpoint.path if checkpoint and not cfg.lora else prepare_model(cfg.model)
        self.policy = Policy(
            model_dir,
            optimizer=cfg.optimizer,
            total_steps=cfg.steps,
            device=device,
            bf16=cfg.bf16,
            temperature=temperature,
            micro_batch_tokens=cfg.micro_batch_tokens,
            share_prompts=cfg.share_prompts,
            lora=cfg.lora,
        )
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        adapter = self.policy.peft
        self.writer = WeightWriter(
            weights_root(store, run_dir),
            dtype=getattr(torch, weights_dtype) if weights_dtype and adapter is None else None,
            keep_fp32=tuple(getattr(self.policy.model, "_keep_in_fp32_modules", None) or ()),
            adapter_config=adapter_config_json(adapter) if adapter is not None else None,
        )
        self.writer.prepare(self.policy.state_dict())
        self.checkpoint_root = checkpoints_dir(run_dir)
        self.version = 0
        self.step = 0
        self.trained: list[str] = []
        self.known: set[str] = set()
        self.pending: deque[pa.RecordBatch] = deque()
        self.batch: pa.Table | None = None
        self.next_minibatch = 0
        self.duplicates = 0
        self.last_checkpoint: Path | None = None
        self.dirty = False  # state changed since the last checkpoint
        if checkpoint is not None:
            self._restore(checkpoint)

    # -- data (event loop) ------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.step >= self.cfg.steps

    @property
    def has_batch(self) -> bool:
        return self.batch is not None

    @property
    def groups_ready(self) -> int:
        return len(self.pending)

    def add(self, batch: pa.RecordBatch) -> int:
        """Queue the groups of a scored batch; returns the rows kept (duplicates dropped)."""
        check_rows(batch)
        ids = trajectory_ids(batch)
        fresh = [i not in self.known for i in ids]
        if not all(fresh):
            self.duplicates += fresh.count(False)
            batch = batch.filter(pa.array(fresh))
            ids = [i for i, keep in zip(ids, fresh, strict=True) if keep]
        if batch.num_rows == 0:
            return 0
        self.known.update(ids)
        scored = batch.select(SCHEMAS["scored"].names).cast(SCHEMAS["scored"])
        self.pending.extend(split_groups(scored))
        self.dirty = True
        return batch.num_rows

    def take_groups(self, n: int) -> list[pa.RecordBatch]:
        return [self.pending.popleft() for _ in range(min(n, len(self.pending)))]

    def snapshot(self) -> pa.Table:
        """The pending groups as a table, for ``checkpoint``; clears ``dirty`` now, so groups
        added while the checkpoint is written mark the state dirty again."""
        self.dirty = False
        return pa.Table.from_batches(list(self.pending), schema=SCHEMAS["scored"])

    # -- compute (worker thread) ------------------------------------------------------------

    def prepare(self, groups: list[pa.RecordBatch]) -> dict[str, float]:
        """Advantages, π_prox and the minibatch split of a new batch; returns batch metrics."""
        import torch

        from areal_flow.rl import group_advantages

        began = time.perf_counter()
        with self.lock:
            table = pa.Table.from_batches(groups, schema=SCHEMAS["scored"])
            algo = self.cfg.algo
            rewards = torch.tensor(table.column("reward").to_pylist(), dtype=torch.float32)
            advantages = group_advantages(
                rewards,
                table.column("group_id").to_pylist(),
                estimator=algo.advantage,
                batch_norm=algo.batch_norm,
            )
            truncated = [r == "length" for r in table.column("finish_reason").to_pylist()]
            trainable = [not (t and self.cfg.truncated == "mask") for t in truncated]
            k = min(algo.updates_per_batch, self.cfg.steps - self.step, table.num_rows)
            split = minibatch_assignment(table.num_rows, k, self.seed * 1_000_003 + self.step)
            draft = prepared_table(
                groups, advantages.tolist(), [[]] * table.num_rows, trainable, split
            )
            # K = 1: π_prox is exactly the update's own forward pass (policy.train_step).
            prox, entropy = (
                self._proximal_logprobs(draft, k) if k > 1 else ([[]] * table.num_rows, [])
            )
            self.batch = draft.set_column(
                draft.schema.get_field_index("prox_logprobs"),
                "prox_logprobs",
                pa.array(prox, pa.list_(pa.float32())),
            )
            self.next_minibatch = 0
            self.dirty = True
        lengths = [len(r) for r in table.column("response_token_ids").to_pylist()]
        return {
            "groups": float(len(groups)),
            "trajectories": float(table.num_rows),
            "reward_mean": float(rewards.mean()),
            **reward_metric_means(table.column("metrics").to_pylist()),
            "truncated_frac": sum(truncated) / table.num_rows,
            "response_len_mean": sum(lengths) / len(lengths),
            **({"entropy": _weighted_mean(entropy, lengths)} if entropy else {}),
            "prox_s": time.perf_counter() - began,
        }

    def _proximal_logprobs(self, draft: pa.Table, k: int) -> tuple[list[list[float]], list[float]]:
        """π_prox per row, computed minibatch by minibatch with the update's micro-batches."""
        prox: list[list[float]] = [[] for _ in range(draft.num_rows)]
        entropy = [0.0] * draft.num_rows
        split = draft.column("minibatch").to_pylist()
        for m in range(k):
            rows = [i for i, s in enumerate(split) if s == m]
            logp, ent = self.policy.response_logprobs(to_sequences(draft.take(rows)))
            for row, lp, en in zip(rows, logp, ent, strict=True):
                prox[row] = lp.tolist()
                entropy[row] = en
        return prox, entropy

    def train_next(self) -> tuple[Future[Published], dict[str, float]]:
        """One optimizer step on the next minibatch; version += 1; publish. Returns the future
        of the new version's notice (done when its file is ready) and the step's metrics."""
        from areal_flow.rl import version_lag_stats

        with self.lock:
            if self.batch is None:
                raise RuntimeError("train_next called without a prepared batch; call prepare()")
            rows = rows_of_minibatch(self.batch, self.next_minibatch)
            single = max(self.batch.column("minibatch").to_pylist()) == 0
            # Lag at the step that trains them (the staleness bound's definition): η + K − 1
            # at most, η for a batch's first minibatch.
            lags = version_lag_stats(_nonempty(rows.column("versions").to_pylist()), self.version)
            metrics = self.policy.train_step(to_sequences(rows), self.cfg.algo, single)
            metrics.update(lags)
            self.step += 1
            self.version += 1
            self.trained.extend(trajectory_ids(rows))
            self.next_minibatch += 1
            if self.next_minibatch > max(self.batch.column("minibatch").to_pylist()):
                self.batch = None
            self.dirty = True
            began = time.perf_counter()
            published = self._publish()
            block_s = time.perf_counter() - began
        metrics.update(version=float(self.version), step=float(self.step), publish_block_s=block_s)
        return published, metrics

    def publish(self) -> Future[Published]:
        """Publish the current weights (e.g. the resumed version, for the generators)."""
        with self.lock:
            return self._publish()

    def _publish(self) -> Future[Published]:
        return self.writer.publish(self.policy.state_dict(), self.version)

    def checkpoint(self, pending: pa.Table) -> Path:
        """Write a checkpoint of the current step; ``pending`` from ``snapshot()``."""
        from areal_flow.train.checkpoint import save_checkpoint

        with self.lock:
            self.writer.wait()
            tables = {"pending": pending}
            if self.batch is not None:
                tables["batch"] = self.batch
            self.last_checkpoint = save_checkpoint(
                self.checkpoint_root,
                self.step,
                model=self.policy.model if self.policy.peft is None else self.policy.peft,
                tokenizer=self.tokenizer,
                train_state=self.policy.train_state(),
                meta={
                    "version": self.version,
                    "trained_ids": self.trained,
                    "next_minibatch": self.next_minibatch,
                    "config": self.cfg.model_dump(mode="json"),
                },
                tables=tables,
                keep=self.cfg.keep_checkpoints,
            )
            return self.last_checkpoint

    def close(self) -> None:
        """Wait for the weights write in flight and stop the writer's thread."""
        with self.lock:
            self.writer.close()

    def state(self) -> dict[str, Any]:
        return {
            "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "version": self.version,
            "step": self.step,
        }

    # -- resume -----------------------------------------------------------------------------

    def _restore(self, checkpoint: Any) -> None:
        from areal_flow.train.checkpoint import restore_rng
        from areal_flow.train.lora import load_adapter

        if self.policy.peft is not None:
            load_adapter(self.policy.peft, checkpoint.path)
        self.policy.load_train_state(checkpoint.train_state)
        restore_rng(checkpoint)
        meta = checkpoint.meta
        self.version = int(meta["version"])
        self.step = int(meta["step"])
        self.trained = list(meta["trained_ids"])
        self.known = set(self.trained)
        pending = checkpoint.tables.get("pending")
        if pending is not None and pending.num_rows:
            for batch in pending.combine_chunks().to_batches():
                self.pending.extend(split_groups(batch))
                self.known.update(trajectory_ids(batch))
        batch = checkpoint.tables.get("batch")
        if batch is not None and batch.num_rows:
            self.batch = batch
            self.next_minibatch = int(meta["next_minibatch"])
            self.known.update(trajectory_ids(batch))
        self.last_checkpoint = checkpoint.path


def reward_metric_means(rows: list[list[tuple[str, float]]]) -> dict[str, float]:
    """``reward/<name>``: the batch mean of each named reward metric, over the rows that have
    it (``correct`` of the math verifier is the batch accuracy)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for row in rows:
        for name, value in row:
            sums[name] = sums.get(name, 0.0) + value
            counts[name] = counts.get(name, 0) + 1
    return {f"reward/{name}": sums[name] / counts[name] for name in sorted(sums)}


def _weighted_mean(values: list[float], weights: list[int]) -> float:
    total = sum(weights)
    return sum(v * w for v, w in zip(values, weights, strict=True)) / total if total else 0.0


def _nonempty(versions: list[list[int]]) -> list[list[int]]:
    return [v for v in versions if v]
