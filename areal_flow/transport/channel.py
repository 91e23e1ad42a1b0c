"""ZeroMQ channels with credit-based flow control: one ``Receiver`` per consumer replica,
one ``Sender`` per producer replica and edge.

Rules:
- The consumer binds a ROUTER; each producer connects one DEALER per consumer replica (so it
  can choose where each batch goes). No PUB/SUB anywhere: nothing is ever dropped silently.
- Handshake: when a DEALER's connection comes up (socket monitor), the producer says ``hello``
  and forgets any credit it had there; the consumer answers with a window of
  ``max(1, capacity // producers)`` credits. A restarted consumer therefore starts clean.
- A producer sends only with credit: at most ``window`` batches are ever outstanding toward one
  consumer replica. Each batch the consumer *takes* (``recv`` returns it) returns one credit to
  its producer (sent in batches of half a window). ``send`` picks the replica with most
  credit (load balancing) and waits when no replica has any (backpressure).
- The receiver reads eagerly into a local queue (bounded by the credits it granted) and counts
  every message it rejects by reason — malformed frames, wrong schema, unknown senders — and
  keeps working. ``EndOfStream`` marks a producer that is done.
- ``linger=0`` everywhere; high-water marks are only a safety net above the credit window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from areal_flow.transport.codec import (
    BadMessage,
    Message,
    decode_data,
    decode_header,
    encode_control,
    encode_data,
)

log = logging.getLogger(__name__)
SAFETY_HWM = 10_000
MAX_FRAME_BYTES = 2**31 - 1
LOGGED_REJECTIONS = 5  # log the first few rejections per receiver, count all


@dataclass(frozen=True)
class EndOfStream:
    """A producer said it will send nothing more."""

    producer: str


@dataclass
class _Producer:
    name: str
    outstanding: int = 0  # credits granted and not yet returned by a taken batch
    returned: int = 0  # batches taken whose credit is not yet sent back


class Receiver:
    """The consumer end of an edge for one replica."""

    def __init__(
        self,
        zctx: zmq.asyncio.Context,
        edge: str,
        schema: pa.Schema | None,
        capacity: int,
        bind: str = "tcp://127.0.0.1:0",
        producers: int = 1,
    ) -> None:
        self.edge = edge
        self.schema = schema
        self.window = max(1, capacity // max(1, producers))
        self.socket = zctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, SAFETY_HWM)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        self.socket.bind(bind)
        self.address: str = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._producers: dict[bytes, _Producer] = {}
        self._queue: deque[tuple[bytes, Message | EndOfStream]] = deque()
        self._pending_grants: list[tuple[bytes, int]] = []  # decided while parsing, sent after
        self.rejected: Counter[str] = Counter()
        self.received = 0

    @property
    def depth(self) -> int:
        """Batches received and not yet taken."""
        return sum(1 for _, item in self._queue if isinstance(item, Message))

    async def recv(self, timeout: float | None = None) -> Message | EndOfStream | None:
        """The next batch or end-of-stream; None if nothing came within ``timeout`` seconds."""
        if not self._queue:
            await self._drain()  # cheap when messages are waiting: no poll, no future
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._queue:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not await self.socket.poll(None if left is None else int(left * 1000)):
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            await self._drain()
        identity, item = self._queue.popleft()
        if isinstance(item, Message):
            await self._give_back(identity)
        return item

    async def _give_back(self, identity: bytes) -> None:
        """Return a taken batch's credit; in batches of half a window to save messages.

        A producer blocks only with its whole window outstanding, and then the consumer holds
        (or has taken) all of it, so the half-window batch is always reached: no deadlock.
        """
        producer = self._producers.get(identity)
        if producer is None:
            return
        producer.returned += 1
        if producer.returned >= max(1, self.window // 2):
            n, producer.returned = producer.returned, 0
            await self._grant(identity, n)

    async def _drain(self) -> None:
        while True:
            try:
                frames = await self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._handle(frames)
            await self._flush_grants()

    def _handle(self, frames: list[Any]) -> None:
        identity = frames[0].bytes
        try:
            if len(frames) not in (2, 3):
                raise BadMessage("frame_count", f"{len(frames) - 1} frames")
            header = decode_header(frames[1].buffer)
            kind = header["kind"]
            if kind == "hello":
                self._producers[identity] = _Producer(header["producer"])
                self._pending_grants.append((identity, self.window))
                return
            producer = self._producers.get(identity)
            if producer is None:
                raise BadMessage("unknown_sender", "no hello from this connection")
            if kind == "eos":
                self._queue.append((identity, EndOfStream(producer.name)))
            elif kind == "data":
                if len(frames) != 3:
                    raise BadMessage("frame_count", "data message without a body")
                producer.outstanding -= 1
                try:
                    message = decode_data(header, frames[2].buffer, self.schema, self.edge)
                except BadMessage:
                    self._pending_grants.append((identity, 1))  # the slot is free again
                    raise
                self.received += 1
                self._queue.append((identity, message))
            else:
                raise BadMessage("header_fields", f"a consumer does not accept {kind!r}")
        except BadMessage as err:
            self.rejected[err.reason] += 1
            if sum(self.rejected.values()) <= LOGGED_REJECTIONS:
                log.warning("edge %s: rejected a message: %s", self.edge, err)

    async def _flush_grants(self) -> None:
        grants, self._pending_grants = self._pending_grants, []
        for identity, n in grants:
            await self._grant(identity, n)

    async def _grant(self, identity: bytes, n: int) -> None:
        producer = self._producers.get(identity)
        if producer is None:
            return
        producer.outstanding += n
        await self.socket.send_multipart([identity, *encode_control("credit", n=n)])

    def metrics(self) -> dict[str, float]:
        return {
            "received": float(self.received),
            "depth": float(self.depth),
            **{f"rejected_{reason}": float(n) for reason, n in self.rejected.items()},
        }

    def close(self) -> None:
        self.socket.close(linger=0)


@dataclass
class _Peer:
    address: str
    socket: zmq.asyncio.Socket
    monitor: zmq.asyncio.Socket
    credit: int = 0


class Sender:
    """The producer end of an edge for one replica: one DEALER per consumer replica."""

    def __init__(
        self,
        zctx: zmq.asyncio.Context,
        edge: str,
        schema: pa.Schema | None,
        producer: str,
        addresses: list[str],
    ) -> None:
        if not addresses:
            raise ValueError(f"edge {edge}: a sender needs at least one consumer address")
        self.edge = edge
        self.schema = schema
        self.producer = producer
        self.peers: list[_Peer] = []
        for address in addresses:
            socket = zctx.socket(zmq.DEALER)
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.SNDHWM, SAFETY_HWM)
            socket.setsockopt(zmq.IMMEDIATE, 1)  # queue only on live connections
            monitor = socket.get_monitor_socket(zmq.EVENT_CONNECTED)
            socket.connect(address)
            self.peers.append(_Peer(address, socket, monitor))
        self._seq = 0
        self._credit = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self.sent = 0
        self.waited_s = 0.0

    def _ensure_reader(self) -> None:
        if self._reader is None:
            self._reader = asyncio.create_task(self._read(), name=f"credits {self.edge}")

    async def _read(self) -> None:
        poller = zmq.asyncio.Poller()
        owners: dict[Any, tuple[_Peer, bool]] = {}
        for peer in self.peers:
            poller.register(peer.socket, zmq.POLLIN)
            poller.register(peer.monitor, zmq.POLLIN)
            owners[peer.socket] = (peer, False)
            owners[peer.monitor] = (peer, True)
        while True:
            for socket, _ in await poller.poll():
                peer, is_monitor = owners[socket]
                if is_monitor:
                    event = parse_monitor_message(await peer.monitor.recv_multipart())
                    if event["event"] == zmq.EVENT_CONNECTED:
                        peer.credit = 0  # a (re)started consumer grants afresh
                        await peer.socket.send_multipart(
                            encode_control("hello", producer=self.producer)
                        )
                    continue
                frames = await peer.socket.recv_multipart()
                try:
                    header = decode_header(frames[0])
                except BadMessage as err:
                    log.warning(
                        "edge %s: bad control message from %s: %s", self.edge, peer.address, err
                    )
                    continue
                if header["kind"] == "credit":
                    peer.credit += header["n"]
                    self._credit.set()

    async def send(
        self, batch: pa.RecordBatch, version: int = 0, timeout: float | None = None
    ) -> None:
        """Send ``batch`` to the replica with most credit; wait while none has any."""
        if self.schema is not None and not batch.schema.equals(self.schema):
            raise ValueError(
                f"edge {self.edge}: {self.producer} tried to send a batch whose schema is not "
                "the port's record type"
            )
        self._ensure_reader()
        peer = await self._acquire(timeout)
        frames = encode_data(batch, self.producer, self._seq, version)
        self._seq += 1
        peer.credit -= 1
        await peer.socket.send_multipart(frames, copy=False)
        self.sent += 1

    async def _acquire(self, timeout: float | None) -> _Peer:
        started = time.monotonic()
        while True:
            best = max(self.peers, key=lambda p: p.credit)
            if best.credit > 0:
                self.waited_s += time.monotonic() - started
                return best
            self._credit.clear()
            left = None if timeout is None else timeout - (time.monotonic() - started)
            if left is not None and left <= 0:
                raise TimeoutError(f"edge {self.edge}: no credit from any consumer in {timeout} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._credit.wait(), left)

    @property
    def credit(self) -> int:
        return sum(p.credit for p in self.peers)

    async def send_eos(self) -> None:
        """Tell every consumer replica this producer is done (needs no credit)."""
        for peer in self.peers:
            await peer.socket.send_multipart(encode_control("eos", producer=self.producer))

    def metrics(self) -> dict[str, float]:
        return {"sent": float(self.sent), "credit": float(self.credit), "waited_s": self.waited_s}

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        for peer in self.peers:
            peer.socket.disable_monitor()
            peer.monitor.close(linger=0)
            peer.socket.close(linger=0)
