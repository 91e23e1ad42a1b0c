"""Resuming a stopped or crashed run in its own folder (``areal-flow run FILE --resume DIR``).

Rules:
- The trainer's latest checkpoint is the truth: model, optimizer, RNG, version, and the prompt
  groups it holds (trained, pending, or in its interrupted batch). The rest follows from it and
  the run's ledger (``ledger.jsonl``, written by the driver, see ``ledger.py``).
- A group is *resolved* when the checkpoint holds it or a filter rejected all of it. Each source
  replica restarts from the state it had just before issuing its oldest unresolved group (its
  low-water mark) and skips the resolved groups it meets again after that point. So every group
  the checkpoint lacks — in flight at the crash, or trained after the checkpoint and rolled back
  with it — is issued again, and no group the checkpoint holds is issued twice.
- The staleness gate is rebuilt with ``StalenessController.from_state`` at the checkpoint's
  version from the ledger's counters: nothing in flight, ``accepted`` the groups the restored
  trainer holds (AReaL issue #1388: capacity must not count the crashed run's in-flight work).
- The trainer gets ``{"checkpoint": path}`` as its resume state, a source its own saved state
  (``Node.state()``, e.g. the prompt source's ``position`` and ``walked``).
- No checkpoint, no resume: ``ResumeError`` names the folder.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from areal_flow.runtime.ledger import LEDGER_FILE, read_ledger
from areal_flow.runtime.plan import RunPlan
from areal_flow.runtime.staleness import StalenessController


class ResumeError(RuntimeError):
    """A run folder that cannot be resumed; the message says why and names the folder."""


@dataclass(frozen=True)
class SourceStart:
    """Where one source replica starts again."""

    state: dict[str, Any] | None  # the node's resume state (None: from the beginning)
    skip: list[str] = field(default_factory=list)  # resolved groups to skip on the way


@dataclass(frozen=True)
class ResumePoint:
    """Everything a resumed run starts from."""

    run_dir: Path
    checkpoint: Path
    step: int
    version: int
    pending: int  # trajectories the checkpoint keeps untrained
    held: int  # prompt groups the checkpoint holds: trained, pending or in its batch
    sources: dict[str, SourceStart]  # per source replica key
    counters: dict[str, int]  # admitted, accepted, rejected trajectories over the ledger


def resume_point(run_dir: Path) -> ResumePoint:
    """The resume point of ``run_dir``, or ``ResumeError`` saying why there is none."""
    from areal_flow.train.checkpoint import data_position

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ResumeError(f"cannot resume {run_dir}: no such run folder")
    try:
        position = data_position(run_dir)
    except FileNotFoundError:
        raise ResumeError(
            f"cannot resume {run_dir}: it holds no checkpoint (no {run_dir}/checkpoints/latest);"
            " the trainer writes one every checkpoint_every steps and on a clean stop. "
            "Start a new run instead."
        ) from None
    events = read_ledger(run_dir)
    if not events and position.held:
        raise ResumeError(
            f"cannot resume {run_dir}: it has a checkpoint but no {LEDGER_FILE}, so the prompt "
            "sources' positions are unknown (a run folder from an older version?)"
        )
    rejected = _fully_rejected(events)
    resolved = set(position.held) | rejected
    return ResumePoint(
        run_dir=run_dir,
        checkpoint=position.path,
        step=position.step,
        version=position.version,
        pending=position.pending,
        held=len(position.held),
        sources=_source_starts(events, resolved),
        counters=_counters(events),
    )


def _fully_rejected(events: Iterable[dict[str, Any]]) -> set[str]:
    """Groups whose last issued copy was rejected whole."""
    size: dict[str, int] = {}
    dropped: dict[str, int] = {}
    for event in events:
        if event["e"] in ("issued", "reissued"):
            size[event["g"]], dropped[event["g"]] = int(event["n"]), 0
        elif event["e"] == "rejected" and event["g"] in dropped:
            dropped[event["g"]] += int(event["counted"])
    return {g for g, n in dropped.items() if n >= size[g]}


def _source_starts(events: list[dict[str, Any]], resolved: set[str]) -> dict[str, SourceStart]:
    """Per source replica: the state before its oldest unresolved group, and what to skip."""
    first: dict[str, list[dict[str, Any]]] = {}  # per source, first issues in walk order
    seen: set[str] = set()
    for event in events:
        if event["e"] == "issued" and event["g"] not in seen:
            seen.add(event["g"])
            first.setdefault(event["src"], []).append(event)
    starts = {}
    for source, issues in first.items():
        low = next((i for i, e in enumerate(issues) if e["g"] not in resolved), None)
        if low is None:
            starts[source] = SourceStart(issues[-1]["after"])
        else:
            skip = [e["g"] for e in issues[low + 1 :] if e["g"] in resolved]
            starts[source] = SourceStart(issues[low]["before"], skip)
    return starts


def _counters(events: Iterable[dict[str, Any]]) -> dict[str, int]:
    """The gate's counters (prompt groups) over the ledger: issued copies, settled groups."""
    counters = {"admitted": 0, "accepted": 0, "rejected": 0}
    for event in events:
        if event["e"] in ("issued", "reissued"):
            counters["admitted"] += 1
        elif event["e"] == "settled":
            counters["accepted" if event["accepted"] else "rejected"] += 1
    return counters


def resumed_gate(point: ResumePoint, gate: StalenessController) -> StalenessController:
    """``gate`` (built from the graph) rebuilt at the resume point with ``from_state``: the
    checkpoint's version, and the groups it holds as accepted."""
    state = {
        **gate.state_dict(),
        **point.counters,
        "version": point.version,
        "running": 0,
    }
    return StalenessController.from_state(state, held=point.held, version=point.version)


def resumed_plan(plan: RunPlan, point: ResumePoint, trainers: set[str]) -> RunPlan:
    """``plan`` with each replica's resume state: the checkpoint for the trainer (named in
    ``trainers``), the start state and skip list for sources that issued groups before."""
    replicas = []
    for replica in plan.replicas:
        update: dict[str, Any] = {}
        if replica.node in trainers:
            update["resume_state"] = {"checkpoint": str(point.checkpoint)}
        elif replica.key in point.sources:
            start = point.sources[replica.key]
            update = {"resume_state": start.state, "skip_groups": start.skip}
        replicas.append(replica.model_copy(update=update))
    return plan.model_copy(update={"replicas": replicas, "resume": True})
