"""Micro-batching: first-fit-decreasing bins, and packed rows checked on a real (tiny) Llama."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from areal_flow.rl import (
    ffd_micro_batches,
    pack_sequences,
    pack_values,
    token_logprobs,
    unpack,
)


def test_ffd_by_hand() -> None:
    # lengths 5 3 7 2 9 4, budget 10; decreasing: 9 7 5 4 3 2
    # 9 → new bin; 7 → new; 5 → new; 4 → joins 5 (9); 3 → joins 7 (10); 2 → fits nowhere → new
    assert ffd_micro_batches([5, 3, 7, 2, 9, 4], 10) == [[4], [2, 1], [0, 5], [3]]


def test_a_sequence_over_budget_gets_its_own_micro_batch() -> None:
    assert ffd_micro_batches([3, 12, 4], 10) == [[1], [2, 0]]
    with pytest.raises(ValueError, match="empty"):
        ffd_micro_batches([3, 0], 10)


@given(st.lists(st.integers(1, 50), max_size=40), st.integers(1, 60))
def test_ffd_places_every_sequence_once_within_budget(lengths: list[int], budget: int) -> None:
    bins = ffd_micro_batches(lengths, budget)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    for b in bins:
        assert sum(lengths[i] for i in b) <= budget or len(b) == 1
    # first fit: no later bin's first (largest) sequence would have fit into an earlier bin
    for k, b in enumerate(bins):
        for earlier in bins[:k]:
            assert sum(lengths[i] for i in earlier) + lengths[b[0]] > budget


def test_pack_and_unpack_round_trip() -> None:
    row = pack_sequences([[5, 6, 7], torch.tensor([8]), [9, 10]])
    assert row.input_ids.tolist() == [[5, 6, 7, 8, 9, 10]]
    assert row.position_ids.tolist() == [[0, 1, 2, 0, 0, 1]]
    assert row.cu_seqlens.tolist() == [0, 3, 4, 6]
    assert row.lengths == [3, 1, 2]
    assert row.segment_ids.tolist() == [0, 0, 0, 1, 2, 2]
    targets, valid = row.next_token_targets()
    assert targets.tolist() == [6, 7, 0, 0, 10, 0]  # never across a boundary
    assert valid.tolist() == [True, True, False, False, True, False]
    parts = unpack(torch.arange(12).reshape(1, 6, 2), row.cu_seqlens)
    assert [p.tolist() for p in parts] == [[[0, 1], [2, 3], [4, 5]], [[6, 7]], [[8, 9], [10, 11]]]
    assert pack_values([torch.ones(3), torch.zeros(1)]).tolist() == [1, 1, 1, 0]
    with pytest.raises(ValueError, match="packed tokens"):
        unpack(torch.zeros(5), row.cu_seqlens)


def tiny_llama(attn: str) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    config._attn_implementation = attn
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_llama_logits_equal_per_sequence_logits(attn: str) -> None:
    model = tiny_llama(attn)
    gen = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 101, (n,), generator=gen) for n in (6, 1, 9, 4)]
    row = pack_sequences(seqs)
    with torch.no_grad():
        packed = model(
            input_ids=row.input_ids, position_ids=row.position_ids, use_cache=False
        ).logits
        alone = [model(input_ids=s[None], use_cache=False).logits[0] for s in seqs]
    for got, want in zip(unpack(packed, row.cu_seqlens), alone, strict=True):
        assert torch.allclose(got, want, atol=1e-4)

    # The whole trainer path: packed logits → next-token log-probs → back per sequence.
    targets, valid = row.next_token_targets()
    logp = unpack(token_logprobs(packed[0], targets), row.cu_seqlens)
    for seq, lp, logits in zip(seqs, logp, alone, strict=True):
        ref = logits[:-1].log_softmax(-1).gather(-1, seq[1:, None])[:, 0]
        assert torch.allclose(lp[:-1], ref, atol=1e-4)
    assert int(valid.sum()) == sum(len(s) - 1 for s in seqs)
