"""The consumer end of an edge: one ``Receiver`` per consumer replica, a ROUTER it binds.

Rules:
- Credit is one pool per receiver: batches granted-but-not-arrived plus batches
  received-but-not-taken never exceed it, however many producers connect. The pool is the
  edge's ``capacity``, raised to the number of producer replicas the edge has when they are
  more: every producer then holds at least one credit, idle or not. (A smaller pool deadlocks
  a gated graph: the credit sits with producers that have nothing to send — generators whose
  groups are still running — while the batches the consumer waits for are at producers with
  none, and the staleness gate admits nothing new until they arrive.) Each producer holds at
  most its fair share (pool / producers). A batch frees its slot when ``recv`` hands it out;
  credit goes back in groups of half a share to save messages. No deadlock: a producer that
  waits has nothing in flight, so its share frees up as the consumer takes batches.
- A producer is known once it said ``hello`` on its connection; a second hello under the same
  name (a reconnect or a restart) replaces the first, whose unused credit returns to the pool.
- Messages are read eagerly, without blocking, whenever ``recv`` runs; end-of-stream is
  acknowledged at once (the ack proves every earlier batch arrived).
- Closing after an ack waits (at most ``RECEIPT_LINGER_MS``) until the producers hang up: a
  sender's socket queues only to live connections (``IMMEDIATE``), and ZeroMQ drops what such
  a socket received but had not read when the connection goes, so an ack followed at once by
  a close could be lost and leave the producer waiting for its receipt.
- Every rejected message — malformed, wrong schema, unknown sender, beyond credit — is counted
  by reason, the first few are logged, and the receiver carries on.
- All socket calls are non-blocking calls on a plain (sync) shadow of the socket; waiting is
  ``wake.Wakeup``'s job (cheaper than ``zmq.asyncio`` futures).
"""

from __future__ import annotations

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
)
from areal_flow.transport.curve import RunKeys, apply_server, check_address
from areal_flow.transport.wake import Wakeup, has_input, recv_frames, send_frames

log = logging.getLogger(__name__)
SAFETY_HWM = 10_000  # messages; credit keeps real queues far below this
MAX_FRAME_BYTES = 2**31 - 1
LOGGED_REJECTIONS = 5  # log the first few rejections per receiver, count all
RECEIPT_LINGER_MS = 500  # closing after an ack waits at most this long for producers to go
_CONNECTION_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
WAIT_SLICE_S = 1.0  # an endless recv still wakes this often


@dataclass(frozen=True)
class EndOfStream:
    """A producer said it will send nothing more."""

    producer: str


@dataclass
class _Producer:
    name: str
    outstanding: int = 0  # credits sent whose batch has not arrived
    unsent: int = 0  # credits reserved for it, not yet sent (grouped to save messages)
    ended: bool = False


