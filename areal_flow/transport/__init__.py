"""The data plane: Arrow IPC over ZeroMQ with credit-based flow control.

One edge is its producers' ``Sender`` objects connected to its consumer replicas' ``Receiver``
objects. The protocol, all messages JSON headers (``codec``):

- producer → consumer: ``hello`` (first on every connection), ``data`` (header + Arrow IPC
  body; only with credit), ``eos`` (nothing more will come);
- consumer → producer: ``credit`` (you may send n more), ``eos_ack`` (eos and everything before
  it arrived).

``codec`` turns batches into frames and back (no sockets); ``receiver`` and ``sender`` hold
the sockets; ``wake`` has the non-blocking socket calls and the asyncio wake-up; ``curve``
holds the run's CurveZMQ keys, required on any address that is not loopback.
"""

from areal_flow.transport.codec import BadMessage, Message
from areal_flow.transport.receiver import EndOfStream, Receiver
from areal_flow.transport.sender import Sender

__all__ = ["BadMessage", "EndOfStream", "Message", "Receiver", "Sender"]
