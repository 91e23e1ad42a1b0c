"""Producer and consumer processes for channel tests (spawned, so they must be importable)."""

from __future__ import annotations

import asyncio
import json
import time
from multiprocessing.queues import Queue

import pyarrow as pa
import zmq.asyncio

from areal_flow.transport import EndOfStream, Receiver, Sender

SCHEMA = pa.schema([pa.field("id", pa.int64()), pa.field("producer", pa.string())])
EDGE = "test.out -> sink.in"


def id_batch(i: int, producer: str) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({"id": [i], "producer": [producer]}, schema=SCHEMA)


def produce(addresses: list[str], name: str, ids: list[int], log_path: str) -> None:
    """Send one batch per id as fast as credit allows; log each send's time; then EOS."""

    async def main() -> None:
        zctx = zmq.asyncio.Context()
        sender = Sender(zctx, EDGE, SCHEMA, name, addresses)
        sent_at = []
        for i in ids:
            await sender.send(id_batch(i, name))
            sent_at.append(time.monotonic())
        unconfirmed = await sender.send_eos(timeout=30)
        with open(log_path, "w") as out:
            json.dump({"sent_at": sent_at, "unconfirmed": unconfirmed, **sender.metrics()}, out)
        sender.close()
        zctx.destroy(linger=0)

    asyncio.run(main())


def consume(capacity: int, addresses: Queue, out_path: str) -> None:
    """Bind a receiver, publish its address, take batches until end-of-stream, write the ids."""

    async def main() -> None:
        zctx = zmq.asyncio.Context()
        receiver = Receiver(zctx, EDGE, SCHEMA, capacity=capacity)
        addresses.put(receiver.address)
        ids: list[int] = []
        deepest = 0
        while True:
            item = await receiver.recv(timeout=30)
            if item is None:
                raise TimeoutError("nothing arrived for 30 s")
            if isinstance(item, EndOfStream):
                break
            ids.extend(item.batch.column("id").to_pylist())
            deepest = max(deepest, receiver.depth + receiver.in_flight)
        with open(out_path, "w") as out:
            json.dump({"ids": ids, "deepest": deepest, **receiver.metrics()}, out)
        receiver.close()
        zctx.destroy(linger=0)

    asyncio.run(main())


def ack_and_leave(rounds: int, addresses: Queue) -> None:
    """``rounds`` times: bind a receiver, take batches until end-of-stream, close at once.

    Closing right after the receipt is what a sink does when its last input ends."""

    async def main() -> None:
        zctx = zmq.asyncio.Context()
        for _ in range(rounds):
            receiver = Receiver(zctx, EDGE, SCHEMA, capacity=2)
            addresses.put(receiver.address)
            while not isinstance(await receiver.recv(timeout=30), EndOfStream):
                pass
            receiver.close()
        zctx.destroy(linger=0)

    asyncio.run(main())
