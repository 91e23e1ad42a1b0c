"""The producer end of an edge: one ``Sender`` per producer replica and edge.

Rules:
- One DEALER per consumer replica, so the producer chooses where each batch goes: to the
  replica with most credit (load balancing), and among replicas with equal credit to the one
  it sent to least recently (a consumer that takes batches at once always shows full credit,
  busy or not: without the rotation the first replica would get every batch). With no
  credit anywhere it waits (backpressure); it never sends without credit.
- Whenever a connection completes (socket monitor), the sender forgets the credit it had there
  and says ``hello`` first, so a restarted consumer starts clean. What the consumer sent on
  the connection that ended (credit above all) is discarded unread: a new consumer says
  nothing before the hello, and stale credit would send batches it must reject. Only an
  end-of-stream receipt on the old connection still counts.
- Sockets queue only to live connections (``IMMEDIATE``): a batch for a consumer that died is
  refused at once and goes to another replica or waits, never into a queue that a restarted
  consumer would receive before the hello (and reject).
- Nothing runs in the background: credit, acks and connection events are read, without
  blocking, each time ``send``/``send_eos`` runs; ``wake.Wakeup`` sleeps until one arrives.
  Waits wake at least every ``LIVENESS_S`` and have a deadline when the caller gives one.
- ``send_eos`` waits for every consumer's receipt, so closing afterwards with ``linger=0``
  loses nothing; one lock keeps concurrent ``send`` calls in order and off each other's credit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import pyarrow as pa
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from areal_flow.transport.codec import (
    BadMessage,
    carries,
    decode_header,
    encode_control,
    encode_data,
    schema_fingerprint,
)
from areal_flow.transport.curve import RunKeys, apply_client, check_address
from areal_flow.transport.wake import Wakeup, has_input, recv_frames, send_frames

log = logging.getLogger(__name__)
SAFETY_HWM = 10_000  # messages; credit keeps real queues far below this
LIVENESS_S = 1.0
EOS_TIMEOUT_S = 5.0


@dataclass
class _Peer:
    """One consumer replica as this producer sees it."""

    address: str
    socket: zmq.asyncio.Socket  # owned by the context (closed by ``destroy``), used to close
    monitor: zmq.asyncio.Socket  # connection events of ``socket``
    sync: zmq.Socket  # the same socket, for all non-blocking calls
    sync_monitor: zmq.Socket
    credit: int = 0
    last_sent: int = -1  # the sequence number of the newest batch sent to it
    greet: bool = False  # a connection completed and wants its hello
    connected: bool = False  # hello sent on the current connection
    eos_sent: bool = False  # on the current connection
    eos_acked: bool = False


class Sender:
    """The producer end of an edge for one replica, load-balancing over ``addresses``.

    ``keys`` (the run's CurveZMQ keys) make every connection a CurveZMQ client; without keys
    only loopback addresses are allowed.
    """

    def __init__(
        self,
        zctx: zmq.asyncio.Context,
        edge: str,
        schema: pa.Schema | None,
        producer: str,
        addresses: list[str],
        keys: RunKeys | None = None,
    ) -> None:
        for address in addresses:
            check_address(address, keys)
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
            socket.setsockopt(zmq.IMMEDIATE, 1)
            if keys is not None:
                apply_client(socket, keys)
            monitor = socket.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
            )
            socket.connect(address)
            sync: zmq.Socket = zmq.Socket.shadow(socket.underlying)
            sync_monitor: zmq.Socket = zmq.Socket.shadow(monitor.underlying)
            self.peers.append(_Peer(address, socket, monitor, sync, sync_monitor))
        self._wakeup = Wakeup([s for p in self.peers for s in (p.sync, p.sync_monitor)])
        self._lock = asyncio.Lock()
        self._seq = 0
        self.sent = 0
        self.sent_bytes = 0
        self.waits = 0
        self.waited_s = 0.0

    @property
    def credit(self) -> int:
        """Batches this producer may send now, over all consumer replicas."""
        return sum(p.credit for p in self.peers)

    async def send(
        self, batch: pa.RecordBatch, version: int = 0, timeout: float | None = None
    ) -> None:
        """Send ``batch`` to the replica with most credit; wait while none has any.

        Raises TimeoutError when no credit came within ``timeout`` seconds (None: wait on).
        """
        self._check_schema(batch)
        async with self._lock:
            frames = encode_data(batch, self.producer, self._seq, version)
            while True:
                peer = await self._acquire(timeout)
                try:
                    send_frames(peer.sync, frames, copy=False)
                    break
                except zmq.Again:  # its connection just went: its credit is void
                    peer.credit = 0
            peer.credit -= 1
            peer.last_sent = self._seq
            self._seq += 1
            self.sent += 1
            self.sent_bytes += len(frames[1])

    async def send_eos(self, timeout: float = EOS_TIMEOUT_S) -> list[str]:
        """Tell every consumer replica this producer is done, and wait for their receipts.

        A receipt means the eos and every batch before it arrived. Returns the addresses that
        did not confirm within ``timeout`` seconds (a consumer that is gone), after a warning.
        """
        deadline = time.monotonic() + timeout
        async with self._lock:
            while True:
                self._pump()
                for peer in self.peers:
                    if peer.connected and not (peer.eos_sent or peer.eos_acked):
                        eos = encode_control("eos", producer=self.producer)
                        peer.eos_sent = _send_now(peer.sync, eos)
                missing = [p.address for p in self.peers if not p.eos_acked]
                left = deadline - time.monotonic()
                if not missing or left <= 0:
                    break
                await self._wakeup.wait(min(left, LIVENESS_S))
        if missing:
            log.warning(
                "edge %s: %s got no end-of-stream receipt from %s in %.1f s",
                self.edge, self.producer, ", ".join(missing), timeout,
            )  # fmt: skip
        return missing

    def _check_schema(self, batch: pa.RecordBatch) -> None:
        if self.schema is None:
            return
        problems = carries(batch, schema_fingerprint(batch.schema), self.schema)
        if problems:
            raise ValueError(
                f"edge {self.edge}: {self.producer} tried to send a batch that does not carry the "
                f"port's record type: {'; '.join(problems)} (give output batches every field of "
                "the port's schema, areal_flow.schema.SCHEMAS; extra columns are fine)"
            )

    async def _acquire(self, timeout: float | None) -> _Peer:
        started = time.monotonic()
        waited = False
        while True:
            self._pump()
            best = max(self.peers, key=lambda p: (p.credit, -p.last_sent))
            if best.credit > 0:
                if waited:
                    self.waited_s += time.monotonic() - started
                return best
            if not waited:
                self.waits += 1
                waited = True
            left = LIVENESS_S if timeout is None else timeout - (time.monotonic() - started)
            if left <= 0:
                raise TimeoutError(
                    f"edge {self.edge}: {self.producer} got no credit from "
                    f"{', '.join(p.address for p in self.peers)} in {timeout} s "
                    "(the consumers are down or not taking batches)"
                )
            await self._wakeup.wait(min(left, LIVENESS_S))

    # -- reading what the consumers sent, without blocking ---------------------------------

    def _pump(self) -> None:
        for peer in self.peers:
            while has_input(peer.sync_monitor):
                self._on_event(peer, peer.sync_monitor.recv_multipart())
            if peer.greet:
                hello = encode_control("hello", producer=self.producer, edge=self.edge)
                if _send_now(peer.sync, hello):
                    peer.greet, peer.connected = False, True
            while has_input(peer.sync):
                self._on_control(peer, *recv_frames(peer.sync, keep=1))

    def _on_event(self, peer: _Peer, frames: list[bytes]) -> None:
        event = parse_monitor_message(frames)["event"]
        peer.credit = 0  # a new or lost connection: old credit is void either way
        peer.connected = peer.eos_sent = False
        peer.greet = event == zmq.EVENT_HANDSHAKE_SUCCEEDED
        # Left over from the old connection: its credit is void, but an end-of-stream receipt
        # still proves everything arrived (a consumer that acks and exits at once).
        while has_input(peer.sync):
            self._on_control(peer, *recv_frames(peer.sync, keep=1), stale=True)

    def _on_control(
        self, peer: _Peer, frames: list[zmq.Frame], count: int, stale: bool = False
    ) -> None:
        try:
            if count != 1:
                raise BadMessage("frame_count", f"{count} frames from a consumer")
            header = decode_header(frames[0].buffer)
            if header["kind"] == "credit" and header["n"] > 0:
                peer.credit += 0 if stale else header["n"]
            elif header["kind"] == "eos_ack":
                peer.eos_acked = True
            else:
                raise BadMessage("header_fields", f"a producer does not accept {header}")
        except BadMessage as err:
            log.warning("edge %s: bad message from %s: %s", self.edge, peer.address, err)

    def metrics(self) -> dict[str, float]:
        """Counters and gauges for this producer's end of the edge."""
        return {
            "sent": float(self.sent),
            "sent_bytes": float(self.sent_bytes),
            "credit": float(self.credit),
            "consumers_connected": float(sum(p.connected for p in self.peers)),
            "waits": float(self.waits),
            "waited_s": self.waited_s,
        }

    def close(self) -> None:
        self._wakeup.close()
        for peer in self.peers:
            peer.socket.disable_monitor()
            peer.monitor.close(linger=0)
            peer.socket.close(linger=0)


def _send_now(socket: zmq.Socket, frames: list[bytes]) -> bool:
    """Send a control message if the connection is up; False if it just went."""
    try:
        send_frames(socket, frames)
    except zmq.Again:
        return False
    return True
