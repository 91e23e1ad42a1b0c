"""Arrow record batches to ZeroMQ frames and back. No sockets here.

Rules:
- A data message is two frames: a small JSON header (kind, schema fingerprint, producer,
  sequence number, policy version, rows, send time) and one Arrow IPC stream holding exactly
  one batch. Control messages between the two ends of an edge (hello, credit, eos, eos_ack) are
  a header alone.
- Encoding serialises the batch once; the body frame is handed to ZeroMQ without a further
  copy. Decoding reads the batch straight out of the received frame's memory.
- Decoding trusts nothing: header size (``MAX_HEADER_BYTES``, checked before parsing), header
  JSON and field types, fingerprint against the port's schema, and the IPC body are all
  checked. Every failure is a ``BadMessage`` with a ``reason`` code, never another exception,
  so a receiver can count it and carry on.
- Never pickle.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Final

import pyarrow as pa

from areal_flow.schema import fingerprint, schema_difference

MAX_HEADER_BYTES: Final = 4096
_FIELD_TYPES: Final[dict[str, type | tuple[type, ...]]] = {
    "kind": str,
    "producer": str,
    "edge": str,
    "seq": int,
    "version": int,
    "rows": int,
    "fp": str,
    "n": int,
    "sent_at": (float, int),
}
_REQUIRED: Final[dict[str, tuple[str, ...]]] = {
    "data": ("kind", "producer", "seq", "version", "rows", "fp", "sent_at"),
    "hello": ("kind", "producer", "edge"),  # producer -> consumer, first on every connection
    "credit": ("kind", "n"),  # consumer -> producer: you may send n more batches
    "eos": ("kind", "producer"),  # producer -> consumer: nothing more will come
    "eos_ack": ("kind",),  # consumer -> producer: eos (and all data before it) arrived
}
KINDS: Final = tuple(_REQUIRED)
# Explicit options: the defaults read two environment variables on every writer.
_WRITE_OPTIONS: Final = pa.ipc.IpcWriteOptions()
_IPC_ERRORS: Final = (pa.ArrowException, ValueError, OSError, EOFError, StopIteration)


class BadMessage(ValueError):
    """A message that cannot be accepted; ``reason`` is a short code for counting.

    Reasons: frame_count, header_too_large, header_json, header_fields, unknown_sender,
    wrong_edge, schema_mismatch, ipc_error, rows_mismatch, no_credit, after_eos.
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True)
class Message:
    """A decoded data message: the batch and its header."""

    producer: str
    seq: int  # per producer and edge, from 0
    version: int  # the producer's policy version when it sent the batch
    batch: pa.RecordBatch
    sent_at: float = 0.0  # producer's wall clock (unix s), for edge latency metrics


_fingerprints: dict[pa.Schema, str] = {}


def schema_fingerprint(schema: pa.Schema) -> str:
    """``areal_flow.schema.fingerprint``, memoised: it is on every message and costs ~30 µs."""
    value = _fingerprints.get(schema)
    if value is None:
        if len(_fingerprints) >= 256:  # a process sees few schemas; the bound rules out a leak
            _fingerprints.clear()
        value = _fingerprints[schema] = fingerprint(schema)
    return value


def encode_data(batch: pa.RecordBatch, producer: str, seq: int, version: int) -> list[Any]:
    """[header, body] for one batch; the body is an Arrow buffer (send it with copy=False)."""
    header = {
        "kind": "data",
        "producer": producer,
        "seq": seq,
        "version": version,
        "rows": batch.num_rows,
        "fp": schema_fingerprint(batch.schema),
        "sent_at": time.time(),
    }
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema, options=_WRITE_OPTIONS) as writer:
        writer.write_batch(batch)
    return [_dump(header), sink.getvalue()]


def encode_control(kind: str, **fields: Any) -> list[bytes]:
    """[header] for a hello, credit, eos or eos_ack message."""
    missing = set(_REQUIRED[kind]) - {"kind", *fields}
    if missing:
        raise ValueError(f"a {kind!r} message needs {sorted(missing)}")
    return [_dump({"kind": kind, **fields})]


def decode_header(frame: bytes | memoryview) -> dict[str, Any]:
    """The checked header of any message."""
    if len(frame) > MAX_HEADER_BYTES:  # before any parsing: a huge frame costs nothing here
        raise BadMessage("header_too_large", f"{len(frame)} bytes > {MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(frame))
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise BadMessage("header_json", str(err)[:200]) from None
    if not isinstance(header, dict) or header.get("kind") not in KINDS:
        raise BadMessage("header_fields", f"no known 'kind' (one of {', '.join(KINDS)})")
    for key in _REQUIRED[header["kind"]]:
        value = header.get(key)
        if not isinstance(value, _FIELD_TYPES[key]) or isinstance(value, bool):
            raise BadMessage("header_fields", f"field {key!r} missing or of the wrong type")
    return header


def decode_data(
    header: dict[str, Any], body: Any, expected: pa.Schema | None, edge: str
) -> Message:
    """The batch in ``body`` (any buffer), checked against the port's schema (None: any)."""
    batch, body_fp = _read_one_batch(body, edge)
    if expected is not None:
        want = schema_fingerprint(expected)
        if header["fp"] != want or body_fp != want:
            diff = "; ".join(schema_difference(batch.schema, expected))
            raise BadMessage(
                "schema_mismatch",
                f"edge {edge}: {header['producer']} sent schema {header['fp']}, the port "
                f"expects {want}: {diff or 'same fields, other order or nullability'} "
                "(both ends of an edge must declare the same record type)",
            )
    if batch.num_rows != header["rows"]:
        raise BadMessage(
            "rows_mismatch", f"header says {header['rows']} rows, body has {batch.num_rows}"
        )
    return Message(
        header["producer"], header["seq"], header["version"], batch, float(header["sent_at"])
    )


def _read_one_batch(body: Any, edge: str) -> tuple[pa.RecordBatch, str]:
    """The batch and its schema's fingerprint (field names may be invalid UTF-8)."""
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(body))  # zero-copy view of the frame
        batch = reader.read_next_batch()
        batch.validate()  # buffer sizes against lengths: cheap, catches lying metadata
        body_fp = schema_fingerprint(batch.schema)
    except _IPC_ERRORS as err:
        raise BadMessage("ipc_error", f"edge {edge}: {str(err)[:200] or 'empty stream'}") from None
    try:
        reader.read_next_batch()
    except StopIteration:
        return batch, body_fp
    except _IPC_ERRORS as err:
        raise BadMessage("ipc_error", f"edge {edge}: after the batch: {str(err)[:200]}") from None
    raise BadMessage("ipc_error", f"edge {edge}: more than one batch in one message")


def _dump(header: dict[str, Any]) -> bytes:
    return json.dumps(header, separators=(",", ":")).encode()
