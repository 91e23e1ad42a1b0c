"""Fault injection on the math graph: a run in a thread, conditions on the driver, kill -9, and
the ledger proof (every prompt of the epoch trained exactly once, or still pending).

Everything is real: worker processes, ZeroMQ, the HF engine, the trainer, checkpoints. Only
the model is the tiny random Llama and the epoch is a few dozen prompts.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from areal_flow.loader import load_graph
from areal_flow.runtime import Driver, RunResult, run_graph
from areal_flow.runtime.driver import Replica
from areal_flow.runtime.ledger import read_ledger
from areal_flow.spec import Graph
from tests.faults.fns import FAMILY, FAMILY_ROLES

ROOT = Path(__file__).resolve().parents[2]
GROUP_SIZE = 4
BATCH_GROUPS = 4


def math_overrides(model: Path, prompts: int) -> list[str]:
    """graphs/math_rl.py shrunk: tiny model, an epoch of ``prompts`` trained exactly once."""
    assert prompts % BATCH_GROUPS == 0
    settings = {
        "nodes.prompts.model": model,
        "nodes.prompts.size": prompts,
        "nodes.prompts.epochs": 1,
        "nodes.prompts.group_size": GROUP_SIZE,
        "nodes.gen.model": model,
        "nodes.gen.engine": "hf",
        "nodes.gen.sampling.max_tokens": 16,
        "nodes.trainer.model": model,
        "nodes.trainer.batch_groups": BATCH_GROUPS,
        "nodes.trainer.steps": prompts // BATCH_GROUPS,
        "nodes.trainer.checkpoint_every": 1,
        "nodes.trainer.keep_checkpoints": "null",
        # A random model earns no reward: keep its (uniform) groups, so none is filtered out.
        "nodes.filter.drop_uniform_reward": "false",
        "staleness.max_lag": 1,  # a few groups in flight at a time, not the whole epoch
        "tracking.enabled": "false",
        "evaluation": "null",
    }
    return [f"{key}={value}" for key, value in settings.items()]


def math_graph(model: Path, prompts: int) -> Graph:
    return load_graph(ROOT / "graphs" / "math_rl.py", math_overrides(model, prompts))


class WatchedRun:
    """``run_graph`` in a thread; the test waits on the driver's state and kills replicas."""

    def __init__(
        self,
        graph: Graph,
        run_dir: Path,
        also: Callable[[Driver], None] | None = None,
        **kwargs: Any,
    ) -> None:
        """``also``: another driver callback (a web view's feed), called after the watch."""
        self.driver: Driver | None = None
        self.result: RunResult | None = None
        self.error: BaseException | None = None  # run_graph raised instead of returning
        self.pids: list[int] = []  # every replica process the test saw

        def watch(driver: Driver) -> None:
            self.driver = driver
            for replica in driver.replicas.values():
                pid = replica.handle.pid
                if pid is not None and pid not in self.pids:
                    self.pids.append(pid)
            if also is not None:
                also(driver)

        def target() -> None:
            try:
                self.result = run_graph(graph, run_dir, on_update=watch, **kwargs)
            except BaseException as err:  # the test's waits fail with it at once
                self.error = err
                raise

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def __enter__(self) -> WatchedRun:
        return self

    def __exit__(self, *exc: object) -> None:
        """A failed test still stops its run (drain, then stop every replica)."""
        if self.result is None and self.driver is not None:
            self.driver.interrupt()
        self.thread.join(60)

    def replica(self, node: str) -> Replica:
        assert self.driver is not None
        (replica,) = [r for r in self.driver.replicas.values() if r.plan.node == node]
        return replica

    def wait(self, what: str, condition: Callable[[Driver], bool], timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.error is not None:
                raise AssertionError(f"the run raised before {what}") from self.error
            if self.result is not None:
                raise AssertionError(f"the run ended ({self.result.status}) before {what}")
            if self.driver is not None and condition(self.driver):
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    def running(self, node: str, batches_in: float = 1) -> bool:
        replica = self.replica(node)
        return replica.status == "running" and replica.metrics.get("batches_in", 0) >= batches_in

    def kill(self, node: str) -> int:
        """kill -9 the node's worker process, as a crash or the OOM killer would; the replica's
        session id (its reaper's PID), which the processes it started share unless they left."""
        replica = self.replica(node)
        assert replica.pid is not None and replica.handle.pid is not None
        os.kill(replica.pid, signal.SIGKILL)
        return replica.handle.pid

    def finish(self, timeout: float = 240) -> RunResult:
        self.thread.join(timeout)
        assert self.result is not None, f"the run did not end within {timeout} s"
        return self.result


# -- the ledger proof --------------------------------------------------------------------------


def epoch_groups(graph: Graph) -> set[str]:
    """The group id of every prompt of epoch 0, from the dataset itself (not the run)."""
    from areal_flow.nodes.prompt_source import load_dataset

    cfg = graph.node("prompts")
    dataset = load_dataset(cfg, graph.seed)  # type: ignore[arg-type]
    return {f"{dataset[i].id}@0" for i in range(len(dataset))}


def checkpoint_meta(run_dir: Path) -> dict[str, Any]:
    folder = run_dir / "checkpoints"
    latest = folder / (folder / "latest").read_text().strip()
    meta: dict[str, Any] = json.loads((latest / "trainer.json").read_text())
    return meta


def trained_groups(run_dir: Path) -> Counter[str]:
    """Trajectories trained per group, from the latest checkpoint; no trajectory twice."""
    trained = checkpoint_meta(run_dir)["trained_ids"]
    twice = [t for t, n in Counter(trained).items() if n > 1]
    assert not twice, f"trajectories trained twice: {twice}"
    return Counter(t.rsplit("/", 1)[0] for t in trained)


def assert_epoch_trained_exactly_once(run_dir: Path, graph: Graph) -> None:
    per_group = trained_groups(run_dir)
    expected = epoch_groups(graph)
    lost = expected - set(per_group)
    assert not lost, f"{len(lost)} prompt(s) of the epoch never trained: {sorted(lost)}"
    assert set(per_group) == expected, (
        f"trained groups outside the epoch: {set(per_group) - expected}"
    )
    partial = {g: n for g, n in per_group.items() if n != GROUP_SIZE}
    assert not partial, f"groups not trained whole and once: {partial}"


def ledger_events(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    return [e for e in read_ledger(run_dir) if e["e"] == kind]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def session_members(sessions: list[int]) -> list[int]:
    """Live processes in any of ``sessions`` (a replica and whatever it spawned)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) in sessions and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def tree(root: int) -> list[psutil.Process]:
    """``root`` and every process below it, as psutil sees them (the test's own count)."""
    top = psutil.Process(root)
    return [top, *top.children(recursive=True)]


def family(processes: list[psutil.Process]) -> list[tuple[str, psutil.Process]]:
    """The members of ``fns.spawn_family``'s families among ``processes``, with their roles."""
    members = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            command = process.cmdline()
            if len(command) == 3 and command[1] == str(FAMILY):
                members.append((command[2], process))
    return members


def living(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``processes`` still running (a zombie has ended; a reused PID is not them)."""
    alive = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
    return alive


def wait_for(what: str, condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def families(processes: list[psutil.Process]) -> Counter[str]:
    return Counter(role for role, _ in family(processes))


def whole_family(root: int, count: int = 1) -> list[psutil.Process]:
    """``root``'s process tree once ``count`` complete families are in it."""
    found: list[psutil.Process] = []

    def complete() -> bool:
        nonlocal found
        found = living(tree(root))  # not the daemon's first fork, a zombie till its parent goes
        return families(found) == Counter({role: count for role in FAMILY_ROLES})

    wait_for(f"{count} process families under {root}", complete, timeout=90)
    return found
