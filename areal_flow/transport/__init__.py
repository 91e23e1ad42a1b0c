"""The data plane: Arrow IPC over ZeroMQ with credit-based flow control.

``codec`` turns batches into frames and back (no sockets); ``channel`` holds the sockets.
"""

from areal_flow.transport.channel import EndOfStream, Receiver, Sender
from areal_flow.transport.codec import BadMessage, Message

__all__ = ["BadMessage", "EndOfStream", "Message", "Receiver", "Sender"]
