"""Whole graphs of generic nodes through the real runtime: real ZeroMQ, real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from areal_flow.runtime import Driver, RunResult, run_graph
from areal_flow.spec import Graph, Resources
from areal_flow.testing import (
    CollectSinkConfig,
    FunctionConfig,
    ListSourceConfig,
    read_sink,
    run_in_process,
)

ROOT = Path(__file__).resolve().parents[2]


def pipeline(
    count: int = 100,
    fn: str = "tests.runtime.fns:double",
    replicas: int = 1,
    batch_rows: int = 1,
    capacity: int = 4,
    delay_s: float = 0.0,
) -> Graph:
    return Graph(
        name="pipe",
        nodes=[
            ListSourceConfig(name="src", count=count, batch_rows=batch_rows),
            FunctionConfig(name="fn", fn=fn, replicas=replicas),
            CollectSinkConfig(name="sink", delay_s=delay_s),
        ],
        edges=[
            {"src": "src", "dst": "fn", "capacity": capacity},
            {"src": "fn", "dst": "sink", "capacity": capacity},
        ],
    )


def ids(run_dir: Path) -> list[int]:
    table = read_sink(run_dir, "sink")
    return sorted(table.column("id").to_pylist()) if table.num_rows else []


def test_in_process_pipeline_delivers_every_row_once(tmp_path: Path) -> None:
    result = run_in_process(pipeline(count=200, batch_rows=5), run_dir=tmp_path)
    assert result.ok, result.failure
    table = read_sink(tmp_path, "sink")
    assert sorted(table.column("id").to_pylist()) == list(range(200))
    assert table.column("doubled").to_pylist() == [2 * i for i in table.column("id").to_pylist()]


def test_process_pipeline_with_dropping_transform(tmp_path: Path) -> None:
    result = run_graph(pipeline(count=60, fn="tests.runtime.fns:drop_odd", batch_rows=3), tmp_path)
    assert result.ok, result.failure
    assert ids(tmp_path) == list(range(0, 60, 2))
    assert (tmp_path / "logs" / "fn.0.log").exists()
    # Start-up is timed: each replica's launch → ready, then all of them ready.
    assert set(result.setup_s) == {"src/0", "fn/0", "sink/0"}
    assert result.all_ready_s is not None
    assert 0 < max(result.setup_s.values()) <= result.all_ready_s < result.wall_s
    assert abs(result.started_at + result.wall_s - time.time()) < 30


@pytest.mark.slow
def test_ten_thousand_batches_through_two_replicas_exactly_once(tmp_path: Path) -> None:
    graph = pipeline(count=10_000, fn="tests.runtime.fns:tag_pid", replicas=2, capacity=16)
    result = run_graph(graph, tmp_path)
    assert result.ok, result.failure
    table = read_sink(tmp_path, "sink")
    assert sorted(table.column("id").to_pylist()) == list(range(10_000))
    assert len(set(table.column("pid").to_pylist())) == 2, "both replicas did work"


def test_node_that_raises_stops_the_run_with_its_name(tmp_path: Path) -> None:
    graph = pipeline(count=20, fn="tests.runtime.fns:explode_at_7")
    graph = graph.model_copy(update={"nodes": [graph.nodes[0], graph.nodes[1], graph.nodes[2]]})
    result = run_graph(graph, tmp_path, max_restarts=0)
    assert result.status == "failed"
    assert result.failure is not None and result.failure.node == "fn"
    assert "ValueError: id 7 is cursed" in str(result.failure)
    assert any("cursed" in line for line in result.failure.log_tail)


def test_cli_run_exits_nonzero_naming_the_failed_node(tmp_path: Path) -> None:
    graph_file = tmp_path / "bad.yaml"
    graph_file.write_text(
        "name: bad\n"
        "nodes:\n"
        "  - {kind: list_source, name: src, count: 20}\n"
        "  - {kind: function, name: boom, fn: 'tests.runtime.fns:explode_always'}\n"
        "  - {kind: collect_sink, name: sink}\n"
        "edges: ['src -> boom', 'boom -> sink']\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "areal_flow.cli",
            "run",
            str(graph_file),
            "--quiet",
            "--run-dir",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 1
    assert "node 'boom'" in proc.stderr and "cannot handle ids" in proc.stderr
    assert "after 3 restart(s)" in proc.stderr, "a stateless node is restarted, boundedly"


def _run_in_thread(
    graph: Graph, run_dir: Path, **kwargs: Any
) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def watch(driver: Driver) -> None:
        box["driver"] = driver

    def target() -> None:
        box["result"] = run_graph(graph, run_dir, on_update=watch, **kwargs)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def _wait_running(box: dict[str, Any], node: str, timeout: float = 60) -> int:
    """PID of ``node``'s replica 0 once it is running (processed at least one batch)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        driver = box.get("driver")
        if driver is not None:
            for replica in driver.replicas.values():
                if (
                    replica.plan.node == node
                    and replica.status == "running"
                    and replica.metrics.get("batches_in", 0) > 0
                ):
                    return int(replica.handle.pid)
        time.sleep(0.02)
    raise AssertionError(f"{node} never ran")


