"""Edge throughput and latency: areal-flow channels vs raw pyzmq, in the same run.

Throughput: for 4 KiB, 64 KiB and 4 MiB record batches (one binary column), a producer process
sends to a consumer in this process over TCP loopback, as raw bytes on a DEALER → ROUTER pair
(no flow control, no serialisation, blocking pyzmq) and as Arrow batches through ``Sender`` →
``Receiver`` (credit flow control, schema checks, asyncio). Two blocking pyzmq arms in between
show what each requirement costs on its own: "+ IPC" encodes every batch with the channel's
codec and decodes it on arrival (no flow control), "+ credit" adds a credit window of the
edge's capacity, granted in halves as the channel does. Each set of runs is repeated
``--trials`` times, interleaved, and the median is shown, since the machine may be shared.

Latency: round trips of a 64-byte batch through two edges (ping → echo process → pong), for raw
blocking pyzmq, raw ``zmq.asyncio``, a raw echo that sleeps the way the channels do
(``wake.Wakeup``: the floor for a channel), the same plus the codec's encode and decode of
every message (no flow control), and the channels.

    python bench/transport.py [--seconds 1] [--capacity 8] [--trials 3] [--round-trips 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import zmq
import zmq.asyncio
from rich.console import Console
from rich.table import Table

from areal_flow.transport import EndOfStream, Message, Receiver, Sender
from areal_flow.transport.codec import decode_data, decode_header, encode_data
from areal_flow.transport.wake import Wakeup, has_input, recv_frames, send_frames

SIZES = {"4 KiB": 4 * 2**10, "64 KiB": 64 * 2**10, "4 MiB": 4 * 2**20}
SCHEMA = pa.schema([pa.field("payload", pa.binary())])
SPAWN = multiprocessing.get_context("spawn")


def payload_batch(size: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({"payload": [b"x" * size]}, schema=SCHEMA)


def count_for(size: int, seconds: float) -> int:
    """Messages to send so a run lasts about ``seconds`` at ~2 GB/s or 20k msg/s."""
    return max(200, min(int(seconds * 2e9 / size), int(seconds * 20_000)))


def spawn(target: Callable[..., None], *args: object) -> Any:
    process = SPAWN.Process(target=target, args=args)
    process.start()
    return process


# -- throughput ---------------------------------------------------------------------------------


def blocking_producer(address: str, size: int, count: int, encode: bool, window: int) -> None:
    """Blocking pyzmq. Raw: one ``bytes`` object sent again and again. With ``encode``, every
    batch encoded afresh by the channel's codec; with ``window`` > 0, only on credit."""
    zctx = zmq.Context()
    socket = zctx.socket(zmq.DEALER)
    socket.connect(address)
    data, batch = b"x" * size, payload_batch(size)
    socket.send(b"hello")
    credit = window
    for seq in range(count):
        if window:
            while credit <= 0 or socket.poll(0):  # block only when out of credit
                socket.recv()
                credit += window // 2
            credit -= 1
        if encode:
            socket.send_multipart(encode_data(batch, "raw", seq, 0), copy=False)
        else:
            socket.send(data, copy=False)  # pyzmq copies small frames anyway
    socket.send(b"end")
    socket.close(linger=-1)  # no receipts: wait until everything left
    zctx.term()


def blocking_throughput(size: int, count: int, encode: bool = False, window: int = 0) -> float:
    """Batches per second for ``blocking_producer``, timed from the first to the last arrival;
    with ``encode``, each arrival is decoded and checked."""
    zctx = zmq.Context()
    router = zctx.socket(zmq.ROUTER)
    router.bind("tcp://127.0.0.1:0")
    address = router.getsockopt_string(zmq.LAST_ENDPOINT)
    process = spawn(blocking_producer, address, size, count, encode, window)
    identity, _ = router.recv_multipart()  # hello
    received, taken, started = 0, 0, 0.0
    while True:
        frames = router.recv_multipart(copy=False)
        if len(frames[-1]) == 3 and frames[-1].bytes == b"end":
            break
        if encode:
            decode_batch(frames[1], frames[2])
        if received == 0:
            started = time.perf_counter()
        received += 1
        taken += 1
        if window and taken == window // 2:
            router.send_multipart([identity, b"credit"])
            taken = 0
    elapsed = time.perf_counter() - started
    process.join()
    router.close(linger=0)
    zctx.term()
    return (received - 1) / elapsed


