"""Built-in nodes, one module each: ``XConfig`` (the spec) beside ``class X(Node)`` (the code).

``BUILTIN_NODES`` is the one explicit registry of built-in kinds; third-party kinds use the
``areal_flow.nodes`` entry-point group (see ``areal_flow.registry``).
"""

from __future__ import annotations

from areal_flow.spec import NodeSpec
from areal_flow.testing import CollectSinkConfig, FunctionConfig, ListSourceConfig
from nodes.generator import GeneratorConfig
from nodes.group_filter import GroupFilterConfig
from nodes.math_verifier import MathVerifierConfig
from nodes.prompt_source import PromptSourceConfig
from nodes.trainer import TrainerConfig
from nodes.weight_publisher import WeightPublisherConfig

BUILTIN_NODES: dict[str, type[NodeSpec]] = {
    "prompt_source": PromptSourceConfig,
    "generator": GeneratorConfig,
    "math_verifier": MathVerifierConfig,
    "group_filter": GroupFilterConfig,
    "trainer": TrainerConfig,
    "weight_publisher": WeightPublisherConfig,
    # Generic nodes for tests and experiments (areal_flow.testing).
    "list_source": ListSourceConfig,
    "function": FunctionConfig,
    "collect_sink": CollectSinkConfig,
}

__all__ = [
    "BUILTIN_NODES",
    "GeneratorConfig",
    "GroupFilterConfig",
    "MathVerifierConfig",
    "PromptSourceConfig",
    "TrainerConfig",
    "WeightPublisherConfig",
]
