"""Rank shares: which rows of a minibatch each data-parallel rank trains (pure Python).

Rules:
- Rows that share their prompt tokens stay on one rank (with ``share_prompts`` a group costs
  p + Σ rᵢ positions only when its responses are packed together), and a rank packs its own
  share into micro-batches as a single trainer would.
- Token-balanced: units (a prompt and its responses, or a row alone) go longest first to the
  rank with the fewest positions so far (LPT), ties to the lowest rank. Deterministic: the same
  rows give the same shares on every rank.
- A share may be empty (fewer units than ranks); its rank still takes part in every collective.
- Each share lists row indices in increasing order.
"""

from __future__ import annotations

from collections.abc import Sequence


def balanced_shares(
    prompt_keys: Sequence[object],
    prompt_lens: Sequence[int],
    response_lens: Sequence[int],
    ranks: int,
    share_prompts: bool = True,
) -> list[list[int]]:
    """Row indices per rank, balanced by the token positions each rank's forward passes cost."""
    if ranks < 1:
        raise ValueError(f"ranks must be ≥ 1, got {ranks}")
    units: dict[object, list[int]] = {}
    for i, key in enumerate(prompt_keys):
        units.setdefault(key if share_prompts else i, []).append(i)
    costs = {
        key: prompt_lens[rows[0]] * (1 if share_prompts else len(rows))
        + sum(response_lens[i] for i in rows)
        for key, rows in units.items()
    }
    order = sorted(units, key=lambda key: (-costs[key], units[key][0]))
    loads = [0] * ranks
    shares: list[list[int]] = [[] for _ in range(ranks)]
    for key in order:
        rank = min(range(ranks), key=lambda r: (loads[r], r))
        loads[rank] += costs[key]
        shares[rank].extend(units[key])
    return [sorted(share) for share in shares]
