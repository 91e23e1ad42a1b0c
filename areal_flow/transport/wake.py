"""Non-blocking socket calls and waiting in asyncio until one of some ZeroMQ sockets has input.

Rules:
- The channels do all socket I/O with plain non-blocking calls and use ``Wakeup`` only to
  sleep: the event loop watches each socket's file descriptor (one reader each, for the
  object's life), which costs far less per wake-up than ``zmq.asyncio``'s futures.
- ZeroMQ's descriptor only says "look at ``EVENTS``"; reading ``EVENTS`` clears it. The
  callback therefore reads ``EVENTS`` every time, so a busy consumer never makes the loop spin,
  and ``wait`` looks at every socket before it sleeps, so no message is slept through.
- The helpers pass plain integers, not pyzmq's enums, and skip ``send_multipart`` /
  ``recv_multipart``: on a 64-byte message those wrappers cost more than the socket call.
- Every wait has a timeout; ``close`` must run before the sockets close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final, cast

import zmq

_EVENTS: Final = int(zmq.EVENTS)
_POLLIN: Final = int(zmq.POLLIN)
NOBLOCK: Final = int(zmq.NOBLOCK)
_SNDMORE: Final = int(zmq.SNDMORE)


def has_input(socket: zmq.Socket) -> bool:
    """Whether a message waits; also clears the socket's descriptor. Cheaper than a poller."""
    return bool(cast(int, socket.get(_EVENTS)) & _POLLIN)


def recv_frames(socket: zmq.Socket, keep: int) -> tuple[list[zmq.Frame], int]:
    """One whole multipart message, without blocking: its first ``keep`` frames (zero-copy)
    and how many frames it had. Frames past ``keep`` are read and dropped, so a sender of
    endless frames cannot make the receiver hold them."""
    frame = cast(zmq.Frame, socket.recv(NOBLOCK, copy=False))
    frames = [frame]
    count = 1
    while frame.more:
        frame = cast(zmq.Frame, socket.recv(NOBLOCK, copy=False))
        count += 1
        if count <= keep:
            frames.append(frame)
    return frames, count


def send_frames(socket: zmq.Socket, frames: Sequence[Any], copy: bool = True) -> None:
    """One multipart message, without blocking (pyzmq copies frames under 64 KiB anyway)."""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        socket.send(frame, NOBLOCK | _SNDMORE if i < last else NOBLOCK, copy=copy)


def _fd(socket: zmq.Socket) -> int:
    return cast(int, socket.get(zmq.FD))


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Wakeup:
    """Sleeps until any of ``sockets`` is readable or a timeout passes."""

    def __init__(self, sockets: list[zmq.Socket]) -> None:
        self.sockets = sockets
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None

    def _watch(self) -> asyncio.AbstractEventLoop:
        loop = self._loop = asyncio.get_running_loop()
        for socket in self.sockets:
            fd = _fd(socket)
            loop.add_reader(fd, self._on_ready, socket, fd)
        return loop

    def _on_ready(self, socket: zmq.Socket, fd: int) -> None:
        try:
            ready = has_input(socket)
        except zmq.ZMQError as err:
            if err.errno != zmq.ENOTSOCK:
                raise
            # Closed behind our back (the context was destroyed first): stop watching it.
            if self._loop is not None:
                self._loop.remove_reader(fd)
            return
        if ready and self._waiter is not None:
            _wake(self._waiter)

    def readable(self) -> bool:
        return any(has_input(s) for s in self.sockets)

    async def wait(self, timeout: float) -> None:
        """Return when a socket is readable or after ``timeout`` seconds, whichever is first."""
        loop = self._loop or self._watch()
        if self.readable():  # also clears the descriptors, so the next message wakes us
            return
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            for socket in self.sockets:
                if not socket.closed:
                    self._loop.remove_reader(_fd(socket))  # before the fd goes
        self._loop = None
