"""Group filter: DAPO dynamic sampling, truncated-answer handling and length limits.

Rules: works on whole groups (the generator emits one batch per group); dropped trajectories
return their staleness capacity and are counted.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from areal_flow.node import Output, Transform
from areal_flow.roles import FilterSpec
from areal_flow.spec import Port


class GroupFilterConfig(FilterSpec):
    """Drops groups and trajectories that carry no learning signal."""

    inputs: ClassVar[dict[str, Port]] = {"scored": Port(record="scored")}
    outputs: ClassVar[dict[str, Port]] = {"kept": Port(record="scored")}

    kind: Literal["group_filter"] = "group_filter"
    drop_uniform_reward: bool = Field(
        True, description="Drop groups whose rewards are all equal (zero advantage; DAPO)."
    )
    truncated: Literal["keep", "drop", "drop_group"] = Field(
        "keep",
        description="Responses cut at max_tokens (finish_reason 'length'): keep them, drop "
        "them, or drop their whole group.",
    )
    max_response_tokens: int | None = Field(
        None, ge=1, description="Drop trajectories with longer responses; null = no limit."
    )


class GroupFilter(Transform[GroupFilterConfig]):
    """Applies, in order: length limit, truncation policy, uniform-reward drop (per group).

    Each input batch is one whole prompt group (the generator emits groups whole), so the
    filter keeps no state between batches.
    """

    def process(self, batch: pa.RecordBatch) -> Output:
        assert self.ctx is not None
        cfg = self.config
        metrics = self.ctx.metrics
        keep = pa.array([True] * batch.num_rows)
        if cfg.max_response_tokens is not None:
            short = pc.less_equal(
                pc.list_value_length(batch.column("response_token_ids")), cfg.max_response_tokens
            )
            metrics.count("dropped_too_long", batch.num_rows - _true(short))
            keep = pc.and_(keep, short)
        truncated = pc.equal(batch.column("finish_reason"), "length")
        if cfg.truncated == "drop":
            metrics.count("dropped_truncated", _true(pc.and_(keep, truncated)))
            keep = pc.and_(keep, pc.invert(truncated))
        elif cfg.truncated == "drop_group" and _true(truncated):
            metrics.count("dropped_truncated", _true(keep))
            return None
        kept = batch.filter(keep)
        if cfg.drop_uniform_reward and kept.num_rows:
            rewards = kept.column("reward")
            if pc.min(rewards).as_py() == pc.max(rewards).as_py():
                metrics.count("dropped_uniform", kept.num_rows)
                metrics.count("groups_uniform")
                return None
        metrics.count("kept", kept.num_rows)
        return kept if kept.num_rows else None


def _true(mask: pa.Array) -> int:
    return int(pc.sum(pc.cast(mask, pa.int64())).as_py() or 0)