def test_kill_9_of_a_stateful_replica_is_noticed_within_5_s(tmp_path: Path) -> None:
    graph = pipeline(count=100_000, delay_s=0.01)  # long enough to be killed mid-run
    thread, box = _run_in_thread(graph, tmp_path)
    pid = _wait_running(box, "sink")
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=30)
    result: RunResult = box["result"]
    assert result.status == "failed" and result.failure is not None
    assert result.failure.node == "sink"
    assert "code -9" in result.failure.reason
    assert result.failure.noticed_at - killed_at < 5


def test_stateless_replica_is_restarted_and_the_run_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AREAL_FLOW_TEST_MARKER", str(tmp_path / "crashed"))
    result = run_graph(pipeline(count=200, fn="tests.runtime.fns:crash_once"), tmp_path / "run")
    assert result.ok, result.failure
    assert result.restarts == {"fn/0": 1}
    got = ids(tmp_path / "run")
    assert len(got) == len(set(got)), "no row delivered twice"
    assert set(got) >= set(range(51, 200)) - set(range(51, 51 + 8)), "rows after the crash flowed"


def test_ctrl_c_drains_and_stops_everything_within_10_s(tmp_path: Path) -> None:
    graph_file = tmp_path / "slow.yaml"
    graph_file.write_text(
        "name: slow\n"
        "nodes:\n"
        "  - {kind: list_source, name: src, count: 1000000}\n"
        "  - {kind: collect_sink, name: sink, delay_s: 0.01}\n"
        "edges: ['src -> sink']\n"
    )
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "areal_flow.cli",
            "run",
            str(graph_file),
            "--quiet",
            "--run-dir",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    sink_file = run_dir / "sinks" / "sink.0.arrow"
    deadline = time.monotonic() + 60
    while not (sink_file.exists() and sink_file.stat().st_size > 0):
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.05)
    pids = _worker_pids(run_dir)
    assert len(pids) == 2 * 3  # a stand-by, a reaper and a worker per replica
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=15)
    assert time.monotonic() - sent < 10
    assert proc.returncode == 130
    for pid in pids:
        assert not _alive(pid), f"replica process {pid} outlived the driver"


def _worker_pids(run_dir: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"areal_flow.runtime.worker" in cmd and str(run_dir / "plan.json").encode() in cmd:
                pids.append(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def test_cores_are_pinned_per_resources(tmp_path: Path) -> None:
    graph = Graph(
        name="pin",
        nodes=[
            ListSourceConfig(name="src", count=4),
            FunctionConfig(
                name="fn", fn="tests.runtime.fns:tag_affinity", resources=Resources(cpus=1)
            ),
            CollectSinkConfig(name="sink"),
        ],
        edges=["src -> fn", "fn -> sink"],
    )
    result = run_graph(graph, tmp_path)
    assert result.ok, result.failure
    table = read_sink(tmp_path, "sink")
    assert set(table.column("cores").to_pylist()) == {1}
    assert set(table.column("omp_threads").to_pylist()) == {"1"}
