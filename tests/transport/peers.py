"""Producer processes for channel tests (spawned; must be importable)."""

from __future__ import annotations

import asyncio
import json
import time

import pyarrow as pa
import zmq.asyncio

from areal_flow.transport import Sender

SCHEMA = pa.schema([pa.field("id", pa.int64()), pa.field("producer", pa.string())])


def id_batch(i: int, producer: str) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({"id": [i], "producer": [producer]}, schema=SCHEMA)


def produce(addresses: list[str], name: str, ids: list[int], log_path: str) -> None:
    """Send one batch per id as fast as credit allows; log each send's time; then EOS."""

    async def main() -> None:
        zctx = zmq.asyncio.Context()
        sender = Sender(zctx, "test -> sink", SCHEMA, name, addresses)
        sent_at = []
        for i in ids:
            await sender.send(id_batch(i, name))
            sent_at.append(time.monotonic())
        await sender.send_eos()
        with open(log_path, "w") as out:
            json.dump({"sent_at": sent_at, "waited_s": sender.waited_s}, out)
        await asyncio.sleep(0.2)  # let the last frames leave before the context goes
        sender.close()
        zctx.destroy(linger=0)

    asyncio.run(main())
