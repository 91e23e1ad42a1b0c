"""Arrow record batches to ZeroMQ frames and back. No sockets here.

Rules:
- A data message is two frames: a small JSON header (kind, schema fingerprint, producer,
  sequence number, policy version, rows, send time) and one Arrow IPC stream holding exactly
  one batch. Control messages between the two ends of an edge (hello, credit, eos, eos_ack) are
  a header alone.
- Encoding serialises the batch once (one copy of its data, into a buffer of exactly the
  stream's size); the body frame is handed to ZeroMQ without a further copy. Decoding reads
  the batch straight out of the received frame's memory.
- The common case is fast: a sender's schema message is serialised once and reused, and a
  receiver parses each distinct schema message once. A body that is not exactly [schema,
  record batch, end-of-stream] goes through pyarrow's general stream reader, whose verdict
  stands (so the fast path never accepts what the general reader would refuse).
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
from typing import Any, Final, TypeVar

import pyarrow as pa

from areal_flow.schema import fingerprint, null_problems, record_problems

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
_EOS: Final = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # the IPC stream's end marker
_OLD_EOS: Final = b"\x00\x00\x00\x00"  # pre-1.0 end marker, still valid in a stream
_JOIN_BELOW: Final = 1 << 16  # smaller batches: serialise, then join (fewer Python calls)
T = TypeVar("T")
_CACHE_LIMIT: Final = 256  # a process sees few schemas; the bound rules out a leak


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


@dataclass(frozen=True)
class _Schema:
    """A schema with what every message needs of it, computed once."""

    schema: pa.Schema
    fp: str
    message: bytes  # its IPC schema message, the first message of every body


_by_id: dict[int, _Schema] = {}  # id(schema): hashing a schema costs more than the lookup
_by_schema: dict[pa.Schema, _Schema] = {}
_by_message: dict[bytes, _Schema] = {}  # key: the schema message's flatbuffer metadata


def _remember(cache: dict[Any, Any], key: Any, value: T) -> T:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value
    return value


def _schema_info(schema: pa.Schema) -> _Schema:
    info = _by_id.get(id(schema))
    if info is not None and info.schema is schema:  # the cache holds it: the id is not reused
        return info
    info = _by_schema.get(schema)
    if info is None:
        message = schema.serialize().to_pybytes()
        info = _remember(_by_schema, schema, _Schema(schema, fingerprint(schema), message))
    return _remember(_by_id, id(schema), _Schema(schema, info.fp, info.message))


def schema_fingerprint(schema: pa.Schema) -> str:
    """``areal_flow.schema.fingerprint``, memoised: it is on every message and costs ~30 µs."""
    return _schema_info(schema).fp


def encode_data(batch: pa.RecordBatch, producer: str, seq: int, version: int) -> list[Any]:
    """[header, body] for one batch; the body is an Arrow buffer (send it with copy=False)."""
    info = _schema_info(batch.schema)
    # Formatted by hand: json.dumps of a dict is a third of the cost of a small message.
    header = (
        f'{{"kind":"data","producer":{_json_string(producer)},"seq":{int(seq)},'
        f'"version":{int(version)},"rows":{batch.num_rows},"fp":"{info.fp}",'
        f'"sent_at":{time.time()!r}}}'
    ).encode()
    return [header, _ipc_stream(batch, info)]


def _ipc_stream(batch: pa.RecordBatch, info: _Schema) -> Any:
    """The batch as an IPC stream [schema, batch, end-of-stream]: one copy of its data."""
    if batch.get_total_buffer_size() < _JOIN_BELOW:
        return b"".join((info.message, batch.serialize(), _EOS))
    size = len(info.message) + pa.ipc.get_record_batch_size(batch) + len(_EOS)
    buffer = pa.allocate_buffer(size)
    sink = pa.FixedSizeBufferWriter(buffer)
    with pa.ipc.new_stream(sink, batch.schema, options=_WRITE_OPTIONS) as writer:
        writer.write_batch(batch)
    if sink.tell() != size:  # never seen; a stream with trailing zeros would be refused
        raise RuntimeError(f"IPC stream is {sink.tell()} bytes, {size} were reserved")
    return buffer


_json_strings: dict[str, str] = {}


def _json_string(text: str) -> str:
    value = _json_strings.get(text)
    if value is None:
        if len(_json_strings) >= _CACHE_LIMIT:
            _json_strings.clear()
        value = _json_strings[text] = json.dumps(text)
    return value


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
        problems = carries(batch, body_fp, expected)
        if problems or header["fp"] != body_fp:
            raise BadMessage(
                "schema_mismatch",
                f"edge {edge}: {header['producer']} sent schema {header['fp']} that does not "
                f"carry the port's record: {'; '.join(problems) or 'the header fingerprint is '}"
                f"{'' if problems else f'not the body schema {body_fp}'} (both ends of an edge "
                "must declare the same record type; extra columns are fine)",
            )
    if batch.num_rows != header["rows"]:
        raise BadMessage(
            "rows_mismatch", f"header says {header['rows']} rows, body has {batch.num_rows}"
        )
    return Message(
        header["producer"], header["seq"], header["version"], batch, float(header["sent_at"])
    )


_carries: dict[tuple[str, str], list[str]] = {}  # (batch fp, record fp) → schema problems


def carries(batch: pa.RecordBatch, batch_fp: str, record: pa.Schema) -> list[str]:
    """Why ``batch`` (whose schema has fingerprint ``batch_fp``) does not carry ``record``;
    [] when it does. The schema part is memoised per pair of fingerprints."""
    key = (batch_fp, schema_fingerprint(record))
    problems = _carries.get(key)
    if problems is None:
        problems = _remember(_carries, key, record_problems(batch.schema, record))
    return problems or null_problems(batch, record)


def _read_one_batch(body: Any, edge: str) -> tuple[pa.RecordBatch, str]:
    """The batch and its schema's fingerprint (field names may be invalid UTF-8)."""
    buffer = pa.py_buffer(body)  # zero-copy view of the frame
    try:
        fast = _read_common_form(buffer)
    except _IPC_ERRORS:
        fast = None  # the general reader below gives the verdict and its message
    return fast if fast is not None else _read_any_form(buffer, edge)


def _read_common_form(buffer: pa.Buffer) -> tuple[pa.RecordBatch, str] | None:
    """[schema, record batch, end-of-stream] read message by message; None: another form."""
    reader = pa.BufferReader(buffer)
    first = pa.ipc.read_message(reader)
    if first.type != "schema":
        return None
    key = first.metadata.to_pybytes()
    info = _by_message.get(key)
    if info is None:
        schema = pa.ipc.read_schema(first)
        info = _remember(_by_message, key, _Schema(schema, fingerprint(schema), b""))
    second = pa.ipc.read_message(reader)
    if second.type != "record batch":
        return None
    end = reader.tell()
    if buffer.size - end > len(_EOS) or buffer[end:].to_pybytes() not in (_EOS, _OLD_EOS, b""):
        return None
    batch = pa.ipc.read_record_batch(second, info.schema)
    batch.validate()  # buffer sizes against lengths: cheap, catches lying metadata
    return batch, info.fp


def _read_any_form(buffer: pa.Buffer, edge: str) -> tuple[pa.RecordBatch, str]:
    try:
        reader = pa.ipc.open_stream(buffer)
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
