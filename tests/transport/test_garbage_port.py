"""Garbage on a node's data port: every kind rejected, counted by reason in the node's metrics
(``Inbox.metrics``, which the worker reports), and good batches still arrive afterwards."""

from __future__ import annotations

import asyncio
import json
import os

import pyarrow as pa
import zmq
import zmq.asyncio

from areal_flow.runtime.plan import Wire
from areal_flow.runtime.ports import Inbox, Received
from areal_flow.schema import SCHEMAS
from areal_flow.transport import Sender
from areal_flow.transport.codec import encode_control, encode_data

LABEL = "src.out -> node.in"
WEIGHTS = SCHEMAS["weights"]


def notice(version: int) -> pa.RecordBatch:
    rows = [{"version": version, "path": "/x", "checksum": "c", "created_at": 1.0}]
    return pa.RecordBatch.from_pylist(rows, schema=WEIGHTS)


def test_garbage_on_a_data_port_is_counted_per_reason_and_good_batches_still_arrive() -> None:
    async def main() -> None:
        zctx = zmq.asyncio.Context()
        wire = Wire(
            edge=3, label=LABEL, port="in", record="weights", capacity=4, weights=False,
            addresses=["tcp://127.0.0.1:0"], producers=1,
        )  # fmt: skip
        inbox = Inbox(zctx, [wire], "node")
        address = inbox.receivers[3].address
        junk = zctx.socket(zmq.DEALER)
        junk.setsockopt(zmq.LINGER, 0)
        junk.connect(address)
        # From a connection that never said hello: data, then a message of 5 frames.
        await junk.send_multipart(encode_data(notice(0), "junk", 0, 0), copy=False)
        await junk.send_multipart([b"a", b"b", b"c", b"d", b"e"])
        # Registered: random bytes, a 100 MB header, a forged fingerprint, a truncated body.
        await junk.send_multipart(encode_control("hello", producer="junk", edge=LABEL))
        await junk.send_multipart([os.urandom(64), os.urandom(256)])
        await junk.send_multipart([b"{" * (100 * 2**20), b"body"])
        header, body = encode_data(notice(1), "junk", 1, 0)
        forged = json.loads(header)
        forged["fp"] = "0123456789abcdef"
        await junk.send_multipart([json.dumps(forged).encode(), body], copy=False)
        await junk.send_multipart([header, bytes(body)[: len(body) // 2]])
        # A good producer after all that.
        sender = Sender(zctx, LABEL, WEIGHTS, "src/0", [address])
        sending = asyncio.create_task(sender.send(notice(7), version=7, timeout=30))
        stream = inbox.stream([wire])
        item = await asyncio.wait_for(anext(stream), 30)
        await sending
        assert isinstance(item, Received)
        assert (item.producer, item.version) == ("src/0", 7)
        assert item.batch.column("version").to_pylist() == [7]
        metrics = inbox.metrics()
        assert {k: v for k, v in metrics.items() if "rejected_" in k} == {
            "edge.3.rejected_unknown_sender": 1.0,
            "edge.3.rejected_frame_count": 1.0,
            "edge.3.rejected_header_json": 1.0,
            "edge.3.rejected_header_too_large": 1.0,
            "edge.3.rejected_schema_mismatch": 1.0,
            "edge.3.rejected_ipc_error": 1.0,
        }
        assert metrics["edge.3.rejected"] == 6.0 and metrics["edge.3.received"] == 1.0
        await sender.send(notice(8), version=8, timeout=30)  # the port keeps working
        item = await asyncio.wait_for(anext(stream), 30)
        assert item.batch.column("version").to_pylist() == [8]
        await stream.aclose()
        junk.close(linger=0)
        sender.close()
        inbox.close()
        zctx.destroy(linger=0)

    asyncio.run(main())
