"""Credit-flow channels over real ZeroMQ; producers and consumers in real processes where the
behaviour under test crosses processes."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
import zmq
import zmq.asyncio

from areal_flow.transport import EndOfStream, Message, Receiver, Sender
from areal_flow.transport.codec import encode_control, encode_data
from tests.transport.peers import EDGE, SCHEMA, ack_and_leave, consume, id_batch, produce

SPAWN = multiprocessing.get_context("spawn")


def start_producer(addresses: list[str], name: str, ids: list[int], log: Path) -> object:
    process = SPAWN.Process(target=produce, args=(addresses, name, ids, str(log)))
    process.start()
    return process


def ids_of(messages: list[Message]) -> list[int]:
    return [m.batch.column("id")[0].as_py() for m in messages]


async def take_all(
    receiver: Receiver, producers: int, delay_s: float = 0.0
) -> tuple[list[Message], list[float], int]:
    """Everything until every producer ended; when each take began; the most credit held.

    A take's credit is returned inside ``recv``, so no later send can precede its start.
    """
    taken: list[Message] = []
    taken_at: list[float] = []
    ended = 0
    held = 0
    while ended < producers:
        began = time.monotonic()
        item = await receiver.recv(timeout=30)
        assert item is not None, "nothing arrived for 30 s"
        held = max(held, receiver.depth + receiver.in_flight)
        if isinstance(item, EndOfStream):
            ended += 1
            continue
        taken.append(item)
        taken_at.append(began)
        if delay_s:
            await asyncio.sleep(delay_s)  # a slow node, not a wait for an event
    return taken, taken_at, held


def test_slow_consumer_holds_the_producer_to_its_capacity(tmp_path: Path) -> None:
    async def main() -> None:
        zctx = zmq.asyncio.Context()
        receiver = Receiver(zctx, EDGE, SCHEMA, capacity=4)
        process = start_producer([receiver.address], "p", list(range(30)), tmp_path / "p.json")
        taken, taken_at, held = await take_all(receiver, 1, delay_s=0.03)
        process.join(10)  # type: ignore[attr-defined]
        log = json.loads((tmp_path / "p.json").read_text())
        sent_at = log["sent_at"]
        assert ids_of(taken) == list(range(30))
        assert held <= 4
        # Batch i + 4 needs the credit that taking batch i returned: never more than 4 out.
        for i in range(len(taken_at) - 4):
            assert sent_at[i + 4] >= taken_at[i], f"batch {i + 4} left before batch {i} was taken"
        assert log["waits"] >= 10 and log["waited_s"] > 0.5, "the producer waited for credit"
        assert log["unconfirmed"] == []
        receiver.close()
        zctx.destroy(linger=0)

    asyncio.run(main())


def test_ten_thousand_batches_to_two_consumer_processes_arrive_exactly_once(
    tmp_path: Path,
) -> None:
    addresses: multiprocessing.Queue[str] = SPAWN.Queue()
    consumers = [
        SPAWN.Process(target=consume, args=(8, addresses, str(tmp_path / f"c{i}.json")))
        for i in range(2)
    ]
    for process in consumers:
        process.start()
    bound = [addresses.get(timeout=60), addresses.get(timeout=60)]

    async def main() -> list[str]:
        zctx = zmq.asyncio.Context()
        sender = Sender(zctx, EDGE, SCHEMA, "p", bound)
        for i in range(10_000):
            await sender.send(id_batch(i, "p"), version=i // 1000)
        unconfirmed = await sender.send_eos(timeout=30)
        sender.close()
        zctx.destroy(linger=0)
        return unconfirmed

    assert asyncio.run(main()) == []
    for process in consumers:
        process.join(30)
        assert process.exitcode == 0
    results = [json.loads((tmp_path / f"c{i}.json").read_text()) for i in range(2)]
    everything = results[0]["ids"] + results[1]["ids"]
    assert len(everything) == 10_000 and sorted(everything) == list(range(10_000))
    for result in results:
        assert result["ids"] == sorted(result["ids"]), "one producer's batches stay in order"
        assert len(result["ids"]) > 1000, "both replicas share the load"
        assert result["deepest"] <= 8 and result["rejected"] == 0


def test_fan_in_from_two_producer_processes(tmp_path: Path) -> None:
    async def main() -> None:
        zctx = zmq.asyncio.Context()
        receiver = Receiver(zctx, EDGE, SCHEMA, capacity=8, producers=2)
        a = start_producer([receiver.address], "a", list(range(500)), tmp_path / "a.json")
        b = start_producer([receiver.address], "b", list(range(500, 1000)), tmp_path / "b.json")
        taken, _, held = await take_all(receiver, 2)
        for process in (a, b):
            process.join(10)  # type: ignore[attr-defined]
        assert sorted(ids_of(taken)) == list(range(1000))
        by_producer = {p: [m.seq for m in taken if m.producer == p] for p in ("a", "b")}
        assert by_producer == {"a": list(range(500)), "b": list(range(500))}
        assert held <= 8
        receiver.close()
        zctx.destroy(linger=0)

    asyncio.run(main())


def test_capacity_bounds_the_pool_even_when_more_producers_connect_than_expected() -> None:
    async def main() -> None:
        zctx = zmq.asyncio.Context()
        receiver = Receiver(zctx, EDGE, SCHEMA, capacity=4, producers=1)
        senders = [Sender(zctx, EDGE, SCHEMA, f"p{k}", [receiver.address]) for k in range(3)]

        async def produce(k: int) -> None:
            for i in range(40):
                await senders[k].send(id_batch(100 * k + i, f"p{k}"))
            assert await senders[k].send_eos() == []

        producing = [asyncio.create_task(produce(k)) for k in range(3)]
        taken, _, held = await take_all(receiver, 3, delay_s=0.002)
        await asyncio.gather(*producing)
        assert sorted(ids_of(taken)) == sorted(100 * k + i for k in range(3) for i in range(40))
        assert held <= 4
        outstanding = sum(s.sent for s in senders) - len(taken)
        assert outstanding == 0
        for sender in senders:
            sender.close()
        receiver.close()
        zctx.destroy(linger=0)

    asyncio.run(main())


def test_fan_out_load_balances_over_consumer_replicas() -> None:
    async def main() -> None:
        zctx = zmq.asyncio.Context()
        fast = Receiver(zctx, EDGE, SCHEMA, capacity=2)
        slow = Receiver(zctx, EDGE, SCHEMA, capacity=2)
        sender = Sender(zctx, EDGE, SCHEMA, "p", [fast.address, slow.address])
        got: dict[str, list[int]] = {"fast": [], "slow": []}

        async def consume(name: str, receiver: Receiver, delay: float) -> None:
            while True:
                item = await receiver.recv(timeout=10)
                if isinstance(item, EndOfStream) or item is None:
                    return
                got[name].append(item.batch.column("id")[0].as_py())
                await asyncio.sleep(delay)  # a slow node

        consumers = [
            asyncio.create_task(consume("fast", fast, 0.0)),
            asyncio.create_task(consume("slow", slow, 0.02)),
        ]
        for i in range(100):
            await sender.send(id_batch(i, "p"))
        assert await sender.send_eos() == []
        await asyncio.gather(*consumers)
        assert sorted(got["fast"] + got["slow"]) == list(range(100))
        assert len(got["fast"]) > 2 * len(got["slow"]) > 0, got
        for closable in (sender, fast, slow):
            closable.close()
        zctx.destroy(linger=0)

    asyncio.run(main())


def test_garbage_and_strangers_are_rejected_and_counted_and_the_receiver_keeps_working() -> None:
    async def main() -> None:
        zctx = zmq.asyncio.Context()
        edge = "gen.rollouts -> reward.rollouts"
        receiver = Receiver(zctx, edge, SCHEMA, capacity=1)
        stranger = zctx.socket(zmq.DEALER)
        stranger.setsockopt(zmq.LINGER, 0)
        stranger.connect(receiver.address)
        # Data from a connection that never said hello.
        await stranger.send_multipart(encode_data(id_batch(0, "x"), "x", 0, 0), copy=False)
        # Random frames, a 1 MB header, too many frames, a hello for another edge.
        await stranger.send_multipart([b"\x00\x01garbage"])
        await stranger.send_multipart([b"{" * 2**20, b"body"])
        await stranger.send_multipart([b"a", b"b", b"c", b"d"])
        await stranger.send_multipart(encode_control("hello", producer="s", edge="x -> y"))
        # A good producer still gets through.
        sender = Sender(zctx, edge, SCHEMA, "good", [receiver.address])
        sending = asyncio.create_task(sender.send(id_batch(42, "good")))  # waits for credit
        item = await receiver.recv(timeout=10)
        await sending
        assert isinstance(item, Message) and ids_of([item]) == [42]
        # The good producer now holds the only credit: data from a newcomer has none.
        await stranger.send_multipart(encode_control("hello", producer="s", edge=edge))
        await stranger.send_multipart(encode_data(id_batch(1, "s"), "s", 0, 0))
        assert await receiver.recv(timeout=0.5) is None
        assert receiver.rejected == Counter(
            unknown_sender=1,
            header_json=1,
            header_too_large=1,
            frame_count=1,
            wrong_edge=1,
            no_credit=1,
        )
        assert receiver.metrics()["rejected"] == 6.0
        await sender.send(id_batch(43, "good"))
        item = await receiver.recv(timeout=10)
        assert isinstance(item, Message) and ids_of([item]) == [43]
        for closable in (stranger, sender, receiver):
            closable.close()
        zctx.destroy(linger=0)

    asyncio.run(main())


def test_bad_bodies_from_a_registered_producer_are_rejected_and_their_credit_returns() -> None:
    async def main() -> None:
        zctx = zmq.asyncio.Context()
        receiver = Receiver(zctx, EDGE, SCHEMA, capacity=2)
        raw = zctx.socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(receiver.address)
        await raw.send_multipart(encode_control("hello", producer="r", edge=EDGE))
        assert await receiver.recv(timeout=0.3) is None  # registers r and grants credit
        assert json.loads(await raw.recv()) == {"kind": "credit", "n": 2}
        header, body = encode_data(id_batch(1, "r"), "r", 0, 0)
        await raw.send_multipart([header, bytes(body)[:20]])
        wrong = pa.RecordBatch.from_pydict({"id": [1.5], "producer": ["r"]})
        await raw.send_multipart(encode_data(wrong, "r", 1, 0), copy=False)
        assert await receiver.recv(timeout=0.5) is None
        assert receiver.rejected == Counter(ipc_error=1, schema_mismatch=1)
        returned = 0
        while returned < 2:  # both slots come back, in one credit message or two
            message = json.loads(await asyncio.wait_for(raw.recv(), 10))
            assert message["kind"] == "credit"
            returned += message["n"]
        assert returned == 2
        await raw.send_multipart(encode_data(id_batch(5, "r"), "r", 2, 3), copy=False)
        item = await receiver.recv(timeout=10)
        assert isinstance(item, Message) and (item.producer, item.seq, item.version) == ("r", 2, 3)
        for closable in (raw, receiver):
            closable.close()
        zctx.destroy(linger=0)

    asyncio.run(main())


def test_wrong_schema_is_rejected_naming_the_edge_and_fields() -> None:
    async def main() -> None:
        zctx = zmq.asyncio.Context()
        edge = "gen.rollouts -> reward.rollouts"
        receiver = Receiver(zctx, edge, SCHEMA, capacity=2)
        other = pa.schema([pa.field("id", pa.int32()), pa.field("reward", pa.float32())])
        sender = Sender(zctx, edge, other, "gen/0", [receiver.address])
        batch = pa.RecordBatch.from_pydict({"id": [1], "reward": [0.5]}, schema=other)
        sending = asyncio.create_task(sender.send(batch))
        assert await receiver.recv(timeout=0.5) is None  # rejected, not delivered
        await sending
        assert receiver.rejected == Counter(schema_mismatch=1)
        text = str(receiver.last_rejection)
        assert edge in text and "gen/0" in text
        assert "'id': int32 vs int64" in text and "'producer' (string) is missing" in text
        assert "reward" not in text.split("record:")[1]  # an extra column is no problem
        for closable in (sender, receiver):
            closable.close()
        zctx.destroy(linger=0)

    asyncio.run(main())


def test_sender_refuses_a_batch_of_the_wrong_record_type() -> None:
    async def main() -> None:
        zctx = zmq.asyncio.Context()
        receiver = Receiver(zctx, "a.out -> b.in", SCHEMA, capacity=1)
        sender = Sender(zctx, "a.out -> b.in", SCHEMA, "p", [receiver.address])
        with pytest.raises(ValueError, match=r"a\.out -> b\.in.*'id' \(int64\) is missing"):
            await sender.send(pa.RecordBatch.from_pydict({"x": [1]}))
        nulls = pa.RecordBatch.from_pydict({"id": [None], "producer": ["p"]}, schema=SCHEMA)
        strict = pa.schema([pa.field("id", pa.int64(), nullable=False), SCHEMA.field(1)])
        strict_sender = Sender(zctx, "a.out -> b.in", strict, "p", [receiver.address])
        with pytest.raises(ValueError, match=r"'id' has 1 null"):
            await strict_sender.send(nulls)
        assert sender.sent == 0 and strict_sender.sent == 0
        for closable in (sender, strict_sender, receiver):
            closable.close()
        zctx.destroy(linger=0)

    asyncio.run(main())


def test_extra_columns_travel_with_the_record() -> None:
    """Records are open: a batch with every field of the port's record plus its own columns
    (in any order) is the record, and arrives whole."""

    async def main() -> None:
        zctx = zmq.asyncio.Context()
        receiver = Receiver(zctx, "a.out -> b.in", SCHEMA, capacity=1)
        sender = Sender(zctx, "a.out -> b.in", SCHEMA, "p", [receiver.address])
        batch = pa.RecordBatch.from_pydict({"note": ["hi"], "producer": ["p"], "id": [3]})
        sending = asyncio.create_task(sender.send(batch))
        item = await receiver.recv(timeout=10)
        await sending
        assert isinstance(item, Message) and item.batch.equals(batch)
        assert receiver.rejected == Counter()
        for closable in (sender, receiver):
            closable.close()
        zctx.destroy(linger=0)

    asyncio.run(main())


def test_end_of_stream_without_data_is_delivered_and_acknowledged() -> None:
    async def main() -> None:
        zctx = zmq.asyncio.Context()
        receiver = Receiver(zctx, EDGE, SCHEMA, capacity=2)
        sender = Sender(zctx, EDGE, SCHEMA, "quiet", [receiver.address])
        ending = asyncio.create_task(sender.send_eos(timeout=10))
        assert await receiver.recv(timeout=10) == EndOfStream("quiet")
        assert await ending == []
        for closable in (sender, receiver):
            closable.close()
        zctx.destroy(linger=0)

    asyncio.run(main())


def test_waits_time_out_naming_the_edge_when_no_consumer_is_there(free_port: int) -> None:
    async def main() -> None:
        zctx = zmq.asyncio.Context()
        nowhere = f"tcp://127.0.0.1:{free_port}"
        sender = Sender(zctx, EDGE, SCHEMA, "p", [nowhere])
        with pytest.raises(TimeoutError, match=f"{EDGE}.*{nowhere}"):
            await sender.send(id_batch(0, "p"), timeout=0.3)
        assert await sender.send_eos(timeout=0.3) == [nowhere]
        sender.close()
        zctx.destroy(linger=0)

    asyncio.run(main())


def test_a_restarted_consumer_gets_fresh_credit_at_the_same_address() -> None:
    async def main() -> None:
        zctx = zmq.asyncio.Context()
        dying = zmq.asyncio.Context()  # the first consumer's own context, as in its own process
        first = Receiver(dying, EDGE, SCHEMA, capacity=2)
        address = first.address
        sender = Sender(zctx, EDGE, SCHEMA, "p", [address])
        sending = asyncio.create_task(sender.send(id_batch(0, "p")))
        item = await first.recv(timeout=10)
        await sending
        assert isinstance(item, Message) and ids_of([item]) == [0]
        first.close()
        dying.destroy(linger=0)  # the consumer dies; its port is free again
        second = Receiver(zctx, EDGE, SCHEMA, capacity=2, bind=address)

        async def collect() -> list[int]:
            got: list[int] = []
            while 109 not in got:
                item = await second.recv(timeout=10)
                assert isinstance(item, Message), "the new consumer got nothing for 10 s"
                got.extend(ids_of([item]))
            return got

        collecting = asyncio.create_task(collect())
        for i in range(100, 110):
            await sender.send(id_batch(i, "p"), timeout=10)
        got = await collecting
        # Batches sent on credit from the dead consumer are lost (rejected by the new one, which
        # never heard from that connection); everything after the new hello arrives in order.
        lost = 10 - len(got)
        assert got == list(range(100 + lost, 110)) and lost <= 2
        assert second.rejected == Counter(unknown_sender=lost) if lost else not second.rejected
        for closable in (sender, second):
            closable.close()
        zctx.destroy(linger=0)

    asyncio.run(main())


def test_a_consumer_that_exits_right_after_its_receipt_still_confirms_the_end() -> None:
    rounds = 3
    addresses: multiprocessing.Queue[str] = SPAWN.Queue()
    consumer = SPAWN.Process(target=ack_and_leave, args=(rounds, addresses))
    consumer.start()

    async def main() -> list[list[str]]:
        zctx = zmq.asyncio.Context()
        results = []
        for _ in range(rounds):
            sender = Sender(zctx, EDGE, SCHEMA, "p", [addresses.get(timeout=60)])
            await sender.send(id_batch(0, "p"), timeout=30)
            # A busy producer: its loop is blocked while the receipt and the hang-up arrive.
            asyncio.get_running_loop().call_soon(time.sleep, 0.3)
            results.append(await sender.send_eos(timeout=10))
            sender.close()
        zctx.destroy(linger=0)
        return results

    assert asyncio.run(main()) == [[]] * rounds  # no receipt lost to the consumer's exit
    consumer.join(30)
    assert consumer.exitcode == 0


def test_every_producer_keeps_a_credit_when_producers_outnumber_the_capacity() -> None:
    """Four producers on a capacity-2 edge: once all are idle, every one still holds credit,
    so a producer with a batch never waits on credit parked at producers with nothing to send
    (in a gated graph nothing new would ever come: a deadlock)."""

    async def main() -> None:
        zctx = zmq.asyncio.Context()
        receiver = Receiver(zctx, EDGE, SCHEMA, capacity=2, producers=4)
        senders = {
            f"p{k}": Sender(zctx, EDGE, SCHEMA, f"p{k}", [receiver.address]) for k in range(4)
        }

        async def take(n: int) -> list[Message]:
            taken: list[Message] = []
            while len(taken) < n:
                item = await receiver.recv(timeout=10)
                assert isinstance(item, Message), "nothing arrived for 10 s"
                taken.append(item)
            await receiver.recv(timeout=0.05)  # credit for the last take goes out
            return taken

        taking = asyncio.create_task(take(4))
        await asyncio.gather(
            *(s.send(id_batch(k, n), timeout=10) for k, (n, s) in enumerate(senders.items()))
        )
        await taking
        # Idle now. Those the receiver left without credit send first, each alone.
        holding = {p.name: p.outstanding for p in receiver._producers.values()}
        assert sorted(holding) == sorted(senders)
        for name in sorted(senders, key=lambda n: holding[n]):
            taking = asyncio.create_task(take(1))
            await senders[name].send(id_batch(10, name), timeout=3)
            await taking
        for sender in senders.values():
            sender.close()
        receiver.close()
        zctx.destroy(linger=0)

    asyncio.run(main())
