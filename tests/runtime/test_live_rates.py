"""The live view's batches/s: a windowed rate that a slow node does not flicker to 0.0."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from areal_flow.runtime import live
from areal_flow.runtime.live import Rates


def replica(node: str, out: float) -> Any:
    plan = SimpleNamespace(node=node, outputs=[SimpleNamespace(weights=False)])
    return SimpleNamespace(plan=plan, metrics={"batches_out": out})


def test_a_node_with_one_batch_every_4_s_shows_its_rate_between_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [0.0]
    monkeypatch.setattr(live.time, "monotonic", lambda: clock[0])
    rates = Rates(window_s=10.0)
    seen = []
    for tick in range(81):  # 40 s of 0.5 s view refreshes; one batch every 4 s
        clock[0] = tick * 0.5
        rates.update(SimpleNamespace(replicas={"gen/0": replica("gen", tick // 8)}))  # type: ignore[arg-type]
        if clock[0] >= 12:
            seen.append(rates.per_node["gen"])
    assert min(seen) > 0.15 and max(seen) < 0.4, seen  # 0.25/s, never 0.0 between batches


def test_a_restarted_replica_does_not_show_a_negative_rate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [0.0]
    monkeypatch.setattr(live.time, "monotonic", lambda: clock[0])
    rates = Rates(window_s=10.0)
    for tick, total in enumerate([0, 50, 100, 3]):  # counters start again from 0
        clock[0] = tick * 1.0
        rates.update(SimpleNamespace(replicas={"gen/0": replica("gen", total)}))  # type: ignore[arg-type]
    assert rates.per_node["gen"] >= 0.0
