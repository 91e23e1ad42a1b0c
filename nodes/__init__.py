"""Built-in nodes, one module each: ``XConfig`` (the spec) beside ``class X(Node[XConfig])`` (the
code).

``BUILTIN_NODES`` is the one explicit registry of built-in kinds; third-party kinds use the
``areal_flow.nodes`` entry-point group, and node classes defined in a graph file or any module
are found where they are defined (see ``areal_flow.registry``).

The folder sits at the top of the repository and imports as ``areal_flow.nodes`` (the package
holds a link to it), so no bare ``nodes`` package lands in users' environments. Nothing in
``areal_flow`` imports it except the registry's lazy load of the built-ins. Graph files also
find the nested specs they need here (``Sampling``, ``PromptFormat``, ``Exchange``,
``DecoupledPPO``, ``Optimizer``).
"""

from __future__ import annotations

from areal_flow.data.prompting import Exchange, PromptFormat
from areal_flow.nodes.generator import GeneratorConfig
from areal_flow.nodes.group_filter import GroupFilterConfig
from areal_flow.nodes.math_verifier import MathVerifierConfig
from areal_flow.nodes.prompt_source import PromptSourceConfig
from areal_flow.nodes.reward_fn import RewardFnConfig
from areal_flow.nodes.trainer import TrainerConfig
from areal_flow.nodes.weight_publisher import WeightPublisherConfig
from areal_flow.roles import Sampling
from areal_flow.spec import NodeSpec
from areal_flow.testing import CollectSinkConfig, FunctionConfig, ListSourceConfig
from areal_flow.train.algo import DecoupledPPO, Optimizer

BUILTIN_NODES: dict[str, type[NodeSpec]] = {
    "prompt_source": PromptSourceConfig,
    "generator": GeneratorConfig,
    "math_verifier": MathVerifierConfig,
    "reward": RewardFnConfig,
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
    "DecoupledPPO",
    "Exchange",
    "GeneratorConfig",
    "GroupFilterConfig",
    "MathVerifierConfig",
    "Optimizer",
    "PromptFormat",
    "PromptSourceConfig",
    "RewardFnConfig",
    "Sampling",
    "TrainerConfig",
    "WeightPublisherConfig",
]
