"""Node kinds: which config class validates a ``kind`` and which class runs it.

Rules:
- Built-in kinds come from one explicit dict, ``areal_flow.nodes.BUILTIN_NODES`` (kind →
  config class).
- Third-party kinds register through the entry-point group ``areal_flow.nodes``; each entry
  point names a config class (a ``NodeSpec`` subclass with ``kind: Literal[...]``). A third-party
  kind may not shadow a built-in one.
- User kinds: a ``NodeSpec`` subclass defined in a graph file or any module is registered when
  a graph uses it (``use_kinds``, called by the loader and the driver); the run plan records
  each as ``module:qualname`` (``user_kinds``) and workers register them again from there
  (``register_kinds``) before they validate the spec. A user kind may not shadow a built-in or
  plug-in kind; registering a kind again replaces it only with the same ``module:qualname``
  (a graph file loaded again).
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

from areal_flow.spec import Graph, NodeSpec, set_kind_validator
from areal_flow.usercode import reference, resolve

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


_USER_KINDS: dict[str, type[NodeSpec]] = {}  # kinds defined outside the registry, this process


def config_class(kind: str) -> type[NodeSpec]:
    """The config class of ``kind``; UnknownKind says the closest known kinds."""
    kinds = node_kinds()
    if kind in kinds:
        return kinds[kind]
    if kind in _USER_KINDS:
        return _USER_KINDS[kind]
    raise UnknownKind(unknown_kind_message(kind, [*kinds, *_USER_KINDS]))


def all_kinds() -> dict[str, type[NodeSpec]]:
    """Every kind this process knows: the registry's and the user kinds registered so far."""
    return {**_USER_KINDS, **node_kinds()}


def register_kind(kind: str, cls: type[NodeSpec]) -> None:
    """Make ``kind`` validate with ``cls`` in this process (see the module rules)."""
    known = node_kinds().get(kind)
    if known is not None and known is not cls:
        raise UnknownKind(
            f"node kind {kind!r} of {reference(cls)} shadows the built-in or plug-in kind of "
            f"{reference(known)}; give it another kind"
        )
    current = _USER_KINDS.get(kind)
    if current is not None and reference(current) != reference(cls):
        raise UnknownKind(
            f"node kind {kind!r} is defined twice, by {reference(current)} and {reference(cls)}; "
            "give one of them another kind"
        )
    if known is None:
        _USER_KINDS[kind] = cls


def use_kinds(graph: Graph) -> None:
    """Register the kinds of ``graph``'s nodes that the registry does not provide."""
    for node in graph.nodes:
        register_kind(node.kind, type(node))


def user_kinds(graph: Graph) -> dict[str, str]:
    """Kind → ``module:qualname`` of every node class of ``graph`` outside the registry."""
    builtin = node_kinds()
    return {n.kind: reference(type(n)) for n in graph.nodes if builtin.get(n.kind) is not type(n)}


def register_kinds(kinds: dict[str, str]) -> None:
    """Register kinds recorded by ``user_kinds`` (a worker, before it validates the spec)."""
    for kind, ref in kinds.items():
        cls = resolve(ref)
        if not (isinstance(cls, type) and issubclass(cls, NodeSpec)):
            raise UnknownKind(f"{ref} (kind {kind!r}) is not a NodeSpec subclass")
        register_kind(kind, cls)


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


set_kind_validator(validate_node)
