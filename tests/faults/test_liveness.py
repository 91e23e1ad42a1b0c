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


SLOW_GRAPH = (
    "name: slow\n"
    "nodes:\n"
    "  - {kind: list_source, name: src, count: 1000000}\n"
    "  - {kind: collect_sink, name: sink, delay_s: 0.01}\n"
    "edges: ['src -> sink']\n"
    "tracking: {enabled: false}\n"
)


def start_slow_run(tmp_path: Path, output: int) -> tuple[subprocess.Popen[bytes], Path]:
    """A CLI run of a long source → sink graph whose replicas give up on a driver silent for
    3 s; returns once the sink has written data."""
    graph_file = tmp_path / "slow.yaml"
    graph_file.write_text(SLOW_GRAPH)
    run_dir = tmp_path / "run"
    command = ["areal_flow.cli", "run", str(graph_file), "-q", "--no-web"]
    command += ["--run-dir", str(run_dir)]
    driver = subprocess.Popen(
        [sys.executable, "-m", *command],
        stdout=output,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env={**os.environ, "AREAL_FLOW_DRIVER_SILENT_S": "3"},
    )
    sink = run_dir / "sinks" / "sink.0.arrow"
    deadline = time.monotonic() + 60
    while not (sink.exists() and sink.stat().st_size > 0):
        if time.monotonic() > deadline:
            driver.kill()
            raise AssertionError("the run never started")
        time.sleep(0.05)
    return driver, run_dir


def silence(driver: subprocess.Popen[bytes], workers: list[int]) -> float:
    """SIGSTOP the driver (silent, and alive: no parent-death signal) and wait up to 20 s for
    its replicas to exit; returns the seconds they took."""
    driver.send_signal(signal.SIGSTOP)
    silenced = time.monotonic()
    while any(alive(pid) for pid in workers) and time.monotonic() - silenced < 20:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers), "replicas outlived their driver"
    return time.monotonic() - silenced


def test_replicas_stop_when_their_driver_goes_silent(tmp_path: Path) -> None:
    """A driver that is alive but silent (hung; or, under Ray, on another host) gets no
    parent-death signal to its replicas: they stop on their own after DRIVER_SILENT_S."""
    driver, run_dir = start_slow_run(tmp_path, subprocess.DEVNULL)
    try:
        workers = worker_pids(run_dir)
        assert len(workers) == 2 * 3  # a stand-by, a reaper and a worker per replica
        # 3 s of silence, then a stop with 3 s of grace before a forced exit.
        assert silence(driver, workers) < 3 + 3 + 4
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
    driver, run_dir = start_slow_run(tmp_path, subprocess.PIPE)
    try:
        silence(driver, worker_pids(run_dir))
        driver.send_signal(signal.SIGCONT)
        output, _ = driver.communicate(timeout=60)
    finally:
        driver.kill()
        driver.wait(10)
    text = output.decode(errors="replace")
    assert driver.returncode != 0, text[-2000:]
    assert "the driver was silent for" in text, text[-2000:]
    assert '"status": "failed"' in (run_dir / "summary.json").read_text()
