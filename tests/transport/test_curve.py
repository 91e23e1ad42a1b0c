"""CurveZMQ on data sockets: per-run key files, real sockets on 127.0.0.1 with Curve forced on."""

from __future__ import annotations

import asyncio
import contextlib
import stat
from pathlib import Path

import pytest
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from areal_flow.transport import Message, Receiver, Sender
from areal_flow.transport.codec import encode_control, encode_data
from areal_flow.transport.curve import (
    KEYS_DIR,
    RunKeys,
    apply_client,
    bind_host,
    generate_run_keys,
    is_loopback,
    load_run_keys,
    needs_curve,
    stop_authenticator,
)
from tests.transport.peers import EDGE, SCHEMA, id_batch


def test_run_keys_are_owner_only_files_and_load_back(tmp_path: Path) -> None:
    keys = generate_run_keys(tmp_path)
    folder = tmp_path / KEYS_DIR
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert load_run_keys(tmp_path) == keys
    assert keys.server_secret != keys.client_secret
    with pytest.raises(FileExistsError):
        generate_run_keys(tmp_path)  # a run's keys are made once, never overwritten
    (folder / "client.secret").chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        load_run_keys(tmp_path)


def test_missing_keys_name_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="generate_run_keys"):
        load_run_keys(tmp_path)


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.3.2.1:5555", True),
        ("tcp://localhost:5555", True),
        ("tcp://[::1]:5555", True),
        ("ipc:///tmp/x", True),
        ("inproc://x", True),
        ("tcp://10.0.0.7:5555", False),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://*:5555", False),
        ("tcp://node-3.cluster:5555", False),
    ],
)
def test_loopback_addresses_need_no_curve(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback
    assert needs_curve(address) is not loopback


def test_sockets_bind_loopback_unless_the_graph_spans_hosts() -> None:
    assert bind_host(multi_host=False) == "127.0.0.1"
    assert bind_host(multi_host=True) == "0.0.0.0"


def test_an_off_host_address_without_keys_is_refused() -> None:
    zctx = zmq.asyncio.Context()
    with pytest.raises(ValueError, match="CurveZMQ"):
        Receiver(zctx, EDGE, SCHEMA, capacity=1, bind="tcp://0.0.0.0:0")
    with pytest.raises(ValueError, match="CurveZMQ"):
        Sender(zctx, EDGE, SCHEMA, "p", ["tcp://10.1.2.3:5555"])
    zctx.destroy(linger=0)


_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_DISCONNECTED
)


def _intrude(address: str, keys: RunKeys | None) -> int:
    """A raw DEALER that says hello and sends a batch, as a producer would; returns the first
    connection event it sees after the TCP connect (handshake failed, refused, or succeeded)."""
    zctx = zmq.Context()
    socket = zctx.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        apply_client(socket, keys)
    monitor = socket.get_monitor_socket(_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
    socket.connect(address)
    for frames in (
        encode_control("hello", producer="x", edge=EDGE),
        encode_data(id_batch(666, "x"), "x", 0, 0),
    ):
        with contextlib.suppress(zmq.Again):  # a failed handshake leaves nowhere to queue
            socket.send_multipart(frames, zmq.NOBLOCK)
    assert monitor.poll(10_000), "no handshake outcome within 10 s"
    event = int(parse_monitor_message(monitor.recv_multipart())["event"])
    socket.disable_monitor()
    monitor.close(linger=0)
    socket.close(linger=0)
    zctx.term()
    return event


def test_with_curve_forced_on_only_holders_of_the_run_keys_get_through(tmp_path: Path) -> None:
    keys = generate_run_keys(tmp_path / "run")
    other = generate_run_keys(tmp_path / "other_run")
    # Knows the server's public key but holds another run's client key pair.
    stranger = RunKeys(keys.server_public, keys.server_secret, *other_client(other))

    async def main() -> None:
        zctx = zmq.asyncio.Context()
        receiver = Receiver(zctx, EDGE, SCHEMA, capacity=2, keys=keys)
        loop = asyncio.get_running_loop()
        for intruder_keys in (None, other, stranger):  # no Curve, another run, wrong client
            event = await loop.run_in_executor(None, _intrude, receiver.address, intruder_keys)
            assert event & _FAILED, f"an intruder's handshake did not fail (event {event})"
        sender = Sender(zctx, EDGE, SCHEMA, "good", [receiver.address], keys=keys)
        sending = asyncio.create_task(sender.send(id_batch(1, "good"), timeout=10))
        item = await receiver.recv(timeout=10)
        await sending
        assert isinstance(item, Message) and item.producer == "good"
        assert item.batch.column("id").to_pylist() == [1]
        # Nothing from the intruders ever reached the receiver: not even a hello.
        assert await receiver.recv(timeout=0.3) is None
        assert receiver.metrics()["producers"] == 1.0 and not receiver.rejected
        sender.close()
        receiver.close()
        stop_authenticator(zctx)
        zctx.destroy(linger=0)

    asyncio.run(main())


def other_client(keys: RunKeys) -> tuple[bytes, bytes]:
    return keys.client_public, keys.client_secret
