"""A whole run with CurveZMQ forced on (AREAL_FLOW_CURVE=1) on 127.0.0.1, real processes: it
completes, and plain ZeroMQ clients on its control and data ports never get through."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import zmq

from areal_flow.runtime.driver import Driver
from areal_flow.runtime.plan import FORCE_CURVE_ENV, RunPlan
from areal_flow.transport.curve import KEYS_DIR, generate_run_keys, load_run_keys
from tests.runtime.test_graph_runs import _run_in_thread, _wait_running, ids, pipeline
from tests.transport.test_curve import _FAILED, _intrude

COUNT = 300


def _probe(tmp_path: Path) -> tuple[Driver, dict[str, int], dict[str, float]]:
    """Run a slow pipeline; while it runs, a plain client (and one with another run's keys)
    connects to the control port and to the sink's data port. Returns the driver, the
    intruders' first connection events, and the sink's final metrics."""
    thread, box = _run_in_thread(pipeline(count=COUNT, delay_s=0.01), tmp_path / "run")
    _wait_running(box, "sink")
    driver: Driver = box["driver"]
    plan = driver.plan
    data = plan.replica("sink", 0).inputs[0].addresses[0]
    other = generate_run_keys(tmp_path / "other_run")
    events = {
        "control": _intrude(plan.control, None),
        "data": _intrude(data, None),
        "data_other_run": _intrude(data, other),
    }
    thread.join(timeout=120)
    assert not thread.is_alive(), "the run did not end"
    result = box["result"]
    assert result.ok, result.failure
    assert ids(tmp_path / "run") == list(range(COUNT))
    return driver, events, result.metrics["sink/0"]


def test_a_run_with_curve_forced_on_completes_and_refuses_plain_clients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FORCE_CURVE_ENV, "1")
    driver, events, sink = _probe(tmp_path)
    run = tmp_path / "run"
    saved = RunPlan.load(run / "plan.json")
    assert saved.curve and all(a.startswith("tcp://127.0.0.1:") for a in saved.addresses())
    for path in (run / KEYS_DIR).iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    load_run_keys(run)  # the files the workers loaded are well-formed
    for where, event in events.items():
        assert event & _FAILED, f"a stranger's handshake on the {where} port succeeded ({event})"
    # Nothing the strangers sent reached the driver or the sink.
    assert driver.ignored == 0
    rejected = {k: v for k, v in sink.items() if "rejected" in k and v}
    assert not rejected, rejected


def test_without_curve_the_same_probes_get_through(tmp_path: Path) -> None:
    """The control case: the probes above do reach a run without CurveZMQ (they can fail)."""
    driver, events, sink = _probe(tmp_path)
    assert not (tmp_path / "run" / KEYS_DIR).exists()
    assert events["control"] == zmq.EVENT_HANDSHAKE_SUCCEEDED
    assert events["data"] == zmq.EVENT_HANDSHAKE_SUCCEEDED
    assert driver.ignored > 0, "the stranger's frames never reached the driver"
    assert any("rejected" in k and v for k, v in sink.items()), sink