def channel_producer(address: str, size: int, count: int) -> None:
    async def main() -> None:
        zctx = zmq.asyncio.Context()
        sender = Sender(zctx, "bench", SCHEMA, "producer", [address])
        batch = payload_batch(size)
        for _ in range(count):
            await sender.send(batch)
        assert await sender.send_eos(timeout=30) == [], "the consumer did not confirm the end"
        sender.close()
        zctx.destroy(linger=0)

    asyncio.run(main())


def channel_throughput(size: int, count: int, capacity: int) -> float:
    """Batches per second, timed from the first to the last arrival."""

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


# -- round trips --------------------------------------------------------------------------------


def raw_echo(address: str, count: int) -> None:
    zctx = zmq.Context()
    socket = zctx.socket(zmq.DEALER)
    socket.connect(address)
    socket.send(b"hello")
    for _ in range(count):
        socket.send(socket.recv())
    socket.close(linger=1000)  # the last pong must leave; bounded in case the pinger is gone
    zctx.term()


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
    return times


def asyncio_echo(address: str, count: int) -> None:
    async def main() -> None:
        zctx = zmq.asyncio.Context()
        socket = zctx.socket(zmq.DEALER)
        socket.connect(address)
        await socket.send(b"hello")
        for _ in range(count):
            await socket.send(await socket.recv())
        socket.close(linger=1000)
        zctx.term()

    asyncio.run(main())


def asyncio_round_trips(count: int) -> list[float]:
    async def main() -> list[float]:
        zctx = zmq.asyncio.Context()
        router = zctx.socket(zmq.ROUTER)
        router.bind("tcp://127.0.0.1:0")
        process = spawn(asyncio_echo, router.getsockopt_string(zmq.LAST_ENDPOINT), count)
        identity, _ = await router.recv_multipart()
        times = []
        for _ in range(count):
            began = time.perf_counter()
            await router.send_multipart([identity, b"x" * 64])
            await router.recv_multipart()
            times.append(time.perf_counter() - began)
        process.join()
        router.close(linger=0)
        zctx.term()
        return times

    return asyncio.run(main())


def wakeup_echo(address: str, count: int, codec: bool) -> None:
    """Raw pyzmq echo that sleeps in ``wake.Wakeup`` and uses non-blocking calls, as a channel;
    with ``codec``, each message is a batch decoded and re-encoded as a channel does."""

    async def main() -> None:
        zctx = zmq.Context()
        socket = zctx.socket(zmq.DEALER)
        socket.connect(address)
        socket.send(b"hello")
        wakeup = Wakeup([socket])
        for seq in range(count):
            while not has_input(socket):
                await wakeup.wait(30)
            frames, _ = recv_frames(socket, keep=2)
            if codec:
                message = decode_batch(frames[0], frames[1])
                send_frames(socket, encode_data(message.batch, "echo", seq, 0), copy=False)
            else:
                send_frames(socket, frames)
        wakeup.close()
        socket.close(linger=1000)
        zctx.term()

    asyncio.run(main())


def decode_batch(header: zmq.Frame, body: zmq.Frame) -> Message:
    return decode_data(decode_header(header.buffer), body.buffer, SCHEMA, "bench")


def wakeup_round_trips(count: int, codec: bool = False) -> list[float]:
    async def main() -> list[float]:
        zctx = zmq.Context()
        router = zctx.socket(zmq.ROUTER)
        router.bind("tcp://127.0.0.1:0")
        process = spawn(wakeup_echo, router.getsockopt_string(zmq.LAST_ENDPOINT), count, codec)
        identity, _ = router.recv_multipart()
        wakeup = Wakeup([router])
        batch = payload_batch(64)
        times = []
        for seq in range(count):
            began = time.perf_counter()
            ping = encode_data(batch, "bench", seq, 0) if codec else [b"x" * 64]
            send_frames(router, [identity, *ping], copy=False)
            while not has_input(router):
                await wakeup.wait(30)
            frames, _ = recv_frames(router, keep=3)
            if codec:
                decode_batch(frames[1], frames[2])
            times.append(time.perf_counter() - began)
        wakeup.close()
        process.join()
        router.close(linger=0)
        zctx.term()
        return times

    return asyncio.run(main())


def codec_round_trips(count: int) -> list[float]:
    return wakeup_round_trips(count, codec=True)


