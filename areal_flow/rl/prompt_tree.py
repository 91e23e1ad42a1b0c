"""Shared-prompt packing: a group's prompt enters the forward pass once, not once per sample.

Why: GRPO-style groups are n responses to one prompt. Packed one after another, the prompt is
computed n times; here it is computed once and the n responses attend to its keys and values.
For the built-in arithmetic task (57 prompt tokens, ~40 response tokens, n = 8) a group costs
377 token positions instead of 776. The result is the same model function: every response token
sees exactly the tokens it would see alone, at the same positions (checked in tests against
separate sequences, values and gradients).

Layout of one row: for each distinct prompt, the prompt followed by its first response (positions
0..p+r₁−1: an ordinary sequence), then each further response as a *branch* whose positions
continue the prompt (p..p+rⱼ−1). The positions alone describe the tree, and attention reads them
(``areal_flow.train.attention``): a segment starts wherever a position is not the previous one
plus 1; a segment starting at position 0 is a root, one starting at k > 0 is a branch that
attends to the first k tokens of the latest root and causally to itself.

Rules:
- Responses with the same prompt tokens share it within one row, whatever their order. The
  longest of them follows the prompt as the root: a root runs under plain causal attention,
  a branch under an explicit mask (~1.4× the attention cost on CPU), so the long one should
  not be a branch.
- Every response needs at least one token; the logit scoring response token t of a branch is
  the root's last prompt position for t = 0 and the branch's position t − 1 after that.
- ``prompt_tree_micro_batches``: first-fit-decreasing like ``ffd_micro_batches``, over units of
  one prompt and as many of its responses as fit the token budget (a unit costs p + Σ rⱼ).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from areal_flow.rl.packing import ffd_micro_batches


@dataclass(frozen=True)
class PromptTreeRow:
    """Responses packed under their shared prompts, and where each response is scored."""

    input_ids: torch.Tensor  # [1, N] long
    position_ids: torch.Tensor  # [1, N] long: 0.. for a root, p.. for a branch
    scoring: list[torch.Tensor]  # per input pair, [R] long: the positions scoring its tokens


def pack_prompt_tree(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> PromptTreeRow:
    """One row from (prompt ids, response ids) pairs; equal prompts are stored once."""
    if not pairs:
        raise ValueError("pack_prompt_tree needs at least one (prompt, response) pair")
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for i, (prompt, response) in enumerate(pairs):
        if prompt.numel() == 0 or response.numel() == 0:
            raise ValueError(f"pair {i}: prompt and response need at least one token each")
        by_prompt.setdefault(tuple(prompt.tolist()), []).append(i)
    chunks: list[torch.Tensor] = []
    positions: list[torch.Tensor] = []
    scoring: list[torch.Tensor] = [torch.zeros(0, dtype=torch.long)] * len(pairs)
    offset = 0
    for members in by_prompt.values():
        members.sort(key=lambda i: -pairs[i][1].numel())  # the longest response is the root
        prompt = pairs[members[0]][0].reshape(-1).long()
        p = int(prompt.numel())
        last_prompt = offset + p - 1  # scores every response's first token
        for j, i in enumerate(members):
            response = pairs[i][1].reshape(-1).long()
            r = int(response.numel())
            if j == 0:
                chunk, start = torch.cat([prompt, response]), 0
                scoring[i] = torch.arange(last_prompt, last_prompt + r)
            else:
                chunk, start = response, p
                scoring[i] = torch.cat(
                    [torch.tensor([last_prompt]), torch.arange(offset, offset + r - 1)]
                )
            chunks.append(chunk)
            positions.append(torch.arange(start, start + r + (p if j == 0 else 0)))
            offset += int(chunk.numel())
    return PromptTreeRow(torch.cat(chunks)[None], torch.cat(positions)[None], scoring)


def prompt_tree_micro_batches(
    prompt_keys: Sequence[object], prompt_lens: Sequence[int], response_lens: Sequence[int],
    token_budget: int,
) -> list[list[int]]:  # fmt: skip
    """Indices of the pairs grouped into micro-batches of at most ``token_budget`` positions
    when packed with ``pack_prompt_tree``. Pairs with equal ``prompt_keys`` share a prompt."""
    by_prompt: dict[object, list[int]] = {}
    for i, key in enumerate(prompt_keys):
        by_prompt.setdefault(key, []).append(i)
    units: list[list[int]] = []
    for members in by_prompt.values():
        unit: list[int] = []
        cost = prompt_lens[members[0]]
        for i in members:  # a unit that outgrows the budget is split; each part repays p
            if unit and cost + response_lens[i] > token_budget:
                units.append(unit)
                unit, cost = [], prompt_lens[i]
            unit.append(i)
            cost += response_lens[i]
        units.append(unit)
    costs = [prompt_lens[u[0]] + sum(response_lens[i] for i in u) for u in units]
    return [[i for u in bin_ for i in units[u]] for bin_ in ffd_micro_batches(costs, token_budget)]
