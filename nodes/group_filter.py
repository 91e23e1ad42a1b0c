"""Group filter: DAPO dynamic sampling, truncated-answer handling and length limits.

Rules: works on whole groups (the generator emits one batch per group); dropped trajectories
return their staleness capacity and are counted.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from areal_flow.spec import NodeSpec, Port, Resources, light_resources


class GroupFilterConfig(NodeSpec):
    """Drops groups and trajectories that carry no learning signal."""

    inputs: ClassVar[dict[str, Port]] = {"scored": Port(record="scored")}
    outputs: ClassVar[dict[str, Port]] = {"kept": Port(record="scored")}
    role: ClassVar[str] = "filter"
    stateless: ClassVar[bool] = True

    kind: Literal["group_filter"] = "group_filter"
    drop_uniform_reward: bool = Field(
        True, description="Drop groups whose rewards are all equal (zero advantage; DAPO)."
    )
    truncated: Literal["keep", "mask", "drop"] = Field(
        "keep",
        description="Responses cut at max_tokens: keep, mask (no loss on them), or drop.",
    )
    max_response_tokens: int | None = Field(
        None, ge=1, description="Drop trajectories with longer responses; null = no limit."
    )
    resources: Resources = Field(default_factory=light_resources, description="Per replica.")
