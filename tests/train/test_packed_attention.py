"""Varlen attention for packed rows: each sequence sees only itself; other inputs unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from areal_flow.rl import pack_sequences
from areal_flow.train.attention import register, segment_bounds


@pytest.fixture(scope="module")
def models(tiny_model_dir: Path) -> tuple:
    from transformers import AutoModelForCausalLM

    load = AutoModelForCausalLM.from_pretrained
    return (
        load(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa").eval(),
        load(tiny_model_dir, dtype=torch.float32, attn_implementation=register()).eval(),
    )


@torch.no_grad()
def test_packed_row_equals_sequences_run_alone(models: tuple) -> None:
    plain, packed_model = models
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(100, 1000, (n,), generator=gen) for n in (7, 1, 30, 12)]
    row = pack_sequences(seqs)
    alone = torch.cat([plain.base_model(input_ids=s[None]).last_hidden_state[0] for s in seqs])
    hidden = packed_model.base_model(
        input_ids=row.input_ids, position_ids=row.position_ids, use_cache=False
    ).last_hidden_state[0]
    torch.testing.assert_close(hidden, alone, atol=1e-5, rtol=1e-5)
    # without the restarts the row is one long sequence: the check above can fail
    joined = packed_model.base_model(input_ids=row.input_ids).last_hidden_state[0]
    assert not torch.allclose(joined, alone, atol=1e-3)


@torch.no_grad()
def test_padded_batches_and_generation_keep_plain_sdpa(models: tuple) -> None:
    plain, packed_model = models
    ids = torch.randint(100, 1000, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    for model_input in ({"input_ids": ids, "attention_mask": mask}, {"input_ids": ids[:1]}):
        a = plain(**model_input).logits
        b = packed_model(**model_input).logits
        torch.testing.assert_close(a, b)
    out_a = plain.generate(ids[:1, :4], max_new_tokens=5, do_sample=False)
    out_b = packed_model.generate(ids[:1, :4], max_new_tokens=5, do_sample=False)
    assert torch.equal(out_a, out_b)


def test_segment_bounds() -> None:
    assert segment_bounds(torch.tensor([[0, 1, 2, 0, 0, 1]])) == [0, 3, 4, 6]
    with pytest.raises(ValueError, match="position 0"):
        segment_bounds(torch.tensor([1, 2, 0]))
