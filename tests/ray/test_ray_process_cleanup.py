"""Under Ray too, nothing a replica started outlives it: a killed worker is restarted once its
processes are gone, and a killed actor takes its replica's processes with it. Counted with
psutil on this machine (the cluster's only node); the replica starts ``fns.spawn_family``."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest

from areal_flow.runtime import Driver, RunResult, run_graph
from areal_flow.spec import Graph, Resources
from areal_flow.testing import CollectSinkConfig, FunctionConfig, ListSourceConfig
from tests.faults.harness import living, wait_for, whole_family

ray = pytest.importorskip(
    "ray", reason="Ray is not installed: pip install -e '.[ray]' (scripts/setup.sh dev does)"
)

GONE_S = 5.0  # a killed actor's replica processes are gone within this


def family_graph() -> Graph:
    return Graph(
        name="family",
        nodes=[
            ListSourceConfig(name="src", count=None),
            FunctionConfig(
                name="fam", fn="tests.faults.fns:spawn_family", resources=Resources(cpus=0)
            ),
            CollectSinkConfig(name="sink", keep=False, delay_s=0.01),
        ],
        edges=["src -> fam", "fam -> sink"],
    )


def test_dead_replicas_under_ray_leave_no_process_behind(ray_cluster: str, tmp_path: Path) -> None:
    box: dict[str, Any] = {}

    def watch(driver: Driver) -> None:
        box["driver"] = driver

    def target() -> None:
        box["result"] = run_graph(family_graph(), tmp_path, launcher="ray", on_update=watch)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def fam() -> Any:
        driver = box.get("driver")
        return driver.replicas.get(b"fam/0") if driver is not None else None

    def at_work(restarts: int, dead: int | None = None) -> bool:
        """fam/0 running after ``restarts`` restarts, not as the ``dead`` worker (the
        driver counts a restart before the old replica's state is replaced)."""
        replica = fam()
        return (
            replica is not None
            and replica.restarts == restarts
            and replica.pid not in (None, dead)
            and replica.status == "running"
        )

    try:
        # kill -9 of the worker: the actor's reaper clears, then the driver restarts
        wait_for("the family node at work", lambda: at_work(0), 120)
        worker = fam().pid
        before = whole_family(stand_by(worker))
        assert len(before) == 3 + 4  # stand-by, reaper, worker, family
        os.kill(worker, signal.SIGKILL)
        wait_for("the restart", lambda: fam().restarts == 1, 60)
        assert living(before) == [], f"survived the restart: {living(before)}"

        # the actor killed: its death reaches the reaper, which clears on its own
        wait_for("the restarted replica at work", lambda: at_work(1, dead=worker), 120)
        worker = fam().pid
        again = whole_family(stand_by(worker))
        ray.kill(fam().handle.actor, no_restart=True)
        wait_for("the killed actor's replica processes gone", lambda: not living(again), GONE_S)
        wait_for("the second restart", lambda: at_work(2, dead=worker), 120)
        after = whole_family(stand_by(fam().pid))
    finally:
        driver = box.get("driver")
        if driver is not None:
            driver.interrupt()
        thread.join(60)
    result: RunResult = box["result"]
    assert result.status == "interrupted", result.failure
    assert result.restarts == {"fam/0": 2}
    assert living(after) == [], f"outlived the run: {living(after)}"
    assert not ray.util.list_named_actors(all_namespaces=True), "every actor was stopped"


def stand_by(worker: int) -> int:
    """The stand-by of the worker ``worker`` (its parent is the reaper; the actor's child)."""
    return psutil.Process(psutil.Process(worker).ppid()).ppid()
