"""Edge throughput and latency: areal-flow channels vs raw pyzmq, in the same run.

For 4 KiB, 64 KiB and 4 MiB record batches (one binary column), a producer process sends to a
consumer in this process over TCP loopback, first as raw bytes on a DEALER → ROUTER pair (no
flow control, no serialisation), then as Arrow batches through ``Sender`` → ``Receiver`` (credit
flow control, schema checks). Then small-batch round trips (ping-pong through two edges).

    python bench/transport.py [--seconds 2] [--capacity 8]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import time

import pyarrow as pa
import zmq
import zmq.asyncio
from rich.console import Console
from rich.table import Table

from areal_flow.transport import EndOfStream, Receiver, Sender

SIZES = {"4 KiB": 4 * 2**10, "64 KiB": 64 * 2**10, "4 MiB": 4 * 2**20}
SCHEMA = pa.schema([pa.field("payload", pa.binary())])


def payload_batch(size: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({"payload": [b"x" * size]}, schema=SCHEMA)


def count_for(size: int, seconds: float) -> int:
    """Messages to send so a run lasts about ``seconds`` at ~1.5 GB/s or 40k msg/s."""
    return max(200, min(int(seconds * 1.5e9 / size), int(seconds * 40_000)))


# -- producers (spawned processes) --------------------------------------------------------------


def raw_producer(address: str, size: int, count: int) -> None:
    zctx = zmq.Context()
    socket = zctx.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, -1)
    socket.connect(address)
    data = b"x" * size
    socket.send(b"hello")
    for _ in range(count):
        socket.send(data, copy=size < 65536)
    socket.send(b"end")
    socket.close()
    zctx.term()


def channel_producer(address: str, size: int, count: int) -> None:
    async def main() -> None:
        zctx = zmq.asyncio.Context()
        sender = Sender(zctx, "bench", SCHEMA, "producer", [address])
        batch = payload_batch(size)
        for _ in range(count):
            await sender.send(batch)
        await sender.send_eos()
        await asyncio.sleep(0.5)
        sender.close()
        zctx.destroy(linger=0)

    asyncio.run(main())


def echo(inbound: str, outbound_bind: str, count: int) -> None:
    """Receives on one edge and sends back on another (round-trip partner)."""

    async def main() -> None:
        zctx = zmq.asyncio.Context()
        receiver = Receiver(zctx, "ping", SCHEMA, capacity=1, bind=inbound)
        sender = Sender(zctx, "pong", SCHEMA, "echo", [outbound_bind])
        for _ in range(count):
            item = await receiver.recv(timeout=30)
            assert item is not None and not isinstance(item, EndOfStream)
            await sender.send(item.batch)
        await asyncio.sleep(0.5)
        sender.close()
        receiver.close()
        zctx.destroy(linger=0)

    asyncio.run(main())


def raw_echo(inbound: str, count: int) -> None:
    zctx = zmq.Context()
    socket = zctx.socket(zmq.DEALER)
    socket.connect(inbound)
    socket.send(b"hello")
    for _ in range(count):
        socket.send(socket.recv())
    time.sleep(0.2)
    socket.close(linger=0)
    zctx.term()


# -- measurements -------------------------------------------------------------------------------


def spawn(target: object, *args: object) -> multiprocessing.process.BaseProcess:
    process = multiprocessing.get_context("spawn").Process(target=target, args=args)
    process.start()
    return process


def raw_throughput(size: int, count: int) -> float:
    zctx = zmq.Context()
    router = zctx.socket(zmq.ROUTER)
    router.bind("tcp://127.0.0.1:0")
    process = spawn(raw_producer, router.getsockopt_string(zmq.LAST_ENDPOINT), size, count)
    router.recv_multipart()  # hello
    received, started = 0, 0.0
    while True:
        frames = router.recv_multipart(copy=False)
        if len(frames[1]) == 3 and frames[1].bytes == b"end":
            break
        if received == 0:
            started = time.perf_counter()
        received += 1
    elapsed = time.perf_counter() - started
    process.join()
    router.close(linger=0)
    zctx.term()
    return (received - 1) / elapsed


def channel_throughput(size: int, count: int, capacity: int) -> float:
    async def main() -> float:
        zctx = zmq.asyncio.Context()
        receiver = Receiver(zctx, "bench", SCHEMA, capacity=capacity)
        process = spawn(channel_producer, receiver.address, size, count)
        received, started = 0, 0.0
        while True:
            item = await receiver.recv(timeout=60)
            assert item is not None, "producer went silent"
            if isinstance(item, EndOfStream):
                break
            if received == 0:
                started = time.perf_counter()
            received += 1
        elapsed = time.perf_counter() - started
        process.join()
        receiver.close()
        zctx.destroy(linger=0)
        return (received - 1) / elapsed

    return asyncio.run(main())


def channel_round_trips(count: int) -> list[float]:
    async def main() -> list[float]:
        zctx = zmq.asyncio.Context()
        back = Receiver(zctx, "pong", SCHEMA, capacity=1)
        ping_address = f"tcp://127.0.0.1:{_free_port()}"
        process = spawn(echo, ping_address, back.address, count)
        sender = Sender(zctx, "ping", SCHEMA, "bench", [ping_address])
        batch = payload_batch(64)
        times = []
        for _ in range(count):
            began = time.perf_counter()
            await sender.send(batch)
            item = await back.recv(timeout=30)
            assert item is not None
            times.append(time.perf_counter() - began)
        process.join()
        sender.close()
        back.close()
        zctx.destroy(linger=0)
        return times[10:]  # warm-up

    return asyncio.run(main())


def raw_round_trips(count: int) -> list[float]:
    zctx = zmq.Context()
    router = zctx.socket(zmq.ROUTER)
    router.bind("tcp://127.0.0.1:0")
    process = spawn(raw_echo, router.getsockopt_string(zmq.LAST_ENDPOINT), count)
    identity, _ = router.recv_multipart()
    times = []
    for _ in range(count):
        began = time.perf_counter()
        router.send_multipart([identity, b"x" * 64])
        router.recv_multipart()
        times.append(time.perf_counter() - began)
    process.join()
    router.close(linger=0)
    zctx.term()
    return times[10:]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="Rough length of each run.")
    parser.add_argument("--capacity", type=int, default=8, help="Edge capacity (credits).")
    parser.add_argument("--round-trips", type=int, default=2000)
    args = parser.parse_args()

    table = Table(title="edge throughput, TCP loopback, producer and consumer in two processes")
    for column in ("batch", "raw pyzmq MB/s", "areal-flow MB/s", "batches/s", "ratio"):
        table.add_column(column, justify="right")
    for label, size in SIZES.items():
        count = count_for(size, args.seconds)
        raw = raw_throughput(size, count)
        ours = channel_throughput(size, count, args.capacity)
        table.add_row(
            label,
            f"{raw * size / 1e6:,.0f}",
            f"{ours * size / 1e6:,.0f}",
            f"{ours:,.0f}",
            f"{ours / raw:.2f}×",
        )
    latency = Table(title="round trip of a 64-byte batch (two edges), µs")
    for column in ("path", "p50", "p99"):
        latency.add_column(column, justify="right")
    for name, samples in (
        ("raw pyzmq", raw_round_trips(args.round_trips)),
        ("areal-flow", channel_round_trips(args.round_trips)),
    ):
        latency.add_row(
            name, f"{percentile(samples, 50) * 1e6:.0f}", f"{percentile(samples, 99) * 1e6:.0f}"
        )
    console = Console()
    console.print(table)
    console.print(latency)


if __name__ == "__main__":
    main()
