"""Varlen attention for packed rows: each sequence sees only itself; other inputs unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from areal_flow.rl import pack_prompt_tree, pack_sequences
from areal_flow.train.attention import register, segment_bounds, segments


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


def test_segments_of_a_prompt_tree() -> None:
    # prompt of 3 + response of 2 (root), a branch at position 3 of 2 tokens, a new root of 2
    positions = torch.tensor([0, 1, 2, 3, 4, 3, 4, 0, 1])
    assert segments(positions) == [(0, 5, 0, 0), (5, 7, 0, 3), (7, 9, 7, 0)]
    with pytest.raises(ValueError, match="beyond its root"):
        segments(torch.tensor([0, 1, 5, 6]))
    with pytest.raises(ValueError, match="beyond its root's 3 tokens"):  # not an earlier branch's
        segments(torch.tensor([0, 1, 2, 1, 4]))


def test_prompt_tree_row_equals_the_sequences_run_alone(models: tuple) -> None:
    """Shared prompts change the work, not the function: the response logits and the gradients
    match those of every (prompt, response) run as its own sequence."""
    plain, packed_model = models
    gen = torch.Generator().manual_seed(1)
    prompt_a, prompt_b = (torch.randint(100, 1000, (n,), generator=gen) for n in (9, 4))
    pairs = [(prompt_a, torch.randint(100, 1000, (n,), generator=gen)) for n in (5, 1, 8)] + [
        (prompt_b, torch.randint(100, 1000, (n,), generator=gen)) for n in (3, 6)
    ]
    pairs.insert(2, pairs.pop())  # prompts interleaved in the input: still one copy each
    tree = pack_prompt_tree(pairs)
    assert tree.input_ids.shape[1] == 9 + 4 + sum(int(r.numel()) for _, r in pairs)

    def alone_logits(model: torch.nn.Module) -> torch.Tensor:
        out = []
        for prompt, response in pairs:
            ids = torch.cat([prompt, response])[None]
            logits = model(input_ids=ids).logits[0]
            out.append(logits[prompt.numel() - 1 : ids.shape[1] - 1])
        return torch.cat(out)

    targets = torch.cat([r for _, r in pairs])

    def loss(logits: torch.Tensor) -> torch.Tensor:  # the sum of the responses' log-probs
        return logits.log_softmax(-1).gather(1, targets[:, None]).sum()

    expected = alone_logits(plain)
    loss(expected).backward()
    expected_grads = [p.grad.clone() for p in plain.parameters()]  # type: ignore[union-attr]
    plain.zero_grad()
    logits = packed_model(
        input_ids=tree.input_ids, position_ids=tree.position_ids, use_cache=False
    ).logits[0, torch.cat(tree.scoring)]
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    loss(logits).backward()
    for p, want in zip(packed_model.parameters(), expected_grads, strict=True):
        torch.testing.assert_close(p.grad, want, atol=1e-5, rtol=1e-4)
    packed_model.zero_grad()
