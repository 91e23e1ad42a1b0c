"""Walk a dataset epoch by epoch, shuffled by seed, from an exact resumable position.

Role: the order in which a prompt source admits items, and the state a checkpoint stores so a
resumed run neither repeats nor skips an item.

Rules:
- Epoch ``e`` visits every item once, in the permutation drawn from (seed, e) — a pure function,
  so no RNG state needs saving: the position (epoch, index within that epoch's permutation) is
  the whole state.
- `EpochSampler.position` is always the position of the *next* draw. Save it after handing an
  item downstream; a sampler started from it continues at exactly the following item.
- ``epochs=None`` cycles forever; otherwise iteration stops after the last epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True, order=True)
class Position:
    """Where the sampler stands: epoch number and index within that epoch's permutation."""

    epoch: int = 0
    index: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Position:
        return cls(int(state["epoch"]), int(state["index"]))


@dataclass(frozen=True)
class Draw:
    """One sampled item: its position in the walk and its index in the dataset."""

    position: Position
    item: int


class EpochSampler:
    """Indices 0..size-1, one permutation per epoch (or in order when ``shuffle`` is False)."""

    def __init__(
        self,
        size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        epochs: int | None = None,
        start: Position | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"cannot sample from an empty dataset (size={size})")
        if epochs is not None and epochs < 1:
            raise ValueError(f"epochs must be at least 1 or None (forever), got {epochs}")
        start = start if start is not None else Position()
        if start.epoch < 0 or not 0 <= start.index <= size:
            raise ValueError(f"start {start} is outside a dataset of {size} items")
        self.size, self.seed, self.shuffle, self.epochs = size, seed, shuffle, epochs
        # index == size is the end of an epoch: normalise to the start of the next one.
        self._position = Position(start.epoch + 1, 0) if start.index == size else start
        self._order_epoch = -1
        self._order: np.ndarray = np.arange(0)

    @property
    def position(self) -> Position:
        """The position of the next draw (what a checkpoint stores)."""
        return self._position

    @property
    def exhausted(self) -> bool:
        return self.epochs is not None and self._position.epoch >= self.epochs

    def order(self, epoch: int) -> np.ndarray:
        """The dataset indices in the order epoch ``epoch`` visits them."""
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def __iter__(self) -> Iterator[Draw]:
        return self

    def __next__(self) -> Draw:
        if self.exhausted:
            raise StopIteration
        position = self._position
        if self._order_epoch != position.epoch:
            self._order, self._order_epoch = self.order(position.epoch), position.epoch
        item = int(self._order[position.index])
        following = position.index + 1
        self._position = (
            Position(position.epoch + 1, 0)
            if following == self.size
            else Position(position.epoch, following)
        )
        return Draw(position, item)


def iterate(dataset: Sequence[T], sampler: EpochSampler) -> Iterator[tuple[Draw, T]]:
    """The dataset's items in the sampler's order, each with its draw."""
    if len(dataset) != sampler.size:
        raise ValueError(f"sampler covers {sampler.size} items, the dataset has {len(dataset)}")
    for draw in sampler:
        yield draw, dataset[draw.item]
