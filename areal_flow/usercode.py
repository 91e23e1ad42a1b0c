"""User code by reference: graph files as modules, and classes or functions as ``module:name``.

Role: a node spec class, a node class or a reward function may live in the graph file itself or
in any importable module. Processes share them by *reference*, never by pickle: the driver
records where each lives, and every worker (local process, in-process task or Ray actor) loads
it from there.

Rules:
- A Python graph file is loaded as a real module named ``areal_flow_graph_<stem>_<hash>`` (the
  hash of its resolved path), kept in ``sys.modules`` and remembered in ``graph_modules()``, so
  what it defines has an importable ``module:qualname``. Loading the same file again runs it
  again (an edited file is seen) under the same name.
- ``reference(obj)`` is ``"module:qualname"`` of a module-level class or function; a lambda, a
  nested function or an object of an unloadable module is refused with the fix.
- ``resolve(ref)`` imports (or finds) the module and walks the qualname; a worker first calls
  ``load_graph_modules`` with the graph files its references live in (``graph_modules(refs)``:
  a process that loaded several graph files hands each run only the ones it uses).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

GRAPH_MODULE_PREFIX = "areal_flow_graph_"
_GRAPH_MODULES: dict[str, str] = {}  # module name → graph file path, in this process


class UserCodeError(LookupError):
    """A reference that does not name a loadable class or function; the message says why."""


def graph_module_name(path: Path) -> str:
    """The module name a graph file is loaded under (stable for one path)."""
    resolved = str(Path(path).resolve())
    stem = re.sub(r"\W", "_", Path(path).stem)
    return f"{GRAPH_MODULE_PREFIX}{stem}_{hashlib.sha1(resolved.encode()).hexdigest()[:8]}"


def load_graph_module(path: Path) -> ModuleType:
    """Run the graph file at ``path`` as module ``graph_module_name(path)``."""
    path = Path(path).resolve()
    name = graph_module_name(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserCodeError(f"{path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: its classes must find their module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    _GRAPH_MODULES[name] = str(path)
    return module


def graph_modules(refs: Iterable[str] | None = None) -> dict[str, str]:
    """Graph files loaded in this process: module name → path; with ``refs``, only those
    that one of these ``module:qualname`` references lives in (what a worker needs)."""
    if refs is None:
        return dict(_GRAPH_MODULES)
    wanted = {ref.partition(":")[0] for ref in refs}
    return {name: path for name, path in _GRAPH_MODULES.items() if name in wanted}


def load_graph_modules(modules: Mapping[str, str]) -> None:
    """Load the graph files a driver recorded, unless this process already has them."""
    for name, path in modules.items():
        if name in sys.modules:
            continue
        if graph_module_name(Path(path)) != name:
            raise UserCodeError(f"graph module {name} does not match its file {path}")
        if not Path(path).is_file():
            raise UserCodeError(
                f"the graph file {path} (module {name}) is not on this machine; user nodes and "
                "functions defined in a graph file need that file at the same path on every "
                "host, or move them to an installed module"
            )
        load_graph_module(Path(path))


def reference(obj: Any) -> str:
    """``"module:qualname"`` of a module-level class or function."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module or not qualname:
        raise UserCodeError(f"{obj!r} has no module and name; pass a module-level function")
    if "<" in qualname:  # <lambda>, <locals>
        raise UserCodeError(
            f"{module}:{qualname} is a lambda or defined inside a function; define it at the top "
            "level of the graph file or a module so other processes can load it"
        )
    if module == "__main__" or module not in sys.modules:
        raise UserCodeError(
            f"{qualname} lives in module {module!r}, which other processes cannot import; "
            "define it in the graph file or an importable module"
        )
    return f"{module}:{qualname}"


def resolve(ref: str) -> Any:
    """The object that ``"module:qualname"`` names."""
    module_name, sep, qualname = ref.partition(":")
    if not sep or not module_name or not qualname:
        raise UserCodeError(f"{ref!r} must look like 'package.module:name'")
    try:
        module = sys.modules.get(module_name) or importlib.import_module(module_name)
    except ImportError as err:
        raise UserCodeError(f"{ref}: cannot import {module_name!r}: {err}") from None
    obj: Any = module
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise UserCodeError(f"{ref}: {module_name} has no {qualname!r}")
        obj = getattr(obj, part)
    return obj
