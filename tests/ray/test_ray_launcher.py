"""The Ray launcher on a local Ray cluster: the local launcher's results, its failure handling
(a replica that raises, an actor killed mid-run), and placement errors before anything starts."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from areal_flow.graph import GraphInvalid
from areal_flow.runtime import Driver, RunResult, run_graph
from areal_flow.spec import Graph, RayOptions, Resources
from areal_flow.testing import CollectSinkConfig, FunctionConfig, ListSourceConfig, read_sink

ray = pytest.importorskip(
    "ray", reason="Ray is not installed: pip install -e '.[ray]' (scripts/setup.sh dev does)"
)

ROOT = Path(__file__).resolve().parents[2]


def pipeline(
    count: int = 60,
    fn: str = "tests.runtime.fns:double",
    replicas: int = 2,
    delay_s: float = 0.0,
    fn_resources: Resources | None = None,
) -> Graph:
    return Graph(
        name="pipe",
        nodes=[
            ListSourceConfig(name="src", count=count, batch_rows=3),
            FunctionConfig(
                name="fn", fn=fn, replicas=replicas, resources=fn_resources or Resources(cpus=0)
            ),
            CollectSinkConfig(name="sink", delay_s=delay_s),
        ],
        edges=["src -> fn", "fn -> sink"],
    )


def rows(run_dir: Path) -> list[dict[str, int]]:
    table = read_sink(run_dir, "sink").select(["id", "doubled"])
    return sorted(table.to_pylist(), key=lambda row: row["id"])


def test_function_graph_gives_the_local_launchers_results(ray_cluster: str, tmp_path: Path) -> None:
    local = run_graph(pipeline(), tmp_path / "local", launcher="local")
    on_ray = run_graph(pipeline(), tmp_path / "ray", launcher="ray")
    assert local.ok, local.failure
    assert on_ray.ok, on_ray.failure
    assert rows(tmp_path / "ray") == rows(tmp_path / "local")
    assert [r["id"] for r in rows(tmp_path / "ray")] == list(range(60))
    assert set(on_ray.metrics) == {"src/0", "fn/0", "fn/1", "sink/0"}
    assert all(on_ray.metrics[k]["batches_in"] > 0 for k in ("fn/0", "fn/1")), "both replicas"
    for key in ("src.0", "fn.0", "fn.1", "sink.0"):
        assert (tmp_path / "ray" / "logs" / f"{key}.log").exists(), key
    assert not ray.util.list_named_actors(all_namespaces=True), "every actor was stopped"


def test_a_node_defined_in_the_graph_file_runs_in_ray_actors(
    ray_cluster: str, tmp_path: Path
) -> None:
    from areal_flow.loader import load_graph

    graph_file = ROOT / "tests" / "runtime" / "graphs" / "user_nodes.py"
    result = run_graph(load_graph(graph_file), tmp_path, launcher="ray")
    assert result.ok, result.failure
    words = read_sink(tmp_path, "sink").column("word").to_pylist()
    expected = ("asynchronous", "dataflow", "graph", "of", "user", "nodes")
    assert sorted(words) == sorted(f"{w.upper()}!!" for w in expected)
    assert result.metrics["shout/0"]["shouted"] == 6


def test_replica_that_raises_stops_the_run_with_its_name_and_log(
    ray_cluster: str, tmp_path: Path
) -> None:
    graph = pipeline(count=30, fn="tests.runtime.fns:explode_at_7", replicas=1)
    result = run_graph(graph, tmp_path, launcher="ray", max_restarts=0)
    assert result.status == "failed" and result.failure is not None
    assert result.failure.node == "fn"
    assert "ValueError: id 7 is cursed" in str(result.failure)
    # the traceback travelled from the actor's process into the run folder's log
    assert any("cursed" in line for line in result.failure.log_tail)
    assert "cursed" in (tmp_path / "logs" / "fn.0.log").read_text()


def _run_in_thread(graph: Graph, run_dir: Path) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def watch(driver: Driver) -> None:
        box["driver"] = driver

    def target() -> None:
        box["result"] = run_graph(graph, run_dir, launcher="ray", on_update=watch)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def _kill_actor_once_running(box: dict[str, Any], key: str, timeout: float = 120) -> float:
    """Kill ``key``'s actor once it has taken input; when it was killed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        driver = box.get("driver")
        replica = driver.replicas.get(key.encode()) if driver is not None else None
        if replica is not None and replica.metrics.get("batches_in", 0) > 2:
            ray.kill(replica.handle.actor, no_restart=True)
            return time.monotonic()
        time.sleep(0.02)
    raise AssertionError(f"{key} never ran")


def test_killed_actor_of_a_stateless_node_is_restarted(ray_cluster: str, tmp_path: Path) -> None:
    count = 300
    thread, box = _run_in_thread(pipeline(count=count, replicas=1, delay_s=0.01), tmp_path)
    _kill_actor_once_running(box, "fn/0")
    thread.join(timeout=120)
    result: RunResult = box["result"]
    assert result.ok, result.failure
    assert result.restarts == {"fn/0": 1}
    got = [r["id"] for r in rows(tmp_path)]
    assert len(got) == len(set(got)), "no row delivered twice"
    assert len(got) >= count - 3 * 8, "only rows in flight at the killed replica are lost"
    assert got[-1] == count - 1, "rows after the kill flowed through the new actor"
    assert "Ray actor of fn/0 died" in (tmp_path / "logs" / "fn.0.log").read_text()


