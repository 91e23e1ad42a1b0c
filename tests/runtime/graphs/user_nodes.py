"""A graph whose transform node is defined in this very file (tests: user nodes from anywhere).

``Shout`` upper-cases a text column and counts what it did; the source and sink are built-ins.
"""

from typing import ClassVar, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from areal_flow import Graph
from areal_flow.node import Output, Transform
from areal_flow.nodes import CollectSinkConfig, ListSourceConfig
from areal_flow.roles import TransformSpec
from areal_flow.spec import Port


class ShoutConfig(TransformSpec):
    """Upper-cases ``column`` and appends ``suffix``."""

    inputs: ClassVar[dict[str, Port]] = {"text": Port(record="any")}
    outputs: ClassVar[dict[str, Port]] = {"loud": Port(record="any")}
    kind: Literal["shout"] = "shout"
    column: str = Field("word", description="The text column to shout.")
    suffix: str = Field("!", description="Appended to every value.")


class Shout(Transform[ShoutConfig]):
    def process(self, batch: pa.RecordBatch) -> Output:
        assert self.ctx is not None
        cfg = self.config
        index = batch.schema.get_field_index(cfg.column)
        loud = pc.binary_join_element_wise(pc.utf8_upper(batch.column(index)), cfg.suffix, "")
        self.ctx.metrics.count("shouted", batch.num_rows)
        return batch.set_column(index, cfg.column, loud)


WORDS = ["asynchronous", "dataflow", "graph", "of", "user", "nodes"]

graph = Graph(
    name="user_nodes",
    nodes=[
        ListSourceConfig(name="words", rows=[{"word": w} for w in WORDS], batch_rows=2),
        ShoutConfig(name="shout", suffix="!!"),
        CollectSinkConfig(name="sink"),
    ],
    edges=["words -> shout", "shout -> sink"],
    tracking={"enabled": False},
)
