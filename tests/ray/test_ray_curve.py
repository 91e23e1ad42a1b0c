"""The Ray launcher with CurveZMQ forced on (AREAL_FLOW_CURVE=1): the run's keys go to every
actor with its ``run`` call and every socket of the run uses them."""

from __future__ import annotations

from pathlib import Path

import pytest

from areal_flow.runtime import run_graph
from areal_flow.runtime.plan import FORCE_CURVE_ENV, RunPlan
from tests.ray.test_ray_launcher import pipeline, rows

pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")


def test_a_ray_run_with_curve_forced_on_gives_the_same_rows(
    ray_cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FORCE_CURVE_ENV, "1")
    result = run_graph(pipeline(), tmp_path, launcher="ray")
    assert result.ok, result.failure
    assert RunPlan.load(tmp_path / "plan.json").curve
    assert [r["id"] for r in rows(tmp_path)] == list(range(60))
    assert all(r["doubled"] == 2 * r["id"] for r in rows(tmp_path))