class Receiver:
    """The consumer end of an edge for one replica.

    ``bind`` is a ZeroMQ address (port 0 picks a free port; ``address`` says which).
    ``producers`` is how many producer replicas the edge has; it sets the fair share before
    they have all said hello. ``schema`` None accepts any schema (generic test nodes).
    ``keys`` (the run's CurveZMQ keys) make it a CurveZMQ server admitting only the run's
    clients; without keys only a loopback ``bind`` is allowed.
    """

    def __init__(
        self,
        zctx: zmq.asyncio.Context,
        edge: str,
        schema: pa.Schema | None,
        capacity: int,
        bind: str = "tcp://127.0.0.1:0",
        producers: int = 1,
        keys: RunKeys | None = None,
    ) -> None:
        check_address(bind, keys)
        if capacity < 1:
            raise ValueError(f"edge {edge}: capacity must be at least 1, got {capacity}")
        self.edge = edge
        self.schema = schema
        self.expected_producers = max(1, producers)
        self.capacity = max(capacity, self.expected_producers)  # a credit for every producer
        self.socket = zctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, SAFETY_HWM)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        if keys is not None:
            apply_server(self.socket, keys)
        self.socket.bind(bind)
        self._sync: zmq.Socket = zmq.Socket.shadow(self.socket.underlying)
        self._wakeup = Wakeup([self._sync])
        self._monitor = self.socket.get_monitor_socket(_CONNECTION_EVENTS)
        self._acked = False  # an end-of-stream receipt went out: closing waits for the hang-up
        self.address: str = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._producers: dict[bytes, _Producer] = {}
        self._ended: set[str] = set()
        self._queue: deque[Message | EndOfStream] = deque()
        self._queued = 0  # data messages in the queue
        self.rejected: Counter[str] = Counter()
        self.last_rejection: BadMessage | None = None
        self.received = 0
        self.received_bytes = 0
        self._dirty = False  # a slot or a producer changed: credit may be due

    @property
    def depth(self) -> int:
        """Batches received and not yet taken."""
        return self._queued

    @property
    def in_flight(self) -> int:
        """Credits granted whose batch has not arrived (in flight or not yet used)."""
        return sum(p.outstanding for p in self._producers.values())

    async def recv(self, timeout: float | None = None) -> Message | EndOfStream | None:
        """The next batch or end-of-stream; None if nothing came within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._drain()
            if self._queue:
                break
            left = WAIT_SLICE_S if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return None
            await self._wakeup.wait(min(left, WAIT_SLICE_S))
        item = self._queue.popleft()
        if isinstance(item, Message):
            self._queued -= 1
            self._dirty = True
            self._top_up()
        return item

    def _drain(self) -> None:
        """Handle every message already waiting, without blocking."""
        while has_input(self._sync):
            self._handle(*recv_frames(self._sync, keep=3))  # identity, header, body
        if self._dirty:
            self._top_up()

    def _handle(self, frames: list[Any], count: int) -> None:
        identity = frames[0].bytes
        try:
            if count not in (2, 3):
                raise BadMessage("frame_count", f"{count - 1} frames")
            header = decode_header(frames[1].buffer)
            if header["kind"] == "hello":
                self._hello(identity, header)
                return
            producer = self._producers.get(identity)
            if producer is None:
                raise BadMessage("unknown_sender", "no hello from this connection")
            if header["kind"] == "eos":
                self._eos(identity, producer)
            elif header["kind"] == "data":
                self._data(producer, header, frames)
            else:
                raise BadMessage("header_fields", f"a consumer does not accept {header['kind']!r}")
        except BadMessage as err:
            self._reject(err)

    def _hello(self, identity: bytes, header: dict[str, Any]) -> None:
        if header["edge"] != self.edge:
            raise BadMessage(
                "wrong_edge", f"{header['producer']} is wired to {header['edge']!r}, not here"
            )
        # A reconnect or a restart: the old connection's credit can never be used again.
        for old in [i for i, p in self._producers.items() if p.name == header["producer"]]:
            del self._producers[old]
        self._producers[identity] = _Producer(header["producer"])
        self._dirty = True

    def _eos(self, identity: bytes, producer: _Producer) -> None:
        producer.ended = True
        producer.outstanding = producer.unsent = 0
        self._dirty = True
        if producer.name not in self._ended:  # a resent eos (after a reconnect) counts once
            self._ended.add(producer.name)
            self._queue.append(EndOfStream(producer.name))
        send_frames(self._sync, [identity, *encode_control("eos_ack")])
        self._acked = True

    def _data(self, producer: _Producer, header: dict[str, Any], frames: list[Any]) -> None:
        if producer.ended:
            raise BadMessage("after_eos", f"{producer.name} sent data after end-of-stream")
        if producer.outstanding <= 0:
            raise BadMessage("no_credit", f"{producer.name} sent without credit")
        producer.outstanding -= 1  # spent even if the message is bad; the slot is free again
        if len(frames) != 3:
            raise BadMessage("frame_count", "data message without a body")
        if header["producer"] != producer.name:
            raise BadMessage(
                "header_fields", f"{producer.name} sent data labelled {header['producer']!r}"
            )
        body = frames[2].buffer
        self._queue.append(decode_data(header, body, self.schema, self.edge))
        self._queued += 1
        self.received += 1
        self.received_bytes += len(body)

    def _reject(self, err: BadMessage) -> None:
        self.rejected[err.reason] += 1
        self._dirty = True  # a bad data message still freed its slot
        self.last_rejection = err
        if self.rejected.total() <= LOGGED_REJECTIONS:
            log.warning("edge %s: rejected a message: %s", self.edge, err)

    def _top_up(self) -> None:
        """Hand free slots to the producers with least credit, up to a fair share each."""
        active = [(i, p) for i, p in self._producers.items() if not p.ended]
        if not active:
            return
        share = max(1, self.capacity // max(self.expected_producers, len(active)))
        free = self.capacity - self._queued - sum(p.outstanding + p.unsent for _, p in active)
        while free > 0:
            _, poorest = min(active, key=lambda item: item[1].outstanding + item[1].unsent)
            if poorest.outstanding + poorest.unsent >= share:
                break
            poorest.unsent += 1
            free -= 1
        self._dirty = False
        group = max(1, share // 2)
        for identity, p in active:
            if p.unsent >= group:
                n, p.unsent = p.unsent, 0
                p.outstanding += n
                send_frames(self._sync, [identity, *encode_control("credit", n=n)])

    def metrics(self) -> dict[str, float]:
        """Counters and gauges for this replica's end of the edge."""
        return {
            "received": float(self.received),
            "received_bytes": float(self.received_bytes),
            "depth": float(self.depth),
            "in_flight": float(self.in_flight),
            "producers": float(sum(not p.ended for p in self._producers.values())),
            "producers_ended": float(len(self._ended)),
            "rejected": float(self.rejected.total()),
            **{f"rejected_{reason}": float(n) for reason, n in self.rejected.items()},
        }

    def close(self) -> None:
        """Close the socket; after an end-of-stream receipt, first let the producers hang up."""
        self._wakeup.close()
        if self._acked:
            self._await_hang_ups(time.monotonic() + RECEIPT_LINGER_MS / 1000)
        self.socket.disable_monitor()
        self._monitor.close(linger=0)
        self.socket.close(linger=RECEIPT_LINGER_MS)

    def _await_hang_ups(self, deadline: float) -> None:
        """Block until every connection accepted so far has ended, or until ``deadline``."""
        monitor: zmq.Socket = zmq.Socket.shadow(self._monitor.underlying)
        open_connections = 0
        while True:
            while monitor.poll(0):
                event = parse_monitor_message(monitor.recv_multipart())["event"]
                open_connections += 1 if event == zmq.EVENT_ACCEPTED else -1
            left = deadline - time.monotonic()
            if open_connections <= 0 or left <= 0:
                return
            monitor.poll(int(left * 1000) + 1)
