"""Training batches: from Arrow ``scored`` rows to token sequences, and the data position.

Rules:
- A trajectory's id is ``<group_id>/<sample_index>``; ids are what checkpoints record as the
  data position, so a resumed run neither loses nor repeats a sample.
- A *group* is the rows of one ``group_id`` within one input batch (the generator emits each
  prompt group whole; the filter may have dropped some of its rows). Batches are whole groups.
- A prepared batch is the scored rows plus the columns the trainer computed before the update:
  ``advantage`` (float32), ``prox_logprobs`` (π_prox per response token), ``trainable`` (bool)
  and ``minibatch`` (int32, which of the K optimizer steps trains the row). It is an Arrow table
  so a checkpoint can store an interrupted batch without pickle.
- Token layout of a sequence: prompt tokens then response tokens. Response token t is scored by
  the logits at position ``prompt_len + t − 1``.
- Response tokens with ``loss_mask`` 0 (inserted by an episode: tool results, template glue)
  are context only: they are scored by the forward pass like any token but get no loss, no
  importance weight and no place in any per-token metric.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from areal_flow.schema import SCHEMAS

if TYPE_CHECKING:
    import torch

#: Columns a prepared batch adds to the ``scored`` rows.
PREPARED_FIELDS: list[pa.Field] = [
    pa.field("advantage", pa.float32(), nullable=False),
    pa.field("prox_logprobs", pa.list_(pa.float32()), nullable=False),
    pa.field("trainable", pa.bool_(), nullable=False),
    pa.field("minibatch", pa.int32(), nullable=False),
]
PREPARED_SCHEMA = pa.schema([*SCHEMAS["scored"], *PREPARED_FIELDS])


def trajectory_ids(rows: pa.RecordBatch | pa.Table) -> list[str]:
    """``<group_id>/<sample_index>`` of every row."""
    groups = rows.column("group_id").to_pylist()
    samples = rows.column("sample_index").to_pylist()
    return [f"{g}/{s}" for g, s in zip(groups, samples, strict=True)]


def split_groups(batch: pa.RecordBatch) -> list[pa.RecordBatch]:
    """The rows of ``batch`` per ``group_id``, in order of first appearance."""
    ids = batch.column("group_id").to_pylist()
    order = list(dict.fromkeys(ids))
    if len(order) == 1:
        return [batch]
    return [batch.filter(pc.equal(batch.column("group_id"), gid)) for gid in order]


def check_rows(batch: pa.RecordBatch) -> None:
    """Raise if ``batch`` is not scored rows a trainer can use (names the bad row)."""
    missing = [f.name for f in SCHEMAS["scored"] if f.name not in batch.schema.names]
    if missing:
        raise ValueError(
            f"trainer input lacks columns {missing}; connect it to a port carrying 'scored' records"
        )
    columns = ("prompt_token_ids", "response_token_ids", "logprobs", "versions", "loss_mask")
    prompts, responses, *per_token = (batch.column(c).to_pylist() for c in columns)
    for row, (p, r, *lists) in enumerate(zip(prompts, responses, *per_token, strict=True)):
        where = f"row {row} of group {batch.column('group_id')[row]}"
        if not p:
            raise ValueError(f"{where} has no prompt")
        for name, values in zip(columns[2:], lists, strict=True):
            if len(values) != len(r):
                raise ValueError(
                    f"{where}: {len(r)} response tokens but {len(values)} entries in "
                    f"'{name}'; the generator must send one per response token"
                )


@dataclass(frozen=True)
class Sequence:
    """One trajectory as tensors: what a forward pass and the loss need."""

    tokens: torch.Tensor  # [L] long: prompt then response
    prompt_len: int
    behav: torch.Tensor  # [R] float32 behaviour log-probs
    prox: torch.Tensor  # [R] float32 π_prox log-probs ([R] zeros before they are computed)
    advantage: float
    trainable: bool  # False: the response is kept for the baseline but gets no loss
    sampled: torch.Tensor  # [R] bool: the loss mask (False: inserted by the episode)

    @property
    def response_len(self) -> int:
        return int(self.tokens.numel()) - self.prompt_len

    @property
    def loss_mask(self) -> torch.Tensor:
        """[R] bool: the tokens that get a loss (sampled, in a trainable trajectory)."""
        return self.sampled & self.trainable

    @property
    def loss_tokens(self) -> int:
        return int(self.loss_mask.sum())


def to_sequences(rows: pa.Table | pa.RecordBatch) -> list[Sequence]:
    """Tensors of a prepared table (or of plain scored rows: zero advantage and π_prox)."""
    import torch

    names = rows.schema.names
    prompts = rows.column("prompt_token_ids").to_pylist()
    responses = rows.column("response_token_ids").to_pylist()
    behav = rows.column("logprobs").to_pylist()
    n = rows.num_rows
    prox = rows.column("prox_logprobs").to_pylist() if "prox_logprobs" in names else [None] * n
    adv = rows.column("advantage").to_pylist() if "advantage" in names else [0.0] * n
    trainable = rows.column("trainable").to_pylist() if "trainable" in names else [True] * n
    masks = rows.column("loss_mask").to_pylist()
    out = []
    for i in range(n):
        behaviour = torch.tensor(behav[i], dtype=torch.float32)
        out.append(
            Sequence(
                tokens=torch.tensor(prompts[i] + responses[i], dtype=torch.long),
                prompt_len=len(prompts[i]),
                behav=behaviour,
                prox=torch.zeros_like(behaviour)
                if prox[i] is None
                else torch.tensor(prox[i], dtype=torch.float32),
                advantage=float(adv[i]),
                trainable=bool(trainable[i]),
                sampled=torch.tensor(masks[i], dtype=torch.bool),
            )
        )
    return out


def minibatch_assignment(n: int, k: int, seed: int) -> list[int]:
    """Which of ``k`` minibatches each of ``n`` rows goes to: a seeded shuffle, sizes ±1."""
    import torch

    if k > n:
        raise ValueError(
            f"updates_per_batch={k} needs at least {k} trajectories per batch, got {n}; "
            "raise batch_groups or lower updates_per_batch"
        )
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator).tolist()
    assignment = [0] * n
    for rank, row in enumerate(order):
        assignment[row] = rank * k // n
    return assignment


def prepared_table(
    groups: Iterable[pa.RecordBatch],
    advantages: list[float],
    prox: list[list[float]],
    trainable: list[bool],
    minibatch: list[int],
) -> pa.Table:
    """The scored rows of ``groups`` with the computed columns appended."""
    scored = pa.Table.from_batches(
        [g.select(SCHEMAS["scored"].names) for g in groups], schema=SCHEMAS["scored"]
    )
    extra = [
        pa.array(advantages, pa.float32()),
        pa.array(prox, pa.list_(pa.float32())),
        pa.array(trainable, pa.bool_()),
        pa.array(minibatch, pa.int32()),
    ]
    for field, column in zip(PREPARED_FIELDS, extra, strict=True):
        scored = scored.append_column(field, column)
    return scored


def rows_of_minibatch(table: pa.Table, index: int) -> pa.Table:
    """The rows of a prepared table trained by optimizer step ``index`` of the batch."""
    return table.filter(pc.equal(table.column("minibatch"), index))
