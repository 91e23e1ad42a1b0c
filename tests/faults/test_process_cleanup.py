"""Nothing a replica started outlives it: not when its worker is killed (the driver restarts it
only once they are all gone), not when the driver itself is killed. Processes are counted with
psutil, apart from the code under test; every replica here starts ``fns.spawn_family``'s
processes, which ignore SIGTERM, leave the replica's session, or double-fork."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from areal_flow.nodes.generator import GeneratorConfig
from areal_flow.nodes.prompt_source import PromptSourceConfig
from areal_flow.roles import Sampling
from areal_flow.spec import Graph
from areal_flow.testing import CollectSinkConfig, FunctionConfig, ListSourceConfig
from tests.faults.fns import FAMILY_ROLES
from tests.faults.harness import ROOT, WatchedRun, family, living, tree, wait_for, whole_family

GONE_S = 5.0  # a killed driver's replicas, and everything they started, are gone within this


def family_graph() -> Graph:
    """An endless source, a replica that starts a process family, a slow sink."""
    return Graph(
        name="family",
        nodes=[
            ListSourceConfig(name="src", count=None),
            FunctionConfig(name="fam", fn="tests.faults.fns:spawn_family"),
            CollectSinkConfig(name="sink", keep=False, delay_s=0.01),
        ],
        edges=["src -> fam", "fam -> sink"],
    )


@pytest.mark.parametrize("victim", ["worker", "reaper", "stand-by"])
def test_a_killed_replica_is_restarted_once_all_it_started_is_gone(
    tmp_path: Path, victim: str
) -> None:
    """kill -9 of the worker (a crash, the OOM killer), or of either process that guards it."""
    with WatchedRun(family_graph(), tmp_path) as run:
        run.wait("the family node at work", lambda d: run.running("fam", batches_in=2))
        replica = run.replica("fam")
        stand_by, worker = replica.handle.pid, replica.pid
        assert stand_by is not None and worker is not None
        reaper = psutil.Process(worker).ppid()
        assert psutil.Process(reaper).ppid() == stand_by
        before = whole_family(stand_by)
        members = dict(family(before))
        assert len(before) == 3 + len(FAMILY_ROLES), before  # stand-by, reaper, worker, family
        # The family tests what a process group alone would miss.
        assert os.getsid(members["own-session"].pid) != stand_by
        assert os.getsid(members["daemon"].pid) != stand_by
        assert members["daemon"].ppid() == reaper, "the double-forked daemon is the reaper's"

        os.kill({"worker": worker, "reaper": reaper, "stand-by": stand_by}[victim], signal.SIGKILL)
        run.wait("the restart", lambda d: run.replica("fam").restarts == 1)
        # The driver restarts only once everything of the dead replica is gone.
        assert living(before) == [], f"survived the restart: {living(before)}"

        run.wait(
            "the restarted replica at work",
            lambda d: run.replica("fam").pid not in (None, worker) and run.running("fam"),
        )
        new_stand_by = run.replica("fam").handle.pid
        assert new_stand_by is not None and new_stand_by != stand_by
        after = whole_family(new_stand_by)  # it has taken batches: its family is there
        assert run.driver is not None
        run.driver.interrupt()
        result = run.finish(60)
    assert result.status == "interrupted", result.failure
    assert result.restarts == {"fam/0": 1}
    # Who cleared: the reaper as its worker ended, the stand-by after its reaper, or the
    # reaper on its parent-death signal.
    cleared = {
        "worker": "the worker exited with code -9",
        "reaper": "the reaper exited with code -9",
        "stand-by": "stopped by SIGTERM",
    }[victim]
    log = (tmp_path / "logs" / "fam.0.log").read_text()
    assert f"[areal-flow] reaper: {cleared}; killed its processes" in log
    assert living(after) == [], f"outlived the run: {living(after)}"


def test_a_killed_driver_takes_every_replica_process_with_it(tmp_path: Path) -> None:
    graph_file = tmp_path / "family.yaml"
    graph_file.write_text(
        "name: family\n"
        "nodes:\n"
        "  - {kind: list_source, name: src, count: null}\n"
        "  - {kind: function, name: fam, fn: 'tests.faults.fns:spawn_family', replicas: 2}\n"
        "  - {kind: collect_sink, name: sink, keep: false, delay_s: 0.01}\n"
        "edges: ['src -> fam', 'fam -> sink']\n"
        "tracking: {enabled: false}\n"
    )
    command = ["areal_flow.cli", "run", str(graph_file), "-q", "--run-dir", str(tmp_path / "run")]
    # Replicas notice a silent driver only after a minute: what ends them here is its death.
    env = {k: v for k, v in os.environ.items() if k != "AREAL_FLOW_DRIVER_SILENT_S"}
    driver = subprocess.Popen(
        [sys.executable, "-m", *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        env=env,
    )
    try:
        processes = whole_family(driver.pid, count=2)[1:]
    finally:
        driver.send_signal(signal.SIGKILL)  # the driver dies without a word to anyone
        driver.wait(10)
    # four replicas (a stand-by, a reaper and a worker each), two of them with a family
    assert len(processes) == 4 * 3 + 2 * len(FAMILY_ROLES), [p.cmdline() for p in processes]
    wait_for("every replica process gone", lambda: living(processes) == [], GONE_S)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_a_killed_vllm_generator_leaves_no_engine_process(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """The defect as reported: kill -9 of a vLLM generator's worker left its EngineCore
    running beside the restarted one."""
    model = str(tiny_model_dir)
    graph = Graph(
        name="gen",
        nodes=[
            PromptSourceConfig(name="prompts", model=model, group_size=2, size=1000),
            GeneratorConfig(
                name="gen", model=model, max_running=4, sampling=Sampling(max_tokens=8)
            ),
            CollectSinkConfig(name="sink", keep=False),
        ],
        edges=["prompts -> gen", "gen -> sink"],
    )
    with WatchedRun(graph, tmp_path) as run:
        run.wait("the generator at work", lambda d: run.running("gen"), timeout=600)
        replica = run.replica("gen")
        stand_by, worker = replica.handle.pid, replica.pid
        assert stand_by is not None and worker is not None
        before = living(tree(stand_by))
        assert engine_cores(worker), "vLLM runs its engine core in a process of its own"
        os.kill(worker, signal.SIGKILL)
        run.wait("the restart", lambda d: run.replica("gen").restarts == 1)
        assert living(before) == [], f"survived the restart: {living(before)}"
        run.wait(
            "the restarted generator at work",
            lambda d: run.replica("gen").pid not in (None, worker) and run.running("gen"),
            timeout=600,
        )
        new_worker = run.replica("gen").pid
        assert new_worker is not None
        after = living(tree(run.replica("gen").handle.pid or 0))
        assert engine_cores(new_worker), "the restarted generator has an engine of its own"
        assert run.driver is not None
        run.driver.interrupt()
        result = run.finish(120)
    assert result.status == "interrupted", result.failure
    assert result.restarts == {"gen/0": 1}
    assert living(after) == [], f"outlived the run: {living(after)}"


def engine_cores(worker: int) -> list[psutil.Process]:
    """vLLM's engine-core processes below ``worker`` (vLLM names them with setproctitle)."""
    found = []
    for process in psutil.Process(worker).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if "EngineCore" in process.name():
                found.append(process)
    return found
