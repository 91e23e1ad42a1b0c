"""Credit-flow channels over real ZeroMQ, producers in real processes."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
from pathlib import Path

import pyarrow as pa
import zmq
import zmq.asyncio

from areal_flow.transport import EndOfStream, Message, Receiver, Sender
from areal_flow.transport.codec import encode_control, encode_data
from tests.transport.peers import SCHEMA, id_batch, produce

SPAWN = multiprocessing.get_context("spawn")


def start_producer(address: str, name: str, ids: list[int], log: Path) -> multiprocessing.Process:
    process = SPAWN.Process(target=produce, args=([address], name, ids, str(log)))
    process.start()
    return process


async def take_all(
    receiver: Receiver, producers: int, delay_s: float = 0.0
) -> tuple[list[Message], list[float], int]:
    """Everything until every producer ended; when each take began; the deepest queue seen.

    A take's credit is returned inside ``recv``, so no later send can precede its start.
    """
    taken: list[Message] = []
    taken_at: list[float] = []
    ended = 0
    deepest = 0
    while ended < producers:
        began = time.monotonic()
        item = await receiver.recv(timeout=30)
        assert item is not None, "nothing arrived for 30 s"
        deepest = max(deepest, receiver.depth)
        if isinstance(item, EndOfStream):
            ended += 1
            continue
        taken.append(item)
        taken_at.append(began)
        if delay_s:
            await asyncio.sleep(delay_s)
    return taken, taken_at, deepest


def test_slow_consumer_holds_the_producer_to_its_capacity(tmp_path: Path) -> None:
    async def main() -> None:
        zctx = zmq.asyncio.Context()
        receiver = Receiver(zctx, "test -> sink", SCHEMA, capacity=4)
        process = start_producer(receiver.address, "p", list(range(30)), tmp_path / "p.json")
        taken, taken_at, deepest = await take_all(receiver, 1, delay_s=0.03)
        process.join(10)
        log = json.loads((tmp_path / "p.json").read_text())
        sent_at = log["sent_at"]
        assert [m.batch.column("id")[0].as_py() for m in taken] == list(range(30))
        assert deepest <= 4
        # Batch i + 4 needs the credit that taking batch i returned: never more than 4 out.
        for i in range(len(taken_at) - 4):
            assert sent_at[i + 4] >= taken_at[i], f"batch {i + 4} left before batch {i} was taken"
        assert log["waited_s"] > 0.5, "the producer waited for credit"
        receiver.close()
        zctx.destroy(linger=0)

    asyncio.run(main())


def test_fan_in_from_two_producer_processes(tmp_path: Path) -> None:
    async def main() -> None:
        zctx = zmq.asyncio.Context()
        receiver = Receiver(zctx, "test -> sink", SCHEMA, capacity=8, producers=2)
        a = start_producer(receiver.address, "a", list(range(0, 500)), tmp_path / "a.json")
        b = start_producer(receiver.address, "b", list(range(500, 1000)), tmp_path / "b.json")
        taken, _, deepest = await take_all(receiver, 2)
        a.join(10)
        b.join(10)
        assert sorted(m.batch.column("id")[0].as_py() for m in taken) == list(range(1000))
        assert {m.producer for m in taken} == {"a", "b"}
        assert deepest <= 8
        receiver.close()
        zctx.destroy(linger=0)

    asyncio.run(main())


def test_fan_out_load_balances_over_consumer_replicas() -> None:
    async def main() -> None:
        zctx = zmq.asyncio.Context()
        fast = Receiver(zctx, "e", SCHEMA, capacity=2)
        slow = Receiver(zctx, "e", SCHEMA, capacity=2)
        sender = Sender(zctx, "e", SCHEMA, "p", [fast.address, slow.address])
        got: dict[str, list[int]] = {"fast": [], "slow": []}

        async def consume(name: str, receiver: Receiver, delay: float) -> None:
            while True:
                item = await receiver.recv(timeout=10)
                if isinstance(item, EndOfStream) or item is None:
                    return
                got[name].append(item.batch.column("id")[0].as_py())
                await asyncio.sleep(delay)

        consumers = [
            asyncio.create_task(consume("fast", fast, 0.0)),
            asyncio.create_task(consume("slow", slow, 0.02)),
        ]
        for i in range(100):
            await sender.send(id_batch(i, "p"))
        await sender.send_eos()
        await asyncio.gather(*consumers)
        assert sorted(got["fast"] + got["slow"]) == list(range(100))
        assert len(got["fast"]) > 2 * len(got["slow"]) > 0, got
        for closable in (sender, fast, slow):
            closable.close()
        zctx.destroy(linger=0)

    asyncio.run(main())


def test_garbage_wrong_schema_and_strangers_are_rejected_and_counted() -> None:
    async def main() -> None:
        zctx = zmq.asyncio.Context()
        receiver = Receiver(zctx, "gen.rollouts -> reward.rollouts", SCHEMA, capacity=4)
        stranger = zctx.socket(zmq.DEALER)
        stranger.setsockopt(zmq.LINGER, 0)
        stranger.connect(receiver.address)
        # Data from a connection that never said hello.
        await stranger.send_multipart(encode_data(id_batch(0, "x"), "x", 0, 0), copy=False)
        # Random frames, a 1 MB header, a truncated body.
        await stranger.send_multipart([b"\x00\x01garbage"])
        await stranger.send_multipart([b"{" * 2**20, b"body"])
        await stranger.send_multipart(encode_control("hello", producer="stranger"))
        header, body = encode_data(id_batch(1, "x"), "stranger", 0, 0)
        await stranger.send_multipart([header, bytes(body)[:20]])
        # A wrong-schema batch from an honest-looking producer.
        wrong = pa.RecordBatch.from_pydict({"other": [1.0]})
        await stranger.send_multipart(encode_data(wrong, "stranger", 1, 0), copy=False)
        # Then a good one: the receiver still works.
        sender = Sender(zctx, "gen.rollouts -> reward.rollouts", SCHEMA, "good", [receiver.address])
        sending = asyncio.create_task(sender.send(id_batch(42, "good")))  # waits for credit
        item = await receiver.recv(timeout=10)
        await sending
        assert isinstance(item, Message) and item.batch.column("id")[0].as_py() == 42
        assert receiver.rejected == {
            "unknown_sender": 1,
            "header_json": 1,
            "header_too_large": 1,
            "ipc_error": 1,
            "schema_mismatch": 1,
        }
        assert receiver.metrics()["rejected_schema_mismatch"] == 1.0
        stranger.close(linger=0)
        sender.close()
        receiver.close()
        zctx.destroy(linger=0)

    asyncio.run(main())


def test_sender_refuses_a_batch_of_the_wrong_record_type() -> None:
    async def main() -> None:
        zctx = zmq.asyncio.Context()
        receiver = Receiver(zctx, "e", SCHEMA, capacity=1)
        sender = Sender(zctx, "a.out -> b.in", SCHEMA, "p", [receiver.address])
        try:
            await sender.send(pa.RecordBatch.from_pydict({"x": [1]}))
        except ValueError as err:
            assert "a.out -> b.in" in str(err)
        else:
            raise AssertionError("a wrong-schema batch was sent")
        finally:
            sender.close()
            receiver.close()
            zctx.destroy(linger=0)

    asyncio.run(main())
