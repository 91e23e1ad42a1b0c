"""Every wait is bounded: a stuck replica is reported by name, a silent driver leaves no orphan
(a killed one neither: test_process_cleanup.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from areal_flow.runtime import run_graph
from areal_flow.runtime.control import HEARTBEAT_S
from areal_flow.spec import Graph
from areal_flow.testing import CollectSinkConfig, FunctionConfig, ListSourceConfig
from tests.faults.harness import ROOT, alive

STUCK_AFTER_S = 2.0


def test_a_replica_blocking_its_event_loop_is_reported_stuck_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "blocked_at"
    monkeypatch.setenv("AREAL_FLOW_TEST_MARKER", str(marker))
    graph = Graph(
        name="stuck",
        nodes=[
            ListSourceConfig(name="src", count=10),
            FunctionConfig(name="hog", fn="tests.faults.fns:block_event_loop"),
            CollectSinkConfig(name="sink"),
        ],
        edges=["src -> hog", "hog -> sink"],
    )
    began = time.monotonic()
    result = run_graph(graph, tmp_path / "run", max_restarts=0, stuck_after_s=STUCK_AFTER_S)
    assert result.status == "failed" and result.failure is not None
    assert result.failure.node == "hog"
    assert "is stuck: no heartbeat for" in result.failure.reason
    blocked_at = float(marker.read_text())
    # The last heartbeat left up to 0.5 s before it blocked; health is checked every 0.1 s.
    silent = result.failure.noticed_at - blocked_at
    assert STUCK_AFTER_S - HEARTBEAT_S <= silent < STUCK_AFTER_S + 1.5
    assert time.monotonic() - began < 60


def test_replicas_stop_when_their_driver_goes_silent(tmp_path: Path) -> None:
    """A driver that is alive but silent (hung; or, under Ray, on another host) gets no
    parent-death signal to its replicas: they stop on their own after DRIVER_SILENT_S."""
    graph_file = tmp_path / "slow.yaml"
    graph_file.write_text(
        "name: slow\n"
        "nodes:\n"
        "  - {kind: list_source, name: src, count: 1000000}\n"
        "  - {kind: collect_sink, name: sink, delay_s: 0.01}\n"
        "edges: ['src -> sink']\n"
        "tracking: {enabled: false}\n"
    )
    run_dir = tmp_path / "run"
    command = ["areal_flow.cli", "run", str(graph_file), "-q", "--run-dir", str(run_dir)]
    driver = subprocess.Popen(
        [sys.executable, "-m", *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        env={**os.environ, "AREAL_FLOW_DRIVER_SILENT_S": "3"},
    )
    try:
        sink = run_dir / "sinks" / "sink.0.arrow"
        deadline = time.monotonic() + 60
        while not (sink.exists() and sink.stat().st_size > 0):
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.05)
        workers = worker_pids(run_dir)
        assert len(workers) == 2 * 3  # a stand-by, a reaper and a worker per replica
        driver.send_signal(signal.SIGSTOP)  # silent, and alive: no parent-death signal
        silenced = time.monotonic()
        # 3 s of silence, then a stop with 3 s of grace before a forced exit.
        while any(alive(pid) for pid in workers) and time.monotonic() - silenced < 20:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in workers), "replicas outlived their driver"
        assert time.monotonic() - silenced < 3 + 3 + 4
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait(10)


def worker_pids(run_dir: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"areal_flow.runtime.worker" in command and str(run_dir).encode() in b" ".join(command):
            pids.append(int(entry.name))
    return pids


def test_a_driver_that_wakes_after_its_replicas_gave_up_reports_the_run_failed(
    tmp_path: Path,
) -> None:
    """Replicas that stopped on a silent driver failed, they did not finish: a driver that was
    only stalled (a loaded machine) and wakes up ends the run 'failed', naming the silence,
    never 'completed'."""
    graph_file = tmp_path / "slow.yaml"
    graph_file.write_text(
        "name: slow\n"
        "nodes:\n"
        "  - {kind: list_source, name: src, count: 1000000}\n"
        "  - {kind: collect_sink, name: sink, delay_s: 0.01}\n"
        "edges: ['src -> sink']\n"
        "tracking: {enabled: false}\n"
    )
    run_dir = tmp_path / "run"
    command = [
        "areal_flow.cli",
        "run",
        str(graph_file),
        "-q",
        "--no-web",
        "--run-dir",
        str(run_dir),
    ]
    driver = subprocess.Popen(
        [sys.executable, "-m", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env={**os.environ, "AREAL_FLOW_DRIVER_SILENT_S": "3"},
    )
    try:
        sink = run_dir / "sinks" / "sink.0.arrow"
        deadline = time.monotonic() + 60
        while not (sink.exists() and sink.stat().st_size > 0):
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.05)
        workers = worker_pids(run_dir)
        driver.send_signal(signal.SIGSTOP)
        silenced = time.monotonic()
        while any(alive(pid) for pid in workers) and time.monotonic() - silenced < 20:
            time.sleep(0.1)
        driver.send_signal(signal.SIGCONT)
        output, _ = driver.communicate(timeout=60)
    finally:
        driver.kill()
        driver.wait(10)
    text = output.decode(errors="replace")
    assert driver.returncode != 0, text[-2000:]
    assert "the driver was silent for" in text, text[-2000:]
    assert '"status": "failed"' in (run_dir / "summary.json").read_text()
