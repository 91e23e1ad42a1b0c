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

import contextlib
import os
import threading
import time
from collections import deque
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from areal_flow.precision import device_kind, resolve_autocast
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
    from areal_flow.runtime.plan import RankPlacement
    from areal_flow.train.config import TrainingConfig
    from areal_flow.train.policy import Policy


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
        cpus: list[int] | None = None,
        ranks: RankPlacement | None = None,
    ) -> None:
        """``ranks``: where ranks 1..N−1 start (the Ray launcher's placement); None: as child
        processes of this one."""
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
        options: dict[str, Any] = {
            "total_steps": cfg.steps,
            "bf16": resolve_autocast(cfg.bf16, device_kind(device)),
            "temperature": temperature,
            "micro_batch_tokens": cfg.micro_batch_tokens,
            "share_prompts": cfg.share_prompts,
        }
        if cfg.ranks > 1:
            self.policy: Policy = start_ranks(
                cfg, model_dir, options, run_dir, device, seed, cpus or [], checkpoint, ranks
            )
        else:
            self.policy = Policy(
                model_dir, optimizer=cfg.optimizer, device=device, lora=cfg.lora, **options
            )
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        adapter = self.policy.peft
        self.writer = WeightWriter(
            weights_root(store, run_dir),
            dtype=getattr(torch, weights_dtype) if weights_dtype and adapter is None else None,
            keep_fp32=tuple(getattr(self.policy.model, "_keep_in_fp32_modules", None) or ()),
            adapter_config=adapter_config_json(adapter) if adapter is not None else None,
            cores=cpus or (),
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
        sampled = [sum(m) for m in table.column("loss_mask").to_pylist()]
        return {
            "groups": float(len(groups)),
            "trajectories": float(table.num_rows),
            "reward_mean": float(rewards.mean()),
            **named_means("reward", table.column("metrics").to_pylist()),
            **named_means("episode", table.column("episode_metrics").to_pylist()),
            "truncated_frac": sum(truncated) / table.num_rows,
            "response_len_mean": sum(lengths) / len(lengths),
            "sampled_len_mean": sum(sampled) / len(sampled),
            **({"entropy": _weighted_mean(entropy, sampled)} if entropy else {}),
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
        from areal_flow.rl import sampled_versions, version_lag_stats

        with self.lock:
            if self.batch is None:
                raise RuntimeError("train_next called without a prepared batch; call prepare()")
            rows = rows_of_minibatch(self.batch, self.next_minibatch)
            single = max(self.batch.column("minibatch").to_pylist()) == 0
            # Lag at the step that trains them (the staleness bound's definition): η + K − 1
            # at most, η for a batch's first minibatch.
            versions = sampled_versions(
                rows.column("versions").to_pylist(), rows.column("loss_mask").to_pylist()
            )
            lags = version_lag_stats(_nonempty(versions), self.version)
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
        from areal_flow.train.sharded import ShardedPolicy

        with self.lock:
            self.writer.wait()
            tables = {"pending": pending}
            if self.batch is not None:
                tables["batch"] = self.batch
            policy = self.policy
            sharded = isinstance(policy, ShardedPolicy)
            self.last_checkpoint = save_checkpoint(
                self.checkpoint_root,
                self.step,
                model=self.policy.model if self.policy.peft is None else self.policy.peft,
                model_state=policy.state_dict() if sharded else None,
                write_shards=policy.save_optimizer if isinstance(policy, ShardedPolicy) else None,
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
        """Wait for the weights write in flight, stop the writer's thread and the ranks."""
        with self.lock:
            try:
                self.writer.close()
            finally:
                self.policy.close()

    def rank_failure(self) -> str | None:
        """Why a rank of a data-parallel trainer died, or None (any thread)."""
        group = getattr(self.policy, "group", None)
        return group.failure if group is not None else None

    def abort(self) -> None:
        """After a failure, from any thread: kill the other ranks now, so a collective that
        waits on them fails instead of holding the compute thread."""
        self.policy.abort()

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
        self.policy.load_train_state(checkpoint.train_state, checkpoint.path)
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


def start_ranks(
    cfg: TrainingConfig,
    model_dir: Path,
    options: dict[str, Any],
    run_dir: Path,
    device: str,
    seed: int,
    cpus: list[int],
    checkpoint: Any,
    placement: RankPlacement | None = None,
) -> Policy:
    """Rank 0 of a data-parallel trainer: start the other ranks, join them, shard the model.
    This process keeps an equal share of the threads and pinned cores it was given."""
    import torch

    from areal_flow.train.ranks import GroupSpec, RankGroup, core_shares, rank_starter
    from areal_flow.train.sharded import ShardedPolicy

    threads = max(1, torch.get_num_threads() // cfg.ranks)
    torch.set_num_threads(threads)
    shares = core_shares(cpus, cfg.ranks)
    if shares[0]:  # every thread of this process (new ones inherit it from their creator)
        for task in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(task), shares[0])
    resume = checkpoint.path if checkpoint is not None else None
    spec = GroupSpec(
        name=cfg.name,
        world=cfg.ranks,
        port=0,
        device=device_kind(device),
        timeout_s=cfg.rank_timeout_s,
        cpus=shares,
        threads=threads,
        run_dir=str(run_dir),
        policy={
            "model_dir": str(model_dir),
            "optimizer": cfg.optimizer.model_dump(mode="json"),
            **options,
        },
        seed=seed,
        resume=str(resume) if resume is not None else None,
    )
    group = RankGroup.start(
        spec, Path(run_dir) / "ranks" / f"{cfg.name}.json", rank_starter(placement)
    )
    try:
        return ShardedPolicy(
            model_dir,
            group=group,
            resume=resume,
            optimizer=cfg.optimizer,
            device=group.spec.rank_device(0),
            **options,
        )
    except BaseException:
        group.abort()
        group.destroy()
        raise


def named_means(prefix: str, rows: list[list[tuple[str, float]]]) -> dict[str, float]:
    """``<prefix>/<name>``: the batch mean of each named metric of a metrics-map column, over
    the rows that have it (``reward/correct`` of the math verifier is the batch accuracy,
    ``episode/tool_calls`` the mean calls per episode)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for row in rows:
        for name, value in row:
            sums[name] = sums.get(name, 0.0) + value
            counts[name] = counts.get(name, 0) + 1
    return {f"{prefix}/{name}": sums[name] / counts[name] for name in sorted(sums)}


def _weighted_mean(values: list[float], weights: list[int]) -> float:
    total = sum(weights)
    return sum(v * w for v, w in zip(values, weights, strict=True)) / total if total else 0.0


def _nonempty(versions: list[list[int]]) -> list[list[int]]:
    return [v for v in versions if v]
