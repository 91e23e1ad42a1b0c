"""A replica's data ports: receivers on its input edges, senders on its output edges.

Rules:
- The inbox hands out one batch at a time and only when the node asks, so credit (and with it
  backpressure) follows the node's real pace. It ends when every producer replica of every
  data edge has sent end-of-stream.
- Weight edges are read by their own task and delivered through ``on_weights``; they never end
  the data stream.
- The outbox sends each output to every edge leaving that port: one sender load-balancing over
  the consumer replicas for data edges, one sender per replica for weight edges (broadcast).
- ``keys`` (the run's CurveZMQ keys, ``areal_flow.transport.curve``) are passed to every
  socket; a run placed on several hosts must pass them, since its addresses are not loopback.
- ``Inbox.metrics`` reports each input edge's depth, arrivals and rejected messages by reason
  (``edge.<i>.rejected_<reason>``), so garbage on a data port shows in the node's metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pyarrow as pa
import zmq.asyncio

from areal_flow.runtime.plan import Wire
from areal_flow.schema import schema_for
from areal_flow.transport import EndOfStream, Receiver, Sender
from areal_flow.transport.curve import RunKeys

RECV_POLL_S = 1.0  # receivers wake this often so a stop is noticed


@dataclass
class Received:
    wire: Wire
    batch: pa.RecordBatch
    producer: str
    version: int


class Inbox:
    """Receivers for every input edge of one replica."""

    def __init__(
        self,
        zctx: zmq.asyncio.Context,
        wires: list[Wire],
        node: str,
        keys: RunKeys | None = None,
    ) -> None:
        self.wires = wires
        self.receivers = {
            w.edge: Receiver(
                zctx,
                edge=w.label,
                schema=schema_for(w.record),
                capacity=w.capacity,
                bind=w.addresses[0],
                producers=w.producers,
                keys=keys,
            )
            for w in wires
        }
        self._ended: dict[int, int] = {w.edge: 0 for w in wires}
        self.node = node

    @property
    def data_wires(self) -> list[Wire]:
        return [w for w in self.wires if not w.weights]

    @property
    def weight_wires(self) -> list[Wire]:
        return [w for w in self.wires if w.weights]

    def assume_ended(self, edge: int, producers: int) -> None:
        """``producers`` replicas feeding ``edge`` finished before this replica (re)started:
        their end-of-stream went to a predecessor, so count it here."""
        if edge in self._ended:
            self._ended[edge] = max(self._ended[edge], producers)

    def _open(self, wire: Wire) -> bool:
        return self._ended[wire.edge] < max(wire.producers, 1)

    async def stream(self, wires: list[Wire]) -> AsyncIterator[Received]:
        """Batches from ``wires`` as they come, until all their producers ended."""
        pending: dict[asyncio.Task[object], Wire] = {}
        for wire in wires:
            if self._open(wire):
                pending[asyncio.create_task(self._next(wire))] = wire
        try:
            while pending:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    wire = pending.pop(task)
                    item = task.result()
                    if isinstance(item, EndOfStream):
                        self._ended[wire.edge] += 1
                    elif isinstance(item, Received):
                        yield item
                    if self._open(wire):
                        pending[asyncio.create_task(self._next(wire))] = wire
        finally:
            for task in pending:
                task.cancel()

    async def _next(self, wire: Wire) -> object:
        receiver = self.receivers[wire.edge]
        while True:
            message = await receiver.recv(timeout=RECV_POLL_S)
            if message is None:
                continue
            if isinstance(message, EndOfStream):
                return message
            return Received(wire, message.batch, message.producer, message.version)

    def depths(self) -> dict[str, float]:
        return {
            f"edge.{edge}.depth": float(receiver.depth) for edge, receiver in self.receivers.items()
        }

    def metrics(self) -> dict[str, float]:
        """Per input edge: depth, batches received, rejected messages (total and by reason)."""
        wanted = ("depth", "received", "rejected")
        return {
            f"edge.{edge}.{name}": value
            for edge, receiver in self.receivers.items()
            for name, value in receiver.metrics().items()
            if name in wanted or name.startswith("rejected_")
        }

    def close(self) -> None:
        for receiver in self.receivers.values():
            receiver.close()


class Outbox:
    """Senders for every output edge of one replica."""

    def __init__(
        self,
        zctx: zmq.asyncio.Context,
        wires: list[Wire],
        producer: str,
        keys: RunKeys | None = None,
    ) -> None:
        self.wires = wires
        self.senders: dict[str, list[Sender]] = {}
        for wire in wires:
            groups = [[a] for a in wire.addresses] if wire.weights else [wire.addresses]
            for addresses in groups:
                sender = Sender(
                    zctx,
                    edge=wire.label,
                    schema=schema_for(wire.record),
                    producer=producer,
                    addresses=addresses,
                    keys=keys,
                )
                self.senders.setdefault(wire.port, []).append(sender)
        self.ports = sorted({w.port for w in wires})

    async def emit(
        self, output: pa.RecordBatch | dict[str, pa.RecordBatch] | None, version: int
    ) -> list[tuple[str, pa.RecordBatch]]:
        """Send ``output``; returns what was sent as (port, batch)."""
        if output is None:
            return []
        if isinstance(output, pa.RecordBatch):
            if len(self.ports) != 1:
                raise ValueError(
                    f"node has output ports {self.ports}; return {{port: batch}} to pick one"
                )
            output = {self.ports[0]: output}
        sent = []
        for port, batch in output.items():
            if port not in self.senders:
                raise ValueError(f"no edge leaves output port {port!r} (ports: {self.ports})")
            if batch.num_rows == 0:
                continue
            await asyncio.gather(*(s.send(batch, version=version) for s in self.senders[port]))
            sent.append((port, batch))
        return sent

    async def end(self) -> None:
        """Tell every consumer this producer is done."""
        await asyncio.gather(*(s.send_eos() for group in self.senders.values() for s in group))

    def close(self) -> None:
        for group in self.senders.values():
            for sender in group:
                sender.close()
