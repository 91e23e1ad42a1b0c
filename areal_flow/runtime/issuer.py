"""A gated source's loop: admit, issue, issue lost groups again, end when all are settled.

Rules:
- Before each batch the staleness gate must admit the prompt groups it holds
  (``Source.next_groups``; the gate counts groups, the unit the trainer consumes). An empty
  draw, or one holding only groups a resumed run skips, gives them back (``cancel``); a batch
  holding other than announced is an error in the source.
- With the driver's ledger on (the graph has a trainer), the source tells the driver what it
  issues (group ids, trajectories, and the node's state before and after: a resumed run
  restarts from those states) *before* sending it, and keeps each group's prompt rows until
  the driver says the group is settled. Groups the driver declares lost (their replica died)
  are issued again first, from those rows.
- The stream ends only once the source is exhausted and all its groups are settled: a group
  lost after the end of the stream would have nobody left to issue it again.
- Every wait is bounded: admission answers time out (``ControlLink.admit``) and an exhausted
  source waiting for settlements wakes every ``LIVENESS_S``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from areal_flow.node import Output, Source
from areal_flow.runtime.link import ControlLink
from areal_flow.runtime.messages import Cancel, Issued
from areal_flow.spec import NodeSpec

IDLE_SOURCE_S = 0.01  # a source with nothing ready is asked again after this
LIVENESS_S = 1.0


class Issuer:
    """Runs one gated source replica; ``emit`` sends an output downstream."""

    def __init__(
        self,
        node: Source[NodeSpec],
        port: str,
        link: ControlLink,
        emit: Callable[[Output], Awaitable[None]],
        call: Callable[..., Awaitable[Any]],
        skip: Iterable[str] = (),
        ledger: bool = False,
    ) -> None:
        self.node = node
        self.port = port
        self.link = link
        self.emit = emit
        self.call = call  # runs a node method (timed, in a thread when it is sync)
        self.skip = set(skip)
        self.ledger = ledger
        self.kept: dict[str, pa.RecordBatch] = {}  # issued, not yet settled

    async def run(self) -> None:
        link = self.link
        while not link.draining.is_set():
            for group in link.take_settled():
                self.kept.pop(group, None)
            if link.reissue:
                batch = self.kept.get(link.reissue.popleft())
                if batch is not None:  # None: settled meanwhile by a copy that survived
                    if not await link.admit(len(group_sizes(batch))):
                        return
                    await self._issue(batch, batch)
            elif not self.node.exhausted:
                if not await self._next():
                    return
            elif not self.ledger or not self.kept:
                return
            else:
                link.ledger_changed.clear()
                waits = [
                    asyncio.ensure_future(e.wait()) for e in (link.ledger_changed, link.draining)
                ]
                await asyncio.wait(waits, timeout=LIVENESS_S, return_when=asyncio.FIRST_COMPLETED)
                for task in waits:
                    task.cancel()

    async def _next(self) -> bool:
        """Admit, draw and issue one batch; False when the run drains while waiting."""
        cost = self.node.next_groups()
        if not await self.link.admit(cost):
            return False
        before = self.node.state()
        out = await self.call(self.node.next_batch)
        batch = out if isinstance(out, pa.RecordBatch) or out is None else out.get(self.port)
        if batch is None:
            await self.link.send(Cancel(groups=cost))
            await asyncio.sleep(IDLE_SOURCE_S)
            return True
        if len(group_sizes(batch)) != cost:
            raise ValueError(
                f"{type(self.node).__name__}.next_groups() announced {cost} prompt groups but "
                f"the batch holds {len(group_sizes(batch))} (distinct group_id): make them agree"
            )
        wanted = self._unskipped(batch)
        if wanted.num_rows < batch.num_rows:
            await self.link.send(Cancel(groups=cost - len(group_sizes(wanted))))
            if not wanted.num_rows:
                return True
            out = wanted if isinstance(out, pa.RecordBatch) else {**out, self.port: wanted}
        await self._issue(wanted, out, before, self.node.state())
        return True

    def _unskipped(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if not self.skip:
            return batch
        skip = pa.array(sorted(self.skip), pa.string())
        return batch.filter(pc.invert(pc.is_in(batch.column("group_id"), value_set=skip)))

    async def _issue(
        self,
        batch: pa.RecordBatch,
        out: Output,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> None:
        if self.ledger:
            groups = group_sizes(batch)
            await self.link.send(Issued(groups=groups, before=before, after=after))
            for group in groups:
                self.kept[group] = batch.filter(pc.equal(batch.column("group_id"), group))
        await self.emit(out)


def group_sizes(batch: pa.RecordBatch) -> dict[str, int]:
    """Group id → trajectories, for a prompt batch (``group_size`` per row, else 1)."""
    groups = batch.column("group_id").to_pylist()
    if "group_size" in batch.schema.names:
        sizes = batch.column("group_size").to_pylist()
    else:
        sizes = [1] * len(groups)
    out: dict[str, int] = {}
    for group, size in zip(groups, sizes, strict=True):
        out[group] = out.get(group, 0) + int(size)
    return out


def group_rows(batch: pa.RecordBatch) -> dict[str, int]:
    """Group id → rows, for any batch with a ``group_id`` column."""
    out: dict[str, int] = {}
    for group in batch.column("group_id").to_pylist():
        out[group] = out.get(group, 0) + 1
    return out
