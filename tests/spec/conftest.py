"""Fixtures for spec tests: the math graph as plain data, ready to break."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from areal_flow.loader import load_graph

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def _math_data() -> dict[str, Any]:
    return load_graph(ROOT / "graphs" / "math_rl.py").model_dump(mode="json")


@pytest.fixture
def math_data(_math_data: dict[str, Any]) -> dict[str, Any]:
    """A fresh deep copy of graphs/math_rl.py as data (what a YAML file would hold)."""
    return copy.deepcopy(_math_data)
