"""Dynamic micro-batching: first-fit-decreasing bins under a token budget, packed without padding.

Rules:
- ``ffd_micro_batches`` sorts sequences by length (longest first) and puts each into the first
  micro-batch whose token total stays within the budget, else opens a new one. A sequence longer
  than the budget gets a micro-batch of its own (it cannot be split: attention needs it whole).
  The cost of a micro-batch is the sum of its lengths, because it is packed, not padded.
- ``pack_sequences`` concatenates a micro-batch into one row, ``[1, N]``, with ``position_ids``
  restarting at 0 for every sequence, and no padding.
- Running a Hugging Face causal LM on a packed row: pass ``input_ids``, ``position_ids``,
  ``attention_mask=None`` and ``use_cache=False``. transformers ≥ 4.54 (verified on 5.x) then
  detects the restarts in ``position_ids`` and builds a block-diagonal causal mask for the
  ``sdpa`` and ``eager`` attention paths (flash-attention uses varlen kernels instead), so every
  sequence sees only itself. With a cache or an explicit attention mask that detection is off
  and sequences would attend across boundaries. tests/rl/test_packing.py checks packed logits
  against per-sequence logits on a tiny random Llama.
- Mask memory: sdpa/eager materialise an N × N mask per row; the token budget bounds it.
- ``unpack`` splits per-token outputs of a packed row back into per-sequence tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def ffd_micro_batches(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into micro-batches of at most ``token_budget`` tokens.

    First-fit-decreasing; a sequence longer than the budget is alone in its micro-batch. The
    micro-batches come out longest-first; indices within one are in decreasing length.
    """
    if token_budget < 1:
        raise ValueError(f"token_budget must be ≥ 1 token, got {token_budget}")
    if any(n < 1 for n in lengths):
        raise ValueError("every sequence needs at least one token; got an empty one")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    loads: list[int] = []
    for i in order:
        for b, load in enumerate(loads):
            if load + lengths[i] <= token_budget:
                bins[b].append(i)
                loads[b] += lengths[i]
                break
        else:
            bins.append([i])
            loads.append(lengths[i])
    return bins


@dataclass(frozen=True)
class PackedRow:
    """Several sequences in one row: model inputs plus the boundaries to undo it."""

    input_ids: torch.Tensor  # [1, N] long
    position_ids: torch.Tensor  # [1, N] long, 0..len−1 per sequence
    cu_seqlens: torch.Tensor  # [k + 1] long: sequence j is tokens cu[j]:cu[j+1]

    @property
    def lengths(self) -> list[int]:
        return [int(n) for n in self.cu_seqlens.diff().tolist()]

    @property
    def segment_ids(self) -> torch.Tensor:
        """[N] long: the sequence each token belongs to (for sequence-level aggregation)."""
        counts = self.cu_seqlens.diff()
        return torch.repeat_interleave(torch.arange(counts.numel()), counts)

    def next_token_targets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets [N] and validity [N] for next-token log-probs on the packed logits.

        Position t of a sequence scores its token t + 1; the last position of every sequence
        has no next token in that sequence (target 0, valid False) and must never be scored
        against the first token of the following one.
        """
        ids = self.input_ids[0]
        targets = torch.zeros_like(ids)
        targets[:-1] = ids[1:]
        valid = torch.ones_like(ids, dtype=torch.bool)
        valid[self.cu_seqlens[1:] - 1] = False
        return torch.where(valid, targets, torch.zeros_like(targets)), valid


def pack_sequences(sequences: Sequence[Sequence[int] | torch.Tensor]) -> PackedRow:
    """One packed row from token-id sequences (lists or 1-D tensors), in the given order."""
    if not sequences:
        raise ValueError("pack_sequences needs at least one sequence")
    tensors = [torch.as_tensor(s, dtype=torch.long).reshape(-1) for s in sequences]
    lengths = torch.tensor([t.numel() for t in tensors], dtype=torch.long)
    if bool((lengths == 0).any()):
        raise ValueError("cannot pack an empty sequence")
    cu = torch.zeros(len(tensors) + 1, dtype=torch.long)
    cu[1:] = lengths.cumsum(0)
    positions = torch.cat([torch.arange(int(n)) for n in lengths])
    return PackedRow(torch.cat(tensors)[None], positions[None], cu)


def pack_values(values: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-sequence per-token tensors (behaviour log-probs, masks, …) into one packed [N, ...]."""
    if not values:
        raise ValueError("pack_values needs at least one tensor")
    return torch.cat(list(values), dim=0)


def unpack(values: torch.Tensor, cu_seqlens: torch.Tensor) -> list[torch.Tensor]:
    """Split per-token outputs [N, ...] (or [1, N, ...]) of a packed row into sequences."""
    if values.dim() >= 2 and values.shape[0] == 1 and values.shape[1] == int(cu_seqlens[-1]):
        values = values[0]
    if values.shape[0] != int(cu_seqlens[-1]):
        raise ValueError(
            f"{values.shape[0]} packed tokens but cu_seqlens covers {int(cu_seqlens[-1])}"
        )
    return list(torch.split(values, cu_seqlens.diff().tolist(), dim=0))
