"""Set-up apart: while the graph starts, the nodes without cores of their own and a lending
trainer stay off the generators' cores; at the start every thread of the replica moves to the
cores it runs on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from areal_flow.graph import build
from areal_flow.loader import load_graph
from areal_flow.runtime.plan import assign_cores, make_plan, setup_apart
from areal_flow.spec import Graph

ROOT = Path(__file__).resolve().parents[2]
LIGHT = ("prompts", "reward", "filter", "publisher")

pytestmark = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="needs two cores: one for the generator"
)


def math_rl(*overrides: str) -> Graph:
    return load_graph(ROOT / "graphs" / "math_rl.py", ["evaluation=null", *overrides])


def startup(graph: Graph, tmp_path: Path) -> dict[str, tuple[list[int], list[int]]]:
    """Each replica's (cores, set-up cores) in the plan."""
    plan = make_plan(graph, build(graph), tmp_path, "tcp://127.0.0.1:1")
    return {r.node: (r.cpus, r.startup_cpus) for r in plan.replicas}


def test_light_nodes_and_the_lending_trainer_set_up_off_the_generator_s_core(
    tmp_path: Path,
) -> None:
    placed = startup(math_rl("placement=lending"), tmp_path)
    gen_cores, gen_setup = placed["gen"]
    trainer_cores, trainer_setup = placed["trainer"]
    others = [c for c in sorted(os.sched_getaffinity(0)) if c not in gen_cores]
    assert gen_setup == []  # the generator sets up where it runs
    assert trainer_setup == trainer_cores  # without the core it may borrow
    for name in LIGHT:
        assert placed[name] == ([], others)


def test_a_trainer_that_borrows_nothing_sets_up_where_it_runs(tmp_path: Path) -> None:
    placed = startup(math_rl("placement=disaggregated"), tmp_path)
    assert placed["trainer"][1] == []
    assert all(placed[name][1] for name in LIGHT)


@pytest.mark.parametrize(
    "overrides",
    [
        ["placement=colocated", "staleness.max_lag=0"],  # the generator holds every core
        ["nodes.gen.resources.cpus=0.5"],  # no generator has cores of its own
    ],
)
def test_nothing_apart_where_no_core_is_the_generators_alone(
    overrides: list[str], tmp_path: Path
) -> None:
    assert all(setup == [] for _, setup in startup(math_rl(*overrides), tmp_path).values())


def test_nothing_apart_under_ray() -> None:
    graph = math_rl("launcher=ray")  # Ray places its actors itself
    assert setup_apart(graph, assign_cores(graph), lending=False) == {}
    local = math_rl()
    assert setup_apart(local, assign_cores(local), lending=False) != {}


def test_turned_off_by_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AREAL_FLOW_SETUP_APART", "0")
    assert all(setup == [] for _, setup in startup(math_rl(), tmp_path).values())


MOVE = """
import json, os, subprocess, sys, threading
from areal_flow.runtime.plan import ReplicaPlan
from areal_flow.runtime.worker import move_threads, pin_process

replica = ReplicaPlan.model_validate_json(sys.argv[1])
running = pin_process(replica)
setup = set(replica.startup_cpus)
seen = {"main_setup": sorted(os.sched_getaffinity(0))}
chosen = sorted(running - setup)[:1]  # a core that is not a set-up core
go = threading.Event()
ready = threading.Barrier(3)

def inherited():  # started during set-up, like a node's loader or zmq's I/O thread
    seen["thread_setup"] = sorted(os.sched_getaffinity(0))
    ready.wait()
    go.wait()
    seen["thread_running"] = sorted(os.sched_getaffinity(0))

def bound():  # binds itself, like an engine's OpenMP thread
    os.sched_setaffinity(0, chosen)
    ready.wait()
    go.wait()
    seen["bound_running"] = sorted(os.sched_getaffinity(0))

threads = [threading.Thread(target=inherited), threading.Thread(target=bound)]
for t in threads:
    t.start()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a pool worker
ready.wait()
move_threads(setup, running)
seen["main_running"] = sorted(os.sched_getaffinity(0))
seen["child_running"] = sorted(os.sched_getaffinity(child.pid))
child.kill()
go.set()
for t in threads:
    t.join()
seen["running"] = sorted(running)
seen["chosen"] = chosen
print(json.dumps(seen))
"""


def test_the_process_sets_up_apart_then_every_thread_moves_to_its_cores(tmp_path: Path) -> None:
    # A real process, pinned by the worker's own functions: a thread and a child process it
    # started during set-up move too (an affinity belongs to a thread, inherited by what it
    # starts); a thread that bound itself to other cores keeps them.
    cores = sorted(os.sched_getaffinity(0))
    graph = math_rl("placement=lending")
    plan = make_plan(graph, build(graph), tmp_path, "tcp://127.0.0.1:1")
    reward = plan.replica("reward", 0)
    out = subprocess.run(
        [sys.executable, "-c", MOVE, reward.model_dump_json()],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    seen = json.loads(out.stdout)
    assert seen["main_setup"] == seen["thread_setup"] == reward.startup_cpus != cores
    assert seen["running"] == cores
    assert seen["main_running"] == seen["thread_running"] == seen["child_running"] == cores
    assert seen["bound_running"] == seen["chosen"] != cores
