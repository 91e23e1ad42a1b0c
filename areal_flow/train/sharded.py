"""The policy of a data-parallel trainer: FSDP2 over a rank group, driven by rank 0.

Rules:
- Every rank holds the same ``ShardedPolicy``: decoder layers and then the root ``Scorer``
  wrapped by ``fully_shard`` (parameters, gradients and AdamW state sharded across ranks;
  parameters stay fp32, bf16 is the policy's autocast as in one process). Rank 0 is the
  policy the session drives; its public methods split the work, send the command
  (``ranks.RankGroup``) and take part in it; the others ``serve`` commands until 'stop'.
- Shares: each minibatch is split by ``shares.balanced_shares`` (token-balanced, a prompt's
  responses on one rank); each rank packs its share into micro-batches as one trainer would.
- Same result as one process: every micro-batch loss is divided by the *whole* minibatch's
  count (sent by rank 0) and FSDP's mean of the ranks' gradients is scaled back to their sum
  (the backward pass runs on loss × world size), so the gradient is the minibatch loss's;
  metrics are summed over ranks the same way.
- FSDP gathers parameters per forward: every rank runs as many passes as the busiest
  (``_pad_passes``: a one-token pass whose loss is multiplied by 0), or the collectives of
  different passes would pair up.
- Weights leave whole: ``state_dict`` gathers the full model on rank 0 (publishing, the HF
  model of a checkpoint); the optimizer is saved and loaded sharded with
  torch.distributed.checkpoint (``optim/``), which reshards to any rank count, one included.
- Every collective runs under the group's timeout; rank 0 turns an error into ``RankFailed``
  naming the rank that died or did not arrive.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import torch
import torch.distributed as dist

from areal_flow.train.batch import Sequence
from areal_flow.train.policy import (
    OPTIM_DIR,
    PPO_MEAN_METRICS,
    Policy,
    _MetricSum,
    batch_counts,
    load_sharded_optimizer,
    loss_denominator,
)
from areal_flow.train.ranks import RankFailed, RankGroup
from areal_flow.train.shards import balanced_shares

if TYPE_CHECKING:
    from areal_flow.train.algo import DecoupledPPO

SUM_METRICS = (*PPO_MEAN_METRICS, "entropy")


class ShardedPolicy(Policy):
    """One rank of a data-parallel policy (see the module rules)."""

    sharded = True

    def __init__(
        self, model_dir: Path, *, group: RankGroup, resume: Path | None = None, **kwargs: Any
    ) -> None:
        self.group = group
        super().__init__(model_dir, **kwargs)
        group.rendezvous("built")  # every rank loaded and sharded: collectives from here on
        if resume is not None and (resume / OPTIM_DIR).is_dir():
            load_sharded_optimizer(self.model, self.optimizer, resume / OPTIM_DIR, group.gloo)
        elif resume is not None:  # written by one process: its whole optimizer, sharded here
            from areal_flow.train.checkpoint import STATE_FILE

            state = torch.load(resume / STATE_FILE, weights_only=True)
            self._load_whole_optimizer(state["optimizer"])

    def _load_whole_optimizer(self, state: dict[str, Any]) -> None:
        """A one-process ``optimizer.state_dict()`` (parameters by position) into this rank's
        shards: positions become parameter names, which ``set_optimizer_state_dict`` shards."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        names = [name for name, _ in self.model.named_parameters()]  # the optimizer's order
        full: dict[str, Any] = {
            "state": {names[i]: moments for i, moments in state["state"].items()},
            "param_groups": [
                {**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]
            ],
        }
        options = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(self.model, self.optimizer, full, options=options)

    def _shard(self) -> None:
        from torch.distributed.fsdp import fully_shard

        blocks = set(getattr(self.model, "_no_split_modules", None) or ())
        for module in self.model.modules():
            if type(module).__name__ in blocks:
                fully_shard(module)
        fully_shard(self.scorer)

    def _backward(self, loss: torch.Tensor) -> None:
        # FSDP averages the ranks' gradients; the minibatch loss is their sum (the world size
        # undoes the mean: gloo has no pre-multiplied sum for a divide factor of 1).
        (loss * self.group.world).backward()

    # -- rank 0: the policy the session drives ------------------------------------------------

    def response_logprobs(self, seqs: list[Sequence]) -> tuple[list[torch.Tensor], list[float]]:
        shares = self._shares(seqs)
        pads = self._pads(seqs, shares)
        self._send("logprobs", pads, shares, seqs)
        gathered = self._run("logprobs", self._logprobs_share, [seqs[i] for i in shares[0]], pads)
        logprobs: list[torch.Tensor] = [torch.zeros(0)] * len(seqs)
        entropy = [0.0] * len(seqs)
        for share, (flat, ent) in zip(shares, gathered, strict=True):
            offset = 0
            for k, i in enumerate(share):
                n = seqs[i].response_len
                logprobs[i] = flat[offset : offset + n].clone()
                entropy[i] = float(ent[k])
                offset += n
        return logprobs, entropy

    def train_step(
        self, seqs: list[Sequence], algo: DecoupledPPO, prox_from_forward: bool = False
    ) -> dict[str, float]:
        shares = self._shares(seqs)
        args = {
            "algo": algo.model_dump(mode="json"),
            "denominator": loss_denominator(seqs, algo),
            "prox": prox_from_forward,
            "counts": batch_counts(seqs),
        }
        self._send("train", args, shares, seqs)
        return self._run("train", self._train_share, [seqs[i] for i in shares[0]], args)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The full model on rank 0 (CPU tensors), gathered from every rank."""
        self._send("state_dict")
        return self._run("state_dict", self._full_state)

    def save_optimizer(self, folder: Path) -> None:
        """Every rank writes its optimizer shard into ``folder/optim`` (one folder on one host)."""
        self._send("save_optimizer", {"folder": str(folder)})
        self._run("save_optimizer", self._save_optimizer, str(folder))

    def train_state(self) -> dict[str, Any]:
        """Scheduler and counters; the optimizer is in the checkpoint's ``optim/`` shards."""
        state = super().train_state()
        del state["optimizer"]
        return state

    def load_train_state(self, state: dict[str, Any], folder: Path | None = None) -> None:
        """Scheduler and counters (the optimizer shards were loaded at construction)."""
        self.scheduler.load_state_dict(state["scheduler"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.bad_in_a_row = int(state.get("bad_in_a_row", 0))

    def close(self) -> None:
        self.group.stop()

    def abort(self) -> None:
        self.group.abort()

    def _shares(self, seqs: list[Sequence]) -> list[list[int]]:
        return balanced_shares(
            [tuple(s.tokens[: s.prompt_len].tolist()) for s in seqs],
            [s.prompt_len for s in seqs],
            [s.response_len for s in seqs],
            self.group.world,
            self.share_prompts,
        )

    @staticmethod
    def _pads(seqs: list[Sequence], shares: list[list[int]]) -> dict[str, int]:
        """Sizes of the gather buffers: the most response tokens and rows of any share."""
        return {
            "tokens": max(sum(seqs[i].response_len for i in s) for s in shares),
            "rows": max(len(s) for s in shares),
        }

    def _send(
        self,
        op: str,
        args: dict[str, Any] | None = None,
        shares: list[list[int]] | None = None,
        seqs: list[Sequence] | None = None,
    ) -> None:
        payloads = None
        if shares is not None and seqs is not None:
            payloads = [b""] + [encode_sequences([seqs[i] for i in s]) for s in shares[1:]]
        self.group.send(op, args, payloads)

    def _run(self, op: str, fn: Any, *args: Any) -> Any:
        """Rank 0's part of a command; a failed collective names the rank to blame."""
        try:
            return fn(*args)
        except RankFailed:
            raise
        except Exception as err:
            timed_out = "timed out" in str(err).lower()
            if not timed_out and not self.group.broken(wait_s=2.0):
                raise  # an error of rank 0's own (e.g. bad input), not of the group
            raise RankFailed(self.group.explain(op, err)) from err

    # -- ranks 1..N−1 ---------------------------------------------------------------------------

    def serve(self) -> None:
        """Run rank 0's commands until 'stop'."""
        while True:
            op, args, payload = self.group.receive()
            share = decode_sequences(payload) if payload is not None else []
            if op == "stop":
                return
            if op == "logprobs":
                self._logprobs_share(share, args)
            elif op == "train":
                self._train_share(share, args)
            elif op == "state_dict":
                self._full_state()
            elif op == "save_optimizer":
                self._save_optimizer(args["folder"])
            else:
                raise RuntimeError(f"rank {self.group.rank}: unknown command {op!r}")

    # -- every rank: the collective part of each command ---------------------------------------

    def _logprobs_share(
        self, share: list[Sequence], pads: dict[str, int]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This share's log-probs and entropies, gathered on rank 0 (padded to ``pads``)."""
        logprobs, entropy = Policy.response_logprobs(self, share)
        flat = torch.zeros(pads["tokens"])
        rows = torch.zeros(pads["rows"])
        if share:
            joined = torch.cat([lp.reshape(-1).float() for lp in logprobs])
            flat[: joined.numel()] = joined
            rows[: len(entropy)] = torch.tensor(entropy)
        out = [(torch.zeros_like(flat), torch.zeros_like(rows)) for _ in range(self.group.world)]
        dist.gather(flat, [f for f, _ in out] if self.group.rank == 0 else None, 0, self.group.gloo)
        dist.gather(rows, [r for _, r in out] if self.group.rank == 0 else None, 0, self.group.gloo)
        return out

    def _train_share(self, share: list[Sequence], args: dict[str, Any]) -> dict[str, float]:
        """Gradients of this share (scaled for the whole minibatch), FSDP's sum over ranks,
        one optimizer step on every shard; the metrics of the whole minibatch."""
        from areal_flow.train.algo import DecoupledPPO

        began = time.perf_counter()
        algo = (
            args["algo"] if isinstance(args["algo"], DecoupledPPO) else DecoupledPPO(**args["algo"])
        )
        totals = self._accumulate(share, algo, float(args["denominator"]), bool(args["prox"]))
        totals = self._reduce(totals, with_entropy=bool(args["prox"]))
        return self._optimizer_step(totals, dict(args["counts"]), began)

    def _full_state(self) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state: dict[str, torch.Tensor] = get_model_state_dict(self.model, options=options)  # type: ignore[assignment]
        return state

    def _save_optimizer(self, folder: str) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        state = {"optimizer": get_optimizer_state_dict(self.model, self.optimizer)}
        dcp.save(state, checkpoint_id=str(Path(folder) / OPTIM_DIR), process_group=self.group.gloo)

    def _grad_norm(self) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        full = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        return float(full)

    def _agree_passes(self, passes: int) -> int:
        most = torch.tensor([passes])
        dist.all_reduce(most, dist.ReduceOp.MAX, group=self.group.gloo)
        return int(most)

    def _pad_passes(self, count: int, backward: bool) -> None:
        """One-token passes (loss × 0): FSDP's gathers pair up only if every rank runs as many."""
        for _ in range(count):
            ids = torch.zeros((1, 1), dtype=torch.long, device=self.device)
            logits = self.scorer(ids, ids, torch.zeros(1, dtype=torch.long, device=self.device))
            if backward:
                (logits.sum() * 0.0).backward()

    def _reduce(self, totals: _MetricSum, with_entropy: bool) -> _MetricSum:
        """The metric sums of every rank's share, on every rank."""
        values = [totals.loss, totals.tokens, *(totals.sums.get(n, 0.0) for n in SUM_METRICS)]
        summed = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(summed, group=self.group.gloo)
        top = torch.tensor([totals.iw_max], dtype=torch.float64)
        dist.all_reduce(top, dist.ReduceOp.MAX, group=self.group.gloo)
        out = _MetricSum()
        out.loss, out.tokens = float(summed[0]), float(summed[1])
        out.sums = {n: float(v) for n, v in zip(SUM_METRICS, summed[2:].tolist(), strict=True)}
        if not with_entropy:
            del out.sums["entropy"]
        out.iw_max = float(top[0])
        return out


def encode_sequences(seqs: list[Sequence]) -> bytes:
    """A share as Arrow IPC bytes (for the store; never pickle)."""
    table = pa.table(
        {
            "tokens": pa.array([s.tokens.tolist() for s in seqs], pa.list_(pa.int64())),
            "prompt_len": pa.array([s.prompt_len for s in seqs], pa.int64()),
            "behav": pa.array([s.behav.tolist() for s in seqs], pa.list_(pa.float32())),
            "prox": pa.array([s.prox.tolist() for s in seqs], pa.list_(pa.float32())),
            "advantage": pa.array([s.advantage for s in seqs], pa.float64()),
            "trainable": pa.array([s.trainable for s in seqs], pa.bool_()),
            "sampled": pa.array([s.sampled.tolist() for s in seqs], pa.list_(pa.bool_())),
        }
    )
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def decode_sequences(data: bytes) -> list[Sequence]:
    table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
    cols = {name: table.column(name).to_pylist() for name in table.schema.names}
    return [
        Sequence(
            tokens=torch.tensor(cols["tokens"][i], dtype=torch.long),
            prompt_len=cols["prompt_len"][i],
            behav=torch.tensor(cols["behav"][i], dtype=torch.float32),
            prox=torch.tensor(cols["prox"][i], dtype=torch.float32),
            advantage=cols["advantage"][i],
            trainable=cols["trainable"][i],
            sampled=torch.tensor(cols["sampled"][i], dtype=torch.bool),
        )
        for i in range(table.num_rows)
    ]
