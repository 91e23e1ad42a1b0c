"""Epoch sampler: permutations per epoch, epoch limits, exact resume from a saved position."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from areal_flow.data import ArithmeticTask, EpochSampler, Position, iterate


def test_each_epoch_is_a_permutation_and_epochs_differ() -> None:
    sampler = EpochSampler(50, seed=7, epochs=3)
    draws = list(sampler)
    assert len(draws) == 150
    epochs = [[d.item for d in draws if d.position.epoch == e] for e in range(3)]
    assert all(sorted(items) == list(range(50)) for items in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    assert epochs[0] != list(range(50))  # shuffled
    assert [d.position for d in draws[:2]] == [Position(0, 0), Position(0, 1)]
    assert draws[50].position == Position(1, 0)
    assert sampler.exhausted and sampler.position == Position(3, 0)


def test_same_seed_same_order_and_unshuffled_is_in_order() -> None:
    a = [d.item for d in itertools.islice(EpochSampler(30, seed=1), 70)]
    b = [d.item for d in itertools.islice(EpochSampler(30, seed=1), 70)]
    c = [d.item for d in itertools.islice(EpochSampler(30, seed=2), 70)]
    assert a == b != c
    plain = [d.item for d in EpochSampler(5, shuffle=False, epochs=2)]
    assert plain == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]


@given(
    size=st.integers(1, 40),
    seed=st.integers(0, 2**31),
    consumed=st.integers(0, 200),
    shuffle=st.booleans(),
)
def test_resume_continues_at_exactly_the_next_item(
    size: int, seed: int, consumed: int, shuffle: bool
) -> None:
    reference = EpochSampler(size, seed=seed, shuffle=shuffle)
    full = list(itertools.islice(reference, consumed + 30))

    first = EpochSampler(size, seed=seed, shuffle=shuffle)
    head = list(itertools.islice(first, consumed))
    saved = Position.from_dict(first.position.to_dict())  # what a checkpoint stores

    resumed = EpochSampler(size, seed=seed, shuffle=shuffle, start=saved)
    tail = list(itertools.islice(resumed, 30))
    assert head + tail == full


def test_resume_at_an_epoch_boundary_and_with_an_epoch_limit() -> None:
    sampler = EpochSampler(4, seed=0, epochs=2, start=Position(0, 4))
    assert sampler.position == Position(1, 0)
    assert len(list(sampler)) == 4
    done = EpochSampler(4, seed=0, epochs=2, start=Position(2, 0))
    assert list(done) == []


def test_iterate_pairs_draws_with_items() -> None:
    data = ArithmeticTask(seed=0).dataset("train", 10)
    pairs = list(iterate(data, EpochSampler(10, seed=3, epochs=1)))
    assert sorted(p.id for _, p in pairs) == sorted(p.id for p in data)
    assert all(data[d.item] == p for d, p in pairs)
    with pytest.raises(ValueError, match="dataset has 10"):
        list(iterate(data, EpochSampler(11)))


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="empty"):
        EpochSampler(0)
    with pytest.raises(ValueError, match="outside"):
        EpochSampler(3, start=Position(0, 5))
    with pytest.raises(ValueError, match="epochs"):
        EpochSampler(3, epochs=0)
