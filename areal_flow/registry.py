"""Node kinds: which config class validates a ``kind`` and which class runs it.

Rules:
- Built-in kinds come from one explicit dict, ``areal_flow.nodes.BUILTIN_NODES`` (kind →
  config class).
- Third-party kinds register through the entry-point group ``areal_flow.nodes``; each entry
  point names a config class (a ``NodeSpec`` subclass with ``kind: Literal[...]``). A third-party
  kind may not shadow a built-in one.
- The node implementation lives beside its config in the same module: class ``XConfig`` is run
  by class ``X`` (the config's name without the ``Config`` suffix), imported only when the
  runtime starts the node, so validation never imports torch or vLLM.
"""

from __future__ import annotations

import difflib
import importlib
from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from areal_flow.spec import NodeSpec

if TYPE_CHECKING:
    from areal_flow.node import Node

ENTRY_POINT_GROUP = "areal_flow.nodes"


class UnknownKind(LookupError):
    """A node kind that no built-in or plug-in provides."""


@cache
def node_kinds() -> dict[str, type[NodeSpec]]:
    """Every known kind → its config class (built-ins first, then plug-ins)."""
    from areal_flow.nodes import BUILTIN_NODES

    kinds: dict[str, type[NodeSpec]] = dict(BUILTIN_NODES)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        config = entry.load()
        if not (isinstance(config, type) and issubclass(config, NodeSpec)):
            raise TypeError(
                f"entry point {entry.name!r} in group {ENTRY_POINT_GROUP} must name a NodeSpec "
                f"subclass, got {config!r}"
            )
        if entry.name in kinds and kinds[entry.name] is not config:
            raise TypeError(f"plug-in kind {entry.name!r} ({entry.value}) shadows a built-in kind")
        kinds[entry.name] = config
    return kinds


def config_class(kind: str) -> type[NodeSpec]:
    """The config class of ``kind``; UnknownKind says the closest known kinds."""
    kinds = node_kinds()
    if kind in kinds:
        return kinds[kind]
    raise UnknownKind(unknown_kind_message(kind, list(kinds)))


def unknown_kind_message(kind: str, known: list[str]) -> str:
    close = difflib.get_close_matches(kind, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown node kind {kind!r}; {hint}known kinds: {', '.join(sorted(known))}"


def validate_node(item: dict[str, Any]) -> NodeSpec:
    """Validate one node dict with the class its ``kind`` selects."""
    kind = item.get("kind")
    if not isinstance(kind, str):
        raise _error("kind", "missing_kind", "every node needs a 'kind' (e.g. 'generator')", item)
    try:
        cls = config_class(kind)
    except UnknownKind as err:
        raise _error("kind", "unknown_kind", str(err), kind) from None
    return cls.model_validate(item)


def node_class(config: NodeSpec) -> type[Node[NodeSpec]]:
    """The implementation class that runs ``config`` (imported now, not at validation)."""
    cls_name = type(config).__name__
    if not cls_name.endswith("Config"):
        raise TypeError(f"config class {cls_name} must be named '<Node>Config'")
    module = importlib.import_module(type(config).__module__)
    impl = getattr(module, cls_name.removesuffix("Config"), None)
    if impl is None:
        raise LookupError(
            f"node kind {config.kind!r} has a config ({cls_name}) but no implementation class "
            f"{cls_name.removesuffix('Config')} in {module.__name__}"
        )
    return impl


def _error(field: str, code: str, message: str, value: Any) -> ValidationError:
    detail: InitErrorDetails = {
        "type": PydanticCustomError(code, message),
        "loc": (field,),
        "input": value,
    }
    return ValidationError.from_exception_data("Node", [detail])
