"""Arrow record batches to ZeroMQ frames and back. No sockets here.

Rules:
- A data message is two frames: a small JSON header (kind, schema fingerprint, producer,
  sequence number, policy version, rows) and one Arrow IPC stream holding exactly one batch.
  Control messages between the two ends of an edge (hello, credit, eos) are a header alone.
- Encoding serialises the batch once; the body frame is handed to ZeroMQ without a further
  copy. Decoding reads the batch straight out of the received frame's memory.
- Decoding trusts nothing: frame count, header size (``MAX_HEADER_BYTES``, checked before
  parsing), header JSON and field types, fingerprint against the port's schema, and the IPC
  body are all checked. Every failure is a ``BadMessage`` with a ``reason`` code, never another
  exception, so a receiver can count it and carry on.
- Never pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

import pyarrow as pa

from areal_flow.schema import fingerprint, schema_difference

MAX_HEADER_BYTES: Final = 4096
KINDS: Final = ("data", "hello", "credit", "eos")
_FIELD_TYPES: Final[dict[str, type]] = {
    "kind": str,
    "producer": str,
    "seq": int,
    "version": int,
    "rows": int,
    "fp": str,
    "n": int,
}
_REQUIRED: Final[dict[str, tuple[str, ...]]] = {
    "data": ("kind", "producer", "seq", "version", "rows", "fp"),
    "hello": ("kind", "producer"),
    "credit": ("kind", "n"),
    "eos": ("kind", "producer"),
}


class BadMessage(ValueError):
    """A message that cannot be accepted; ``reason`` is a short code for counting."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True)
class Message:
    """A decoded data message."""

    producer: str
    seq: int
    version: int
    batch: pa.RecordBatch


class Schemas:
    """Fingerprints computed once per schema object (they are on every message)."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[pa.Schema, str]] = {}

    def fingerprint(self, schema: pa.Schema) -> str:
        hit = self._cache.get(id(schema))
        if hit is not None and hit[0] is schema:
            return hit[1]
        value = fingerprint(schema)
        self._cache[id(schema)] = (schema, value)
        return value


_SCHEMAS = Schemas()


def encode_data(batch: pa.RecordBatch, producer: str, seq: int, version: int) -> list[Any]:
    """[header, body] for one batch; the body is an Arrow buffer (sent without copying)."""
    header = {
        "kind": "data",
        "producer": producer,
        "seq": seq,
        "version": version,
        "rows": batch.num_rows,
        "fp": _SCHEMAS.fingerprint(batch.schema),
    }
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return [_dump(header), sink.getvalue()]


def encode_control(kind: str, **fields: Any) -> list[bytes]:
    """[header] for a hello, credit or eos message."""
    return [_dump({"kind": kind, **fields})]


def decode_header(frame: bytes | memoryview) -> dict[str, Any]:
    """The checked header of any message."""
    if len(frame) > MAX_HEADER_BYTES:
        raise BadMessage("header_too_large", f"{len(frame)} bytes > {MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(frame))
    except (ValueError, UnicodeDecodeError) as err:
        raise BadMessage("header_json", str(err)[:200]) from None
    if not isinstance(header, dict) or header.get("kind") not in KINDS:
        raise BadMessage("header_fields", f"no known 'kind' (one of {', '.join(KINDS)})")
    for key in _REQUIRED[header["kind"]]:
        value = header.get(key)
        if not isinstance(value, _FIELD_TYPES[key]) or isinstance(value, bool):
            raise BadMessage(
                "header_fields", f"field {key!r} missing or not {_FIELD_TYPES[key].__name__}"
            )
    return header


def decode_data(
    header: dict[str, Any], body: Any, expected: pa.Schema | None, edge: str
) -> Message:
    """The batch in ``body``, checked against the port's schema (None accepts any schema)."""
    if expected is not None:
        want = _SCHEMAS.fingerprint(expected)
        if header["fp"] != want:
            raise BadMessage(
                "schema_mismatch",
                f"edge {edge}: message from {header['producer']} has schema fingerprint "
                f"{header['fp']}, the port expects {want}",
            )
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(body))
        batch = reader.read_next_batch()
        try:
            reader.read_next_batch()
        except StopIteration:
            pass
        else:
            raise BadMessage("ipc_error", "more than one batch in one message")
    except (pa.ArrowInvalid, pa.ArrowException, StopIteration, OSError) as err:
        raise BadMessage("ipc_error", f"edge {edge}: {str(err)[:200] or 'empty stream'}") from None
    if expected is not None and not batch.schema.equals(expected):
        diff = "; ".join(schema_difference(batch.schema, expected)) or "field order or nullability"
        raise BadMessage("schema_mismatch", f"edge {edge}: body schema differs: {diff}")
    if batch.num_rows != header["rows"]:
        raise BadMessage(
            "rows_mismatch", f"header says {header['rows']} rows, body has {batch.num_rows}"
        )
    return Message(header["producer"], header["seq"], header["version"], batch)


def _dump(header: dict[str, Any]) -> bytes:
    return json.dumps(header, separators=(",", ":")).encode()
