"""Loading graph files and applying ``--set`` overrides.

Rules:
- A graph file is Python (exposing ``graph`` or ``build_graph()``), YAML or JSON (the same schema
  as ``Graph``). A Python file runs as a module (``areal_flow.usercode``), and the node kinds it
  uses are registered (``registry.use_kinds``), so specs and functions defined in the file are
  found again by ``--set`` and by every worker. Every failure becomes ``GraphInvalid`` with
  problems that name the field path, using node names instead of list indices
  (``nodes.gen.sampling.temperature``).
- ``--set path.to.field=value`` edits the spec as data and re-validates it exactly like a file;
  values are parsed as YAML (``0.5``, ``null``, ``[a, b]``, ``true``).
"""

from __future__ import annotations

import difflib
import json
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from areal_flow.graph import GraphInvalid, Problem
from areal_flow.registry import UnknownKind, use_kinds
from areal_flow.spec import Graph
from areal_flow.usercode import load_graph_module

GRAPH_SUFFIXES = (".py", ".yaml", ".yml", ".json")


def load_graph(path: str | Path, overrides: Iterable[str] = ()) -> Graph:
    """Read, validate and override a graph file; raises GraphInvalid."""
    path = Path(path)
    if not path.is_file():
        raise GraphInvalid([Problem(str(path), "no such file")])
    if path.suffix not in GRAPH_SUFFIXES:
        raise GraphInvalid(
            [Problem(str(path), f"unknown graph file type; use one of {', '.join(GRAPH_SUFFIXES)}")]
        )
    from areal_flow.evaluation import with_evaluator

    graph = _load_python(path) if path.suffix == ".py" else _load_data(path)
    overrides = list(overrides)
    return with_evaluator(apply_overrides(graph, overrides) if overrides else graph)


def validate_data(data: Any, source: str = "graph") -> Graph:
    """A Graph from plain data, or GraphInvalid naming every bad field."""
    if not isinstance(data, dict):
        raise GraphInvalid([Problem(source, "a graph must be a mapping with 'name' and 'nodes'")])
    try:
        return Graph.model_validate(data)
    except ValidationError as err:
        raise GraphInvalid(problems_from(err, data)) from None


def apply_overrides(graph: Graph, overrides: Iterable[str]) -> Graph:
    """``graph`` with each ``path=value`` applied, re-validated as a whole."""
    data = graph.model_dump(mode="json")
    problems = []
    for item in overrides:
        try:
            _apply_one(data, item)
        except ValueError as err:
            problems.append(Problem(f"--set {item}", str(err)))
    try:
        graph = validate_data(data, "--set")
    except GraphInvalid as err:
        problems += err.problems
    if problems:
        raise GraphInvalid(problems)
    return graph


def _apply_one(data: dict[str, Any], item: str) -> None:
    path, sep, raw = item.partition("=")
    if not sep or not path.strip():
        raise ValueError("expected path.to.field=value, e.g. staleness.max_lag=0")
    keys = path.strip().split(".")
    target: Any = data
    for depth, key in enumerate(keys[:-1]):
        target = _step(target, key, ".".join(keys[: depth + 1]))
    last = keys[-1]
    if isinstance(target, list):
        target[_list_index(target, last, path)] = _parse_value(raw)
    elif isinstance(target, dict):
        target[last] = _parse_value(raw)
    else:
        raise ValueError(f"{'.'.join(keys[:-1])} is a value, not a group of fields")


def _step(target: Any, key: str, so_far: str) -> Any:
    if isinstance(target, list):
        return target[_list_index(target, key, so_far)]
    if not isinstance(target, dict):
        raise ValueError(f"{so_far} is a value, not a group of fields")
    if key not in target or target[key] is None:
        target[key] = {}
    return target[key]


def _list_index(items: list[Any], key: str, so_far: str) -> int:
    """A list element by position or, for nodes, by name."""
    if key.isdigit() and int(key) < len(items):
        return int(key)
    names = [i.get("name") for i in items if isinstance(i, dict)]
    if key in names:
        return names.index(key)
    close = difflib.get_close_matches(key, [str(n) for n in names], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"{so_far}: no element named or numbered {key!r}{hint}")


def _parse_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _load_data(path: Path) -> Graph:
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise GraphInvalid([Problem(str(path), f"not valid {path.suffix[1:]}: {err}")]) from None
    return validate_data(data, str(path))


def _load_python(path: Path) -> Graph:
    try:
        namespace = vars(load_graph_module(path))
        graph = namespace.get("graph")
        if graph is None and callable(namespace.get("build_graph")):
            graph = namespace["build_graph"]()
    except ValidationError as err:
        raise GraphInvalid(_problems_in_file(path, err)) from None
    except Exception as err:
        raise GraphInvalid(
            [Problem(_file_line(path, err), f"{type(err).__name__}: {err}")]
        ) from None
    if graph is None:
        raise GraphInvalid(
            [Problem(str(path), "defines neither 'graph' nor 'build_graph()'; add one of them")]
        )
    if isinstance(graph, dict):
        return validate_data(graph, str(path))
    if not isinstance(graph, Graph):
        raise GraphInvalid(
            [Problem(str(path), f"'graph' must be an areal_flow Graph, got {type(graph).__name__}")]
        )
    try:  # node kinds the file defines: so --set and the workers validate them too
        use_kinds(graph)
    except UnknownKind as err:
        raise GraphInvalid([Problem(str(path), str(err))]) from None
    return graph


def _problems_in_file(path: Path, err: ValidationError) -> list[Problem]:
    where = f"{_file_line(path, err)} ({err.title})"
    return [Problem(f"{where} {_dotted(e['loc'], None)}", _message(e)) for e in err.errors()]


def _file_line(path: Path, err: BaseException) -> str:
    here = path.resolve()
    frames = [f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename) == here]
    return f"{path}:{frames[-1].lineno}" if frames else str(path)


def problems_from(err: ValidationError, data: Any) -> list[Problem]:
    """One Problem per pydantic error, with node names in the path."""
    return [Problem(_dotted(e["loc"], data), _message(e)) for e in err.errors()]


def _dotted(loc: tuple[int | str, ...], data: Any) -> str:
    parts: list[str] = []
    cursor = data
    for key in loc:
        name = str(key)
        if isinstance(key, int) and isinstance(cursor, list) and key < len(cursor):
            item = cursor[key]
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                name = item["name"]
            cursor = item
        elif isinstance(cursor, dict):
            cursor = cursor.get(key)
        else:
            cursor = None
        parts.append(name)
    return ".".join(parts) or "graph"


def _message(error: Any) -> str:
    msg = str(error["msg"])
    if error["type"] == "extra_forbidden":
        field = str(error["loc"][-1])
        close = difflib.get_close_matches(field, sorted(_all_field_names()), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown field {field!r}{hint} (remove it or fix its spelling)"
    if error["type"] == "missing":
        return "required field is missing"
    value = error.get("input")
    if error["type"] not in ("unknown_kind", "missing_kind") and not isinstance(value, dict):
        shown = repr(value)
        msg += f" (got {shown[:60]}{'…' if len(shown) > 60 else ''})"
    return msg


def _all_field_names() -> set[str]:
    from areal_flow.registry import all_kinds

    names: set[str] = set()
    todo: list[type[BaseModel]] = [Graph, *all_kinds().values()]
    seen: set[type[BaseModel]] = set()
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            names.add(name)
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                todo.append(annotation)
    return names
