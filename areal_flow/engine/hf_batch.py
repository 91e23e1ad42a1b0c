"""The running set of the hf engine: one left-padded KV cache shared by all live sequences.

Rules:
- Row ``i`` of the cache, the attention mask and the next-input vector belong to ``seqs[i]``.
  Padding is on the left and masked; each row carries its own position ids, so rows of any
  length decode together.
- A sequence joins by prefilling ``prompt + response so far`` minus its last token, whose
  logits come from the next decode step; so an interrupted sequence re-enters exactly like a
  new one (its prefix recomputed under the current weights).
- Leaving rows are cut out and left padding shared by all rows is trimmed, so the cache is
  as long as the longest live sequence.
- Runs in the engine's compute thread only; torch is imported inside functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from areal_flow.engine.base import GenerationRequest

if TYPE_CHECKING:
    import torch


@dataclass
class Sequence:
    """One sample being generated (or waiting to be)."""

    request: GenerationRequest
    index: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    finish: str | None = None

    def full(self) -> list[int]:
        return [*self.request.prompt_token_ids, *self.tokens]


class RunningBatch:
    """Live sequences with their KV cache; ``add`` prefills, ``decode`` runs one step."""

    def __init__(self, model: Any, pad_id: int) -> None:
        import inspect

        self.model = model
        self.pad_id = pad_id
        # transformers 5.x renamed ``past_key_values`` to ``cache``; older versions lack it.
        params = inspect.signature(model.forward).parameters
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self.seqs: list[Sequence] = []
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # [rows, cache_len + 1] incl. the next input
        self.next_input: torch.Tensor | None = None  # [rows]
        self.positions: torch.Tensor | None = None  # [rows], position of next_input

    def __len__(self) -> int:
        return len(self.seqs)

    def clear(self) -> list[Sequence]:
        """Drop the cache; returns the sequences that were live (to recompute later)."""
        seqs, self.seqs = self.seqs, []
        self.cache = self.mask = self.next_input = self.positions = None
        return seqs

    def add(self, seqs: list[Sequence]) -> None:
        """Prefill ``seqs`` and merge them into the running set."""
        import torch

        if not seqs:
            return
        device = self.model.device
        prefixes = [s.full()[:-1] for s in seqs]
        width = max(len(p) for p in prefixes)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(seqs), width), dtype=torch.long, device=device)
        for row, prefix in enumerate(prefixes):
            if prefix:
                ids[row, width - len(prefix) :] = torch.tensor(prefix, device=device)
                mask[row, width - len(prefix) :] = 1
        cache = self._prefill(ids, mask) if width else None
        last = torch.tensor([s.full()[-1] for s in seqs], dtype=torch.long, device=device)
        pos = torch.tensor([len(p) for p in prefixes], dtype=torch.long, device=device)
        self._merge(seqs, cache, mask, last, pos)

    def _prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> Any:
        """KV cache of the padded prefixes; rows with no tokens get zero (masked) entries."""
        from transformers import DynamicCache

        filled = mask.sum(dim=1) > 0
        rows = filled.nonzero().squeeze(-1)
        cache = DynamicCache(config=self.model.config)
        sub_mask = mask[rows]
        positions = (sub_mask.cumsum(dim=1) - 1).clamp(min=0)
        self.model(
            input_ids=ids[rows],
            attention_mask=sub_mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_kwarg: cache},
        )
        if bool(filled.all()):
            return cache
        # Scatter the prefilled rows into a full-size cache; empty rows stay zero and masked.
        for layer in cache.layers:
            for name in ("keys", "values"):
                part = getattr(layer, name)
                full = part.new_zeros((len(mask), *part.shape[1:]))
                full[rows] = part
                setattr(layer, name, full)
        return cache

    def _merge(
        self,
        seqs: list[Sequence],
        cache: Any,
        mask: torch.Tensor,
        last: torch.Tensor,
        pos: torch.Tensor,
    ) -> None:
        import torch

        one = torch.ones((len(seqs), 1), dtype=mask.dtype, device=mask.device)
        mask = torch.cat([mask, one], dim=1)
        if not self.seqs:
            self.seqs, self.cache, self.mask = list(seqs), cache, mask
            self.next_input, self.positions = last, pos
            return
        assert self.mask is not None and self.next_input is not None
        assert self.positions is not None
        width = max(self.mask.shape[1], mask.shape[1])
        self.mask = torch.cat([_pad_left(self.mask, width), _pad_left(mask, width)], dim=0)
        self.cache = _merge_caches(self.cache, cache, len(self.seqs), len(seqs), width - 1)
        self.seqs.extend(seqs)
        self.next_input = torch.cat([self.next_input, last])
        self.positions = torch.cat([self.positions, pos])

    def decode(self) -> torch.Tensor:
        """Feed every row's next input; returns the last-position logits ``[rows, vocab]``."""
        from transformers import DynamicCache

        assert self.mask is not None and self.next_input is not None
        assert self.positions is not None
        if self.cache is None:
            self.cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=self.next_input.unsqueeze(-1),
            attention_mask=self.mask,
            position_ids=self.positions.unsqueeze(-1),
            use_cache=True,
            **{self.cache_kwarg: self.cache},
        )
        return out.logits[:, -1, :]

    def advance(self, tokens: torch.Tensor) -> None:
        """Make the sampled ``tokens`` the next inputs (after ``decode``)."""
        import torch

        assert self.mask is not None and self.positions is not None
        one = torch.ones((len(self.seqs), 1), dtype=self.mask.dtype, device=self.mask.device)
        self.mask = torch.cat([self.mask, one], dim=1)
        self.next_input = tokens
        self.positions = self.positions + 1

    def remove(self, drop: set[int]) -> None:
        """Cut rows ``drop`` out of every tensor, then trim shared left padding."""
        import torch

        if not drop:
            return
        keep = [i for i in range(len(self.seqs)) if i not in drop]
        if not keep:
            self.clear()
            return
        assert self.mask is not None and self.next_input is not None
        assert self.positions is not None
        index = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        self.seqs = [self.seqs[i] for i in keep]
        self.mask = self.mask[index]
        self.next_input = self.next_input[index]
        self.positions = self.positions[index]
        leading = int((self.mask.cumsum(dim=1) == 0).sum(dim=1).min())
        if self.cache is not None:
            for layer in self.cache.layers:
                layer.keys = layer.keys[index, :, leading:]
                layer.values = layer.values[index, :, leading:]
        self.mask = self.mask[:, leading:]


def _pad_left(tensor: torch.Tensor, width: int, dim: int = 1) -> torch.Tensor:
    """Zero-pad ``tensor`` on the left along ``dim`` to ``width``."""
    import torch

    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _merge_caches(old: Any, new: Any, old_rows: int, new_rows: int, length: int) -> Any:
    """Row-concatenate two caches (either may be None: no cached tokens), left-padded."""
    import torch

    base = old if old is not None else new
    if base is None:
        return None
    for index, layer in enumerate(base.layers):
        for name in ("keys", "values"):
            parts = []
            for cache, rows in ((old, old_rows), (new, new_rows)):
                if cache is None:
                    ref = getattr(layer, name)
                    parts.append(ref.new_zeros((rows, ref.shape[1], length, ref.shape[3])))
                else:
                    parts.append(_pad_left(getattr(cache.layers[index], name), length, dim=2))
            setattr(layer, name, torch.cat(parts, dim=0))
    return base
