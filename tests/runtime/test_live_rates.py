"""The live view's batches/s: a windowed rate that a slow node does not flicker to 0.0."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from areal_flow.runtime import live
from areal_flow.runtime.live import Rates


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The view's clock, set by the test: ``clock[0] = seconds``."""
    now = [0.0]
    monkeypatch.setattr(live.time, "monotonic", lambda: now[0])
    return now


def update(rates: Rates, node: str, batches_out: float) -> None:
    """One view refresh of a driver with a single replica of ``node``."""
    plan = SimpleNamespace(node=node, outputs=[SimpleNamespace(weights=False)])
    replica = SimpleNamespace(plan=plan, metrics={"batches_out": batches_out})
    rates.update(SimpleNamespace(replicas={f"{node}/0": replica}))  # type: ignore[arg-type]


def test_a_node_with_one_batch_every_4_s_shows_its_rate_between_batches(
    clock: list[float],
) -> None:
    rates = Rates(window_s=10.0)
    seen: list[float] = []
    for tick in range(81):  # 40 s of 0.5 s view refreshes; one batch every 4 s
        clock[0] = tick * 0.5
        update(rates, "gen", tick // 8)
        if clock[0] >= 12:
            seen.append(rates.per_node["gen"])
    assert min(seen) > 0.15 and max(seen) < 0.4, seen  # 0.25/s, never 0.0 between batches


def test_a_restarted_replica_does_not_show_a_negative_rate(clock: list[float]) -> None:
    rates = Rates(window_s=10.0)
    for tick, total in enumerate([50, 100, 150, 3]):  # the counter starts again from 0
        clock[0] = tick * 1.0
        update(rates, "gen", total)
    assert rates.per_node["gen"] >= 0.0  # the window's oldest sample (50) is above the new 3
