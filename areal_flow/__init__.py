"""areal-flow: fully asynchronous RL for LLM reasoning as a declarative dataflow graph.

The public API for graph files: the spec models below. Runtime pieces live in subpackages and
are imported where used, so ``import areal_flow`` stays light (no torch, zmq or mlflow).
"""

from areal_flow import registry as _registry  # noqa: F401  (installs the specs' kind validator)
from areal_flow.spec import Edge, Evaluation, Graph, NodeSpec, Port, Resources, Staleness, Tracking

__all__ = ["Edge", "Evaluation", "Graph", "NodeSpec", "Port", "Resources", "Staleness", "Tracking"]
__version__ = "0.1.0"