def test_killed_actor_of_a_stateful_node_stops_the_run(ray_cluster: str, tmp_path: Path) -> None:
    thread, box = _run_in_thread(pipeline(count=100_000, replicas=1, delay_s=0.01), tmp_path)
    killed_at = _kill_actor_once_running(box, "sink/0")
    thread.join(timeout=60)
    result: RunResult = box["result"]
    assert result.status == "failed" and result.failure is not None
    assert result.failure.node == "sink"
    assert "code -9" in result.failure.reason
    assert any("Ray actor of sink/0 died" in line for line in result.failure.log_tail)
    assert result.failure.noticed_at - killed_at < 5
    assert not ray.util.list_named_actors(all_namespaces=True), "every actor was stopped"


def test_a_graph_the_cluster_cannot_hold_fails_before_anything_starts(
    ray_cluster: str, tmp_path: Path
) -> None:
    too_big = pipeline(fn_resources=Resources(cpus=4))
    with pytest.raises(GraphInvalid) as err:
        run_graph(too_big, tmp_path / "big", launcher="ray")
    assert [p.where for p in err.value.problems] == ["nodes.fn.resources.cpus"]
    assert "4 CPU(s) per replica but the largest Ray node has 2" in str(err.value)
    gpus = pipeline(fn_resources=Resources(cpus=0, gpus=1))
    with pytest.raises(GraphInvalid, match=r"nodes\.fn\.resources\.gpus: asks for 1 GPU"):
        run_graph(gpus, tmp_path / "gpu", launcher="ray")
    total = pipeline(fn_resources=Resources(cpus=1.5))  # 2 replicas × 1.5 > 2
    with pytest.raises(GraphInvalid, match=r"3 CPU\(s\) in all \(fn=3\) but the Ray cluster has 2"):
        run_graph(total, tmp_path / "total", launcher="ray")
    assert not (tmp_path / "big" / "plan.json").exists(), "no replica was planned"
    assert not ray.util.list_named_actors(all_namespaces=True)


def test_cli_joins_a_cluster_by_address(ray_cluster: str, tmp_path: Path) -> None:
    graph_file = tmp_path / "pipe.yaml"
    graph_file.write_text(
        "name: pipe\n"
        "nodes:\n"
        "  - {kind: list_source, name: src, count: 20, batch_rows: 4}\n"
        "  - {kind: function, name: fn, fn: 'tests.runtime.fns:double'}\n"
        "  - {kind: collect_sink, name: sink}\n"
        "edges: ['src -> fn', 'fn -> sink']\n"
        "tracking: {enabled: false}\n"
    )
    command = [sys.executable, "-m", "areal_flow.cli", "run", str(graph_file), "--quiet"]
    command += ["--address", ray_cluster]
    ok = subprocess.run(
        [*command, "--run-dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    assert [r["id"] for r in rows(tmp_path / "run")] == list(range(20))
    bad = subprocess.run(
        [*command, "--run-dir", str(tmp_path / "bad"), "--set", "nodes.fn.resources.gpus=2"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert bad.returncode == 1
    assert "nodes.fn.resources.gpus" in bad.stderr and "largest Ray node has 0" in bad.stderr


@pytest.mark.slow
def test_math_graph_trains_what_the_local_launcher_trains(
    ray_cluster: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """graphs/math_rl.py with a tiny model, η = 0 so which trajectories train is fixed: both
    launchers train the same ids in the same number of steps."""
    from areal_flow.loader import load_graph

    model = str(tiny_model_dir)
    overrides = {
        "nodes.prompts.model": model,
        "nodes.prompts.group_size": "4",
        "nodes.gen.model": model,
        "nodes.gen.engine": "hf",
        "nodes.gen.sampling.max_tokens": "16",
        "nodes.trainer.model": model,
        "nodes.trainer.steps": "2",
        "nodes.trainer.batch_groups": "2",
        "nodes.filter.drop_uniform_reward": "false",
        "staleness.max_lag": "0",
    }
    graph = load_graph(ROOT / "graphs" / "math_rl.py", [f"{k}={v}" for k, v in overrides.items()])
    trained = {}
    for launcher in ("local", "ray"):
        run_dir = tmp_path / launcher
        result = run_graph(graph, run_dir, launcher=launcher)  # type: ignore[arg-type]
        assert result.ok, result.failure
        assert result.version == 2
        checkpoints = run_dir / "checkpoints"
        meta = json.loads(
            (
                checkpoints / (checkpoints / "latest").read_text().strip() / "trainer.json"
            ).read_text()
        )
        steps = (run_dir / "metrics" / "steps.jsonl").read_text().splitlines()
        trained[launcher] = (meta["step"], sorted(meta["trained_ids"]), len(steps))
        assert result.staleness.get("accepted") == 2 * 2, result.staleness  # groups
    assert trained["ray"] == trained["local"]
    assert trained["ray"][0] == 2 and len(trained["ray"][1]) == 2 * 2 * 4


def test_a_cluster_too_busy_to_grant_the_bundles_fails_after_the_timeout(
    ray_cluster: str, tmp_path: Path
) -> None:
    from ray.util.placement_group import placement_group, remove_placement_group

    hog = placement_group([{"CPU": 2.0}])  # another job holds every CPU
    ray.get(hog.ready(), timeout=30)
    try:
        graph = pipeline(fn_resources=Resources(cpus=1)).model_copy(
            update={"ray": RayOptions(placement_timeout_s=1.0)}
        )
        with pytest.raises(GraphInvalid, match=r"did not grant the 4 bundles within 1 s"):
            run_graph(graph, tmp_path, launcher="ray")
    finally:
        remove_placement_group(hog)
    assert not (tmp_path / "plan.json").exists()
