"""The codec alone: round trips, every kind of garbage, and a hypothesis fuzz."""

from __future__ import annotations

import contextlib
import json

import pyarrow as pa
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from areal_flow.schema import SCHEMAS
from areal_flow.transport.codec import (
    MAX_HEADER_BYTES,
    BadMessage,
    decode_data,
    decode_header,
    encode_data,
)

SCHEMA = pa.schema([pa.field("id", pa.int64()), pa.field("text", pa.string())])


def batch(n: int = 3) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(
        {"id": list(range(n)), "text": [f"row {i}" for i in range(n)]}, schema=SCHEMA
    )


def roundtrip(frames: list[object], schema: pa.Schema | None = SCHEMA) -> object:
    header = decode_header(bytes(frames[0]))  # type: ignore[call-overload]
    return decode_data(header, frames[1], schema, "a.out -> b.in")


def test_round_trip_keeps_rows_and_header() -> None:
    frames = encode_data(batch(5), "src/0", seq=7, version=3)
    message = roundtrip(frames)
    assert message.batch.equals(batch(5))  # type: ignore[attr-defined]
    assert (message.producer, message.seq, message.version) == ("src/0", 7, 3)  # type: ignore[attr-defined]


def test_real_record_schemas_round_trip() -> None:
    rows = [{"version": 4, "path": "/dev/shm/x", "checksum": "ab", "created_at": 1.5}]
    weights = pa.RecordBatch.from_pylist(rows, schema=SCHEMAS["weights"])
    message = roundtrip(encode_data(weights, "trainer/0", 0, 4), SCHEMAS["weights"])
    assert message.batch.to_pylist() == rows  # type: ignore[attr-defined]


def test_schema_mismatch_names_the_edge() -> None:
    other = pa.RecordBatch.from_pydict({"id": [1]}, schema=pa.schema([("id", pa.int64())]))
    with pytest.raises(BadMessage) as err:
        roundtrip(encode_data(other, "src/0", 0, 0))
    assert err.value.reason == "schema_mismatch" and "a.out -> b.in" in str(err.value)


def test_lying_fingerprint_is_caught_by_the_body_check() -> None:
    other = pa.RecordBatch.from_pydict({"id": [1]}, schema=pa.schema([("id", pa.int64())]))
    header, body = encode_data(other, "src/0", 0, 0)
    forged = json.loads(header)
    forged["fp"] = json.loads(encode_data(batch(), "x", 0, 0)[0])["fp"]
    with pytest.raises(BadMessage) as err:
        decode_data(forged, body, SCHEMA, "e")
    assert err.value.reason == "schema_mismatch" and "'text' (string) is missing" in str(err.value)
    # A header that names another schema than its (conforming) body is refused as well.
    good_header, good_body = encode_data(batch(), "src/0", 0, 0)
    lying = {**json.loads(good_header), "fp": "0123456789abcdef"}
    with pytest.raises(BadMessage, match="not the body schema"):
        decode_data(lying, good_body, SCHEMA, "e")


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (b"x" * (MAX_HEADER_BYTES + 1), "header_too_large"),
        (b"\xff\xfe not json", "header_json"),
        (b"[1, 2]", "header_fields"),
        (b'{"kind": "data", "producer": "p"}', "header_fields"),
        (
            b'{"kind": "data", "producer": "p", "seq": "1", "version": 0, "rows": 1, "fp": "x"}',
            "header_fields",
        ),
        (b'{"kind": "teleport"}', "header_fields"),
    ],
)
def test_bad_headers(header: bytes, reason: str) -> None:
    with pytest.raises(BadMessage) as err:
        decode_header(header)
    assert err.value.reason == reason


def test_hundred_megabyte_header_is_rejected_without_parsing() -> None:
    with pytest.raises(BadMessage) as err:
        decode_header(memoryview(bytearray(100 * 2**20)))
    assert err.value.reason == "header_too_large"


@pytest.mark.parametrize("cut", [0, 1, 50, -1])
def test_truncated_ipc_body(cut: int) -> None:
    header, body = encode_data(batch(), "src/0", 0, 0)
    data = bytes(body)[:cut] if cut >= 0 else bytes(body)[:-40]  # -8 would only drop EOS
    with pytest.raises(BadMessage) as err:
        decode_data(decode_header(header), data, SCHEMA, "e")
    assert err.value.reason in ("ipc_error", "rows_mismatch")


def test_row_count_must_match_header() -> None:
    header, body = encode_data(batch(3), "src/0", 0, 0)
    fields = decode_header(header)
    fields["rows"] = 4
    with pytest.raises(BadMessage) as err:
        decode_data(fields, body, SCHEMA, "e")
    assert err.value.reason == "rows_mismatch"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512), st.binary(max_size=2048))
def test_fuzz_random_frames_only_ever_raise_bad_message(header: bytes, body: bytes) -> None:
    with contextlib.suppress(BadMessage):
        decode_data(decode_header(header), body, SCHEMA, "e")


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=10_000), st.binary(min_size=1, max_size=64))
def test_fuzz_corrupted_real_bodies(position: int, junk: bytes) -> None:
    header, body = encode_data(batch(4), "src/0", 0, 0)
    data = bytearray(bytes(body))
    at = position % len(data)
    data[at : at + len(junk)] = junk
    try:
        message = decode_data(decode_header(header), bytes(data), SCHEMA, "e")
    except BadMessage:
        return
    assert message.batch.num_rows == 4  # a corruption that still parses keeps the row count


_ANY_JSON = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["data", "hello", "credit", "eos", "eos_ack", "other"]),
    st.dictionaries(
        st.sampled_from(["producer", "seq", "version", "rows", "fp", "sent_at", "n", "edge"]),
        _ANY_JSON,
    ),
    st.binary(max_size=256),
)
def test_fuzz_well_formed_json_headers_only_ever_raise_bad_message(
    kind: str, fields: dict[str, object], body: bytes
) -> None:
    frame = json.dumps({"kind": kind, **fields}).encode()
    with contextlib.suppress(BadMessage):
        header = decode_header(frame)
        if header["kind"] == "data":
            decode_data(header, body, SCHEMA, "e")


def test_decoded_batch_points_into_the_received_frame() -> None:
    zctx = zmq.Context()
    a, b = zctx.socket(zmq.PAIR), zctx.socket(zmq.PAIR)
    a.bind("inproc://codec")
    b.connect("inproc://codec")
    big = pa.RecordBatch.from_pydict({"id": list(range(50_000)), "text": ["x"] * 50_000}, SCHEMA)
    a.send_multipart(encode_data(big, "p", 0, 0), copy=False)
    header, body = b.recv_multipart(copy=False)
    message = decode_data(decode_header(header.buffer), body.buffer, SCHEMA, "e")
    frame = pa.py_buffer(body.buffer)
    ids = message.batch.column("id").buffers()[1]
    assert frame.address <= ids.address < frame.address + frame.size  # no copy was made
    assert message.batch.equals(big)
    for socket in (a, b):
        socket.close(linger=0)
    zctx.term()
