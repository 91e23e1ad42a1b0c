"""The group ledger: where every prompt group is, so that a dying replica loses none of them.

Role: the driver's record of each prompt group a gated source admits, from its issue to its
settlement (every trajectory accepted by the trainer or rejected by a filter). It keeps the
staleness gate's counters per group, finds the groups that died with a replica, and appends
every event to ``ledger.jsonl`` in the run folder, which a resumed run (``resume.py``) and the
fault tests read.

Rules:
- A group is known by its ``group_id`` (unique per admission: dataset item and epoch). It
  counts in the gate (whose unit is the group) once, as one *counted copy*; the ledger follows
  the copy's trajectories one by one. Another copy of the same group
  (a re-issue racing a copy that was not lost after all) travels uncounted: the trainer drops
  trajectory ids it already holds, and whichever copy resolves the group first settles it.
- Location: replicas report the groups they take and send on. A group only moves forward (the
  topological rank of the node), so reports that arrive out of order never move it back.
- When a replica dies, its groups are declared lost: those it took, those it sent that may
  still sit in its send queue, and those its upstream nodes sent that may sit in its receive
  queue. Their capacity goes back to the gate and their source issues them again. In doubt a
  group is declared lost: a surviving copy is harmless (above), a lost group is not.
- A group is settled when all its counted trajectories are accepted or rejected; then the gate
  settles it as accepted (the trainer got at least one of them) or rejected (its capacity comes
  back). Its source is told, forgets the group, and ends its stream only once all its groups
  are settled.
- One JSON object per line, flushed at once: a killed driver loses no event.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import networkx as nx

from areal_flow.graph import resolved_edges
from areal_flow.runtime.messages import Accepted, Cancel, Issued, LedgerReport, Rejected, Sent, Took
from areal_flow.runtime.staleness import StalenessController

LEDGER_FILE = "ledger.jsonl"


@dataclass
class GroupRecord:
    """One prompt group as the driver knows it."""

    group: str
    source: str  # the source replica that issued it (and re-issues it)
    n: int  # trajectories of the counted copy
    state: str = "running"  # running | lost | settled (then only its id is kept)
    open: int = 0  # counted trajectories not yet accepted or rejected
    accepted: int = 0  # counted trajectories the trainer got
    at: str = ""  # replica key that last took or issued it
    node: str = ""  # that replica's node
    rank: int = 0  # that node's topological rank
    moving: bool = True  # ``at`` has sent it on; the next node has not taken it yet


class Ledger:
    """Every gated prompt group of one run, and the gate counts that follow from them."""

    def __init__(
        self,
        gate: StalenessController,
        ranks: Mapping[str, int],
        upstream: Mapping[str, set[str]],
        path: Path | None = None,
    ) -> None:
        self.gate = gate
        self.ranks = dict(ranks)
        self.upstream = {node: set(nodes) for node, nodes in upstream.items()}
        self.groups: dict[str, GroupRecord] = {}  # running or lost
        self.settled: set[str] = set()
        self.duplicates = 0  # trajectories of uncounted copies that reached a resolution
        self._file: IO[str] | None = path.open("a", buffering=1) if path is not None else None

    @classmethod
    def for_graph(cls, g: nx.MultiDiGraph, gate: StalenessController, path: Path) -> Ledger:
        """A ledger for graph ``g``: node ranks and upstream nodes along its data edges."""
        edges = [e for e in resolved_edges(g) if not e.weights]
        upstream: dict[str, set[str]] = {}
        for edge in edges:
            upstream.setdefault(edge.dst, set()).add(edge.src)
        data = nx.DiGraph([(e.src, e.dst) for e in edges])
        data.add_nodes_from(g.nodes)
        ranks = {node: len(nx.ancestors(data, node)) for node in data.nodes}
        return cls(gate, ranks, upstream, path)

    # -- events from replicas ------------------------------------------------------------

    def handle(self, replica: str, node: str, message: LedgerReport) -> dict[str, list[str]]:
        """Apply one report of ``replica``. Returns the groups it settled, per source replica
        (they are told)."""
        settled: list[GroupRecord] = []
        match message:
            case Issued():
                self.issued(replica, node, message.groups, message.before, message.after)
            case Took():
                self.took(replica, node, message.groups)
            case Sent():
                self.sent(replica, node, message.groups)
            case Cancel():
                self.gate.cancel(message.groups)
            case Accepted():
                settled = self.accepted(message.rows, message.versions)
            case Rejected():
                settled = self.rejected(message.groups)
        out: dict[str, list[str]] = {}
        for record in settled:
            out.setdefault(record.source, []).append(record.group)
        return out

    def issued(
        self,
        source: str,
        node: str,
        groups: Mapping[str, int],
        before: Any = None,
        after: Any = None,
    ) -> None:
        """``source`` admitted and is sending ``groups`` (group id → trajectories)."""
        for group, n in groups.items():
            record = self.groups.get(group)
            if group in self.settled or (record is not None and record.state != "lost"):
                self.gate.cancel(1)  # a second copy of a group already counted
                self.write("extra_copy", g=group, n=n, src=source)
                continue
            event = "issued" if record is None else "reissued"
            self.groups[group] = GroupRecord(
                group, source, n, open=n, at=source, node=node, rank=self.ranks.get(node, 0)
            )
            self.write(event, g=group, n=n, src=source, before=before, after=after)

    def took(self, replica: str, node: str, groups: Mapping[str, int]) -> None:
        self._move(replica, node, groups, moving=False)

    def sent(self, replica: str, node: str, groups: Mapping[str, int]) -> None:
        self._move(replica, node, groups, moving=True)

    def _move(self, replica: str, node: str, groups: Mapping[str, int], moving: bool) -> None:
        rank = self.ranks.get(node, 0)
        for group in groups:
            record = self.groups.get(group)
            if record is None or record.state != "running":
                continue
            # Same rank: a replica sending what it took; a take never undoes a send.
            if rank > record.rank or (rank == record.rank and (moving or not record.moving)):
                record.at, record.node, record.rank, record.moving = replica, node, rank, moving

    def accepted(
        self, rows: Sequence[str], versions: Sequence[int] | None = None
    ) -> list[GroupRecord]:
        """Trajectories of ``rows`` (one group id per trajectory) reached the trainer.
        Returns the groups this settled."""
        per_group: dict[str, list[int]] = {}
        for i, group in enumerate(rows):
            per_group.setdefault(group, []).append(i)
        settled = []
        for group, indices in per_group.items():
            counted = self._resolve(group, len(indices), accepted=True)
            if counted and versions is not None:
                self.gate.record_lags([versions[i] for i in indices[:counted]])
            self.write("accepted", g=group, rows=len(indices), counted=counted)
            settled += self._maybe_settle(group)
        return settled

    def rejected(self, groups: Mapping[str, int]) -> list[GroupRecord]:
        """Trajectories were dropped by a transform. Returns the groups this settled."""
        settled = []
        for group, rows in groups.items():
            counted = self._resolve(group, rows, accepted=False)
            self.write("rejected", g=group, rows=rows, counted=counted)
            settled += self._maybe_settle(group)
        return settled

    def _resolve(self, group: str, rows: int, *, accepted: bool) -> int:
        """How many of ``rows`` resolve the counted copy (the rest belong to another copy)."""
        record = self.groups.get(group)
        if record is None or record.state != "running":
            self.duplicates += rows
            return 0
        counted = min(rows, record.open)
        record.open -= counted
        if accepted:
            record.accepted += counted
        self.duplicates += rows - counted
        return counted

    def _maybe_settle(self, group: str) -> list[GroupRecord]:
        record = self.groups.get(group)
        if record is None or record.state != "running" or record.open > 0:
            return []
        record.state = "settled"
        self.gate.settle(accepted=record.accepted > 0)
        self.write("settled", g=group, accepted=record.accepted > 0)
        del self.groups[group]
        self.settled.add(group)
        return [record]

    # -- failures ------------------------------------------------------------------------

    def lose(self, replica: str, node: str, why: str) -> dict[str, list[str]]:
        """``replica`` (of ``node``) died: declare its groups lost and give their capacity
        back. Returns, per source replica, the groups it must issue again."""
        upstream = self.upstream.get(node, set())
        reissue: dict[str, list[str]] = {}
        for group, record in self.groups.items():
            if record.state != "running":
                continue
            if record.at == replica or (record.moving and record.node in upstream):
                self.gate.lose(1)
                self.write("lost", g=group, n=record.open, at=record.at, why=why)
                record.state, record.open = "lost", 0
                reissue.setdefault(record.source, []).append(group)
        return reissue

    # -- queries and the file ------------------------------------------------------------

    def unsettled(self) -> list[str]:
        return list(self.groups)

    def write(self, event: str, **fields: Any) -> None:
        if self._file is not None:
            line = {"e": event, "t": round(time.time(), 3), **fields}
            self._file.write(json.dumps(line, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_ledger(run_dir: Path) -> list[dict[str, Any]]:
    """Every event of a run folder's ledger, in order ([] without one). A last line cut short
    by a crash is ignored."""
    path = Path(run_dir) / LEDGER_FILE
    if not path.is_file():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events
