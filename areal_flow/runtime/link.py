"""A replica's side of the control plane: a DEALER socket to the driver.

Rules:
- One reader task dispatches everything the driver sends: start/stop/drain events, policy
  version updates (written into the node context), and replies to admission requests.
- ``admit(n)`` asks the driver's staleness gate for n prompt groups and waits for the answer;
  a denied request is retried when the driver reports new capacity or after a short timeout,
  until granted or the run drains. An answer that does not come within ``ADMIT_REPLY_S`` is
  asked for again (never an endless wait).
- The driver pings every replica; ``heard_s`` says how long it has been silent, so a replica
  whose driver died stops instead of waiting forever.
- A gated source gets ``reissue`` (groups lost with a replica) and ``settled`` (groups done)
  messages; they are queued here until its loop takes them.
- With the run's CurveZMQ keys (``RunPlan.curve``) the DEALER is a Curve client of the driver's
  ROUTER; without them it refuses an address off loopback.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable

import zmq
import zmq.asyncio

from areal_flow.runtime.messages import (
    Admit,
    AdmitReply,
    Cancel,
    Capacity,
    Drain,
    NewVersion,
    Ping,
    Reissue,
    Settled,
    Start,
    Stop,
    WorkerMessage,
    encode,
    from_driver,
)
from areal_flow.transport.curve import RunKeys, apply_client, check_address

RETRY_ADMIT_S = 0.5
ADMIT_REPLY_S = 5.0


class ControlLink:
    """Talks to the driver for one replica."""

    def __init__(
        self,
        zctx: zmq.asyncio.Context,
        address: str,
        identity: bytes,
        on_version: Callable[[int], None],
        keys: RunKeys | None = None,
    ) -> None:
        check_address(address, keys)
        self.socket = zctx.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.IDENTITY, identity)
        self.socket.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            apply_client(self.socket, keys)
        self.socket.connect(address)
        self.started = asyncio.Event()
        self.stopping = asyncio.Event()
        self.draining = asyncio.Event()
        self.capacity_changed = asyncio.Event()
        self.ledger_changed = asyncio.Event()  # a reissue or settled message came
        self.start: Start | None = None  # the driver's start message, once it came
        self.reissue: deque[str] = deque()
        self.settled: set[str] = set()
        self.heard = time.monotonic()
        self._on_version = on_version
        self._replies: dict[int, asyncio.Future[bool]] = {}
        self._abandoned: dict[int, int] = {}  # requests that timed out → groups asked
        self._ids = itertools.count()
        self._reader: asyncio.Task[None] | None = None

    def start_reading(self) -> None:
        self._reader = asyncio.create_task(self._read(), name="control-reader")

    async def send(self, message: WorkerMessage) -> None:
        await self.socket.send(encode(message))

    async def _read(self) -> None:
        while True:
            message = from_driver(await self.socket.recv())
            self.heard = time.monotonic()
            match message:
                case Start():
                    self.start = message
                    self._on_version(message.version)
                    self.started.set()
                case Stop():
                    self.stopping.set()
                    self.draining.set()
                case Drain():
                    self.draining.set()
                case NewVersion():
                    self._on_version(message.version)
                    self.capacity_changed.set()
                case Capacity():
                    self.capacity_changed.set()
                case Reissue():
                    self.reissue.extend(message.groups)
                    self.ledger_changed.set()
                case Settled():
                    self.settled.update(message.groups)
                    self.ledger_changed.set()
                case AdmitReply():
                    await self._answered(message)
                case Ping():
                    pass  # only ``heard``

    async def _answered(self, reply: AdmitReply) -> None:
        future = self._replies.pop(reply.id, None)
        if future is not None and not future.done():
            future.set_result(reply.granted)
        elif reply.id in self._abandoned:
            n = self._abandoned.pop(reply.id)
            if reply.granted:
                await self.send(Cancel(groups=n))

    async def admit(self, n: int) -> bool:
        """Wait until the gate admits ``n`` prompt groups (True) or the run drains (False)."""
        while not self.draining.is_set():
            request = next(self._ids)
            future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._replies[request] = future
            self.capacity_changed.clear()
            await self.send(Admit(id=request, groups=n))
            try:
                if await asyncio.wait_for(future, ADMIT_REPLY_S):
                    return True
            except asyncio.TimeoutError:
                self._replies.pop(request, None)
                self._abandoned[request] = n  # a late grant is given back
                continue
            waiters = [
                asyncio.create_task(self.capacity_changed.wait()),
                asyncio.create_task(self.draining.wait()),
            ]
            _, pending = await asyncio.wait(
                waiters, timeout=RETRY_ADMIT_S, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()
        return False

    @property
    def heard_s(self) -> float:
        """Seconds since the driver last sent anything (it pings every replica)."""
        return time.monotonic() - self.heard

    def take_settled(self) -> set[str]:
        settled, self.settled = self.settled, set()
        return settled

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        self.socket.close(linger=0)
