"""Shared-prompt packing: the row layout by hand, and micro-batches that respect the budget."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from areal_flow.rl import pack_prompt_tree, prompt_tree_micro_batches


def t(*ids: int) -> torch.Tensor:
    return torch.tensor(ids)


def test_layout_by_hand() -> None:
    # prompt A = [1 2 3] with responses [20] and [10 11]; prompt B = [7] with [30 31]
    row = pack_prompt_tree([(t(1, 2, 3), t(20)), (t(7), t(30, 31)), (t(1, 2, 3), t(10, 11))])
    # the longer response of A is its root; the shorter one a branch at position 3
    assert row.input_ids.tolist() == [[1, 2, 3, 10, 11, 20, 7, 30, 31]]
    assert row.position_ids.tolist() == [[0, 1, 2, 3, 4, 3, 0, 1, 2]]
    # token t of a response is scored by the position before it; a branch's first token by the
    # root's last prompt token (offset 2)
    assert [s.tolist() for s in row.scoring] == [[2], [6, 7], [2, 3]]
    with pytest.raises(ValueError, match="pair 0"):
        pack_prompt_tree([(t(1), t())])


def test_micro_batches_share_prompts_and_split_what_does_not_fit() -> None:
    keys, prompt_lens = ["a", "a", "a", "b"], [10, 10, 10, 4]
    response_lens = [5, 6, 7, 3]
    # unit a costs 10 + 18 = 28 positions, unit b 4 + 3 = 7
    assert prompt_tree_micro_batches(keys, prompt_lens, response_lens, 40) == [[0, 1, 2, 3]]
    assert prompt_tree_micro_batches(keys, prompt_lens, response_lens, 30) == [[0, 1, 2], [3]]
    # budget 22: unit a splits into [0, 1] (21) and [2] (17), each with its own copy of the prompt
    assert prompt_tree_micro_batches(keys, prompt_lens, response_lens, 22) == [[0, 1], [2], [3]]


@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(1, 30)), min_size=1, max_size=30),
    st.integers(8, 80),
)
def test_every_pair_once_and_packed_rows_within_budget(
    pairs: list[tuple[int, int]], budget: int
) -> None:
    prompt_lens = {k: 3 + 2 * k for k in range(4)}
    keys = [k for k, _ in pairs]
    bins = prompt_tree_micro_batches(
        keys, [prompt_lens[k] for k in keys], [r for _, r in pairs], budget
    )
    assert sorted(i for b in bins for i in b) == list(range(len(pairs)))
    for b in bins:
        row = pack_prompt_tree(
            [(torch.full((prompt_lens[keys[i]],), keys[i]), torch.ones(pairs[i][1])) for i in b]
        )
        # over budget only when one prompt and one response alone exceed it
        assert row.input_ids.shape[1] <= budget or len(b) == 1
