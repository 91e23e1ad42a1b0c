"""No pickle in the package: nothing that unpickles can be reached from a socket.

The scan reads every module of ``areal_flow/`` and ``nodes/`` (ast, no import) and fails on:
importing a pickle-family module; pyzmq's pickle helpers; ``torch.load`` without
``weights_only=True``; numpy/pandas loaders that unpickle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("areal_flow", "nodes")
PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "marshal", "shelve"}
PICKLE_MODULES |= {"jsonpickle", "copyreg", "joblib"}
PICKLE_CALLS = {"send_pyobj", "recv_pyobj", "read_pickle", "to_pickle"}


def pickle_uses(source: str, name: str) -> list[str]:
    """Every pickle use in ``source``, as 'name:line: what'."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        where = f"{name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PICKLE_MODULES:
                    found.append(f"{where}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in PICKLE_MODULES:
                found.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            found.extend(f"{where}: {what}" for what in _bad_call(node))
        elif isinstance(node, ast.Attribute) and node.attr in PICKLE_CALLS:
            found.append(f"{where}: .{node.attr}")
    return found


def _bad_call(call: ast.Call) -> list[str]:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    owner = func.value if isinstance(func, ast.Attribute) else None
    owner_name = getattr(owner, "id", "")
    keywords = {k.arg: k.value for k in call.keywords}
    if name == "load" and owner_name == "torch":
        weights_only = keywords.get("weights_only")
        if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
            return ["torch.load without weights_only=True"]
    if name in ("load", "loadtxt") and owner_name in ("np", "numpy"):
        allow = keywords.get("allow_pickle")
        if isinstance(allow, ast.Constant) and allow.value is True:
            return ["numpy load with allow_pickle=True"]
    return []


def test_the_package_never_pickles() -> None:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found += pickle_uses(path.read_text(), str(path.relative_to(ROOT)))
    assert not found, "pickle in the package:\n" + "\n".join(found)


def test_the_scan_finds_each_kind_of_pickle_use() -> None:
    source = """
import pickle
import cloudpickle as cp
from marshal import loads
import torch
sock.send_pyobj(x)
obj = sock.recv_pyobj()
state = torch.load(path)
fine = torch.load(path, weights_only=True)
array = np.load(path, allow_pickle=True)
"""
    found = pickle_uses(source, "sample.py")
    assert sorted(f.split(": ", 1)[1] for f in found) == sorted(
        [
            "import pickle",
            "import cloudpickle",
            "from marshal import ...",
            ".send_pyobj",
            ".recv_pyobj",
            "torch.load without weights_only=True",
            "numpy load with allow_pickle=True",
        ]
    )
