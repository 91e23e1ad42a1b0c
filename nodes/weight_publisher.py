"""Weight publisher: delivers each new policy version to every generator replica.

Rules: safetensors only (never pickle); every version carries a checksum; superseded versions
are deleted once no generator uses them.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from areal_flow.spec import NodeSpec, Port, Resources, light_resources


class WeightPublisherConfig(NodeSpec):
    """Fans weight notices out to generators and tracks their acknowledgements."""

    inputs: ClassVar[dict[str, Port]] = {"weights": Port(record="weights", weights=True)}
    outputs: ClassVar[dict[str, Port]] = {"weights": Port(record="weights", weights=True)}
    role: ClassVar[str] = "publisher"

    kind: Literal["weight_publisher"] = "weight_publisher"
    store: Literal["shm", "run_dir"] = Field(
        "shm", description="Where weights live: /dev/shm (fast) or the run folder."
    )
    keep_versions: int = Field(2, ge=1, le=100, description="Versions kept before deletion.")
    resources: Resources = Field(default_factory=light_resources, description="Per replica.")