def channel_echo(pong_address: str, ping_addresses: Any, count: int) -> None:
    """Receives on the ping edge and sends each batch back on the pong edge."""

    async def main() -> None:
        zctx = zmq.asyncio.Context()
        receiver = Receiver(zctx, "ping", SCHEMA, capacity=4)
        ping_addresses.put(receiver.address)
        sender = Sender(zctx, "pong", SCHEMA, "echo", [pong_address])
        for _ in range(count):
            item = await receiver.recv(timeout=30)
            assert isinstance(item, Message)
            await sender.send(item.batch)
        # The pinger ends only after it got every pong, so its end-of-stream means none is lost.
        assert isinstance(await receiver.recv(timeout=30), EndOfStream)
        sender.close()
        receiver.close()
        zctx.destroy(linger=0)

    asyncio.run(main())


def channel_round_trips(count: int) -> list[float]:
    async def main() -> list[float]:
        zctx = zmq.asyncio.Context()
        back = Receiver(zctx, "pong", SCHEMA, capacity=4)
        ping_addresses = SPAWN.Queue()
        process = spawn(channel_echo, back.address, ping_addresses, count)
        sender = Sender(zctx, "ping", SCHEMA, "bench", [ping_addresses.get(timeout=60)])
        batch = payload_batch(64)
        times = []
        for _ in range(count):
            began = time.perf_counter()
            await sender.send(batch)
            item = await back.recv(timeout=30)
            assert isinstance(item, Message)
            times.append(time.perf_counter() - began)
        assert await sender.send_eos(timeout=30) == []
        process.join()
        sender.close()
        back.close()
        zctx.destroy(linger=0)
        return times

    return asyncio.run(main())


# -- report -------------------------------------------------------------------------------------


def throughput_table(seconds: float, capacity: int, trials: int) -> Table:
    table = Table(
        title=f"edge throughput, TCP loopback, two processes, capacity {capacity}, "
        f"median of {trials}"
    )
    columns = ("batch", "raw MB/s", "+ IPC", "+ credit", "areal-flow MB/s", "batches/s", "ratio")
    for column in columns:
        table.add_column(column, justify="right")
    for label, size in SIZES.items():
        count = count_for(size, seconds)
        rates: dict[str, list[float]] = {"raw": [], "ipc": [], "credit": [], "ours": []}
        for _ in range(trials):  # interleaved, so a noisy neighbour hits all alike
            rates["raw"].append(blocking_throughput(size, count))
            rates["ipc"].append(blocking_throughput(size, count, encode=True))
            rates["credit"].append(blocking_throughput(size, count, encode=True, window=capacity))
            rates["ours"].append(channel_throughput(size, count, capacity))
        median = {arm: statistics.median(values) for arm, values in rates.items()}
        raw_rate = median["raw"]
        table.add_row(
            label,
            f"{raw_rate * size / 1e6:,.0f}",
            *(
                f"{median[arm] * size / 1e6:,.0f} ({median[arm] / raw_rate:.2f}×)"
                for arm in ("ipc", "credit")
            ),
            f"{median['ours'] * size / 1e6:,.0f}",
            f"{median['ours']:,.0f}",
            f"{median['ours'] / raw_rate:.2f}×",
        )
    return table


def latency_table(count: int) -> Table:
    table = Table(title=f"round trip of a 64-byte batch (two edges), µs, {count} trips")
    for column in ("path", "p50", "p99"):
        table.add_column(column, justify="right")
    for name, measure in (
        ("raw pyzmq (blocking)", raw_round_trips),
        ("raw pyzmq (zmq.asyncio)", asyncio_round_trips),
        ("raw pyzmq (channel wake-up)", wakeup_round_trips),
        ("  + codec (encode, decode)", codec_round_trips),
        ("areal-flow channel", channel_round_trips),
    ):
        samples = measure(count)[count // 10 :]  # the first tenth warms up
        cuts = statistics.quantiles(samples, n=100)
        table.add_row(name, f"{cuts[49] * 1e6:.0f}", f"{cuts[98] * 1e6:.0f}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="Rough length of each run.")
    parser.add_argument("--capacity", type=int, default=8, help="Edge capacity (credits).")
    parser.add_argument("--trials", type=int, default=3, help="Runs per size; the median shows.")
    parser.add_argument("--round-trips", type=int, default=3000)
    args = parser.parse_args()
    console = Console(width=120)  # the throughput table is wide
    console.print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    console.print(throughput_table(args.seconds, args.capacity, args.trials))
    console.print(latency_table(args.round_trips))
    console.print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
