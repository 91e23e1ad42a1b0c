"""Between Arrow records and reward functions: rollout rows in, scored rows out.

Rules:
- A reward function is called with ``prompt``, ``response``, ``answer`` and every other column
  of the row (a dataset's own fields reach it), except token ids, log-probs, versions, the loss
  mask and earlier scores. Only columns whose values are plain JSON (strings, numbers, bools,
  lists and structs of them) are passed; others (binary, timestamps) are left out.
- The scored batch is the input batch — extra columns included — with ``reward``, ``verdict``
  and ``metrics`` set (replaced when an earlier reward node set them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from areal_flow.schema import METRICS_TYPE

NOT_PASSED = frozenset(
    {
        "prompt_token_ids",
        "response_token_ids",
        "logprobs",
        "versions",
        "loss_mask",
        "reward",
        "verdict",
        "metrics",
    }
)
SCORE_FIELDS = ("reward", "verdict", "metrics")


def reward_rows(batch: pa.RecordBatch) -> list[dict[str, Any]]:
    """The keyword arguments of one reward call per row (see the module rules)."""
    names = [f.name for f in batch.schema if f.name not in NOT_PASSED and _plain(f.type)]
    return batch.select(names).to_pylist()


def scored_batch(batch: pa.RecordBatch, results: Sequence[Any]) -> pa.RecordBatch:
    """``batch`` with the reward fields of ``results`` (one ``RewardResult`` per row)."""
    keep = [name for name in batch.schema.names if name not in SCORE_FIELDS]
    out = batch.select(keep)
    out = out.append_column(
        pa.field("reward", pa.float32(), nullable=False),
        pa.array([r.reward for r in results], pa.float32()),
    )
    out = out.append_column(
        pa.field("verdict", pa.string(), nullable=False),
        pa.array([r.verdict for r in results], pa.string()),
    )
    return out.append_column(
        pa.field("metrics", METRICS_TYPE, nullable=False),
        pa.array([list(r.metrics.items()) for r in results], METRICS_TYPE),
    )


def _plain(kind: pa.DataType) -> bool:
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _plain(kind.value_type)
    if pa.types.is_struct(kind):
        return all(_plain(kind.field(i).type) for i in range(kind.num_fields))
    return bool(
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_null(kind)
    )
