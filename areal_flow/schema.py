"""Arrow schemas of the records that flow on each kind of port.

Rules:
- A port carries exactly one record type; an edge is valid only when both ends carry the same
  type (or one end says ``any``, used by generic test nodes).
- Each record type extends the previous stage's fields, so a node passes columns through and
  appends its own: prompt ⊂ rollout ⊂ scored.
- Records are *open*: a batch carries a record type when it has every field of the record with
  its type (any order) and no nulls where the record forbids them (``record_problems``). Extra
  columns (a dataset's own fields, a node's additions) travel along and reach downstream nodes;
  a node that rebuilds rows keeps them (``with_extra_columns``).
- ``scored`` holds what the trainer needs (``reward``) plus two generic fields: ``verdict``, a
  short reason ("" when the reward has none) and ``metrics``, named numbers of the reward
  (correct, format, any component) that the trainer, MLflow and the summary report by name.
- One row is one trajectory (rollout, scored) or one prompt group (prompt). Token ids are int32,
  log-probs float32, policy versions int32 (one per response token: the version that sampled it).
- A response may interleave tokens the policy sampled with tokens an episode inserted (tool
  results, observations, chat-template glue): ``loss_mask`` is 1 for sampled tokens, 0 for
  inserted ones. Inserted tokens carry log-prob 0 and the version of the sampled token before
  them; they get no loss, no importance weight and count in no version lag. Single-turn
  responses are all ones. ``episode_metrics`` holds an episode's named numbers (turns, tool
  calls), {} for single-turn rollouts.
- This module knows nothing of torch or zmq.
"""

from __future__ import annotations

import hashlib
from typing import Final

import pyarrow as pa

#: The record types a port may declare. ``any`` accepts every schema (test nodes).
RECORD_TYPES: Final = ("prompt", "rollout", "scored", "weights", "any")

PROMPT_FIELDS: Final[list[pa.Field]] = [
    pa.field("prompt_id", pa.string(), nullable=False),  # stable id of the dataset item
    pa.field("group_id", pa.string(), nullable=False),  # unique per admission (epoch:item)
    pa.field("group_size", pa.int32(), nullable=False),  # n samples wanted for this prompt
    pa.field("epoch", pa.int32(), nullable=False),
    pa.field("level", pa.string(), nullable=False),  # task level / subset, for per-level metrics
    pa.field("prompt", pa.string(), nullable=False),  # text after the chat template
    pa.field("prompt_token_ids", pa.list_(pa.int32()), nullable=False),
    pa.field("answer", pa.string(), nullable=False),  # reference final answer
]

METRICS_TYPE: Final = pa.map_(pa.string(), pa.float32())

ROLLOUT_FIELDS: Final[list[pa.Field]] = [
    *PROMPT_FIELDS,
    pa.field("sample_index", pa.int32(), nullable=False),  # 0..group_size-1 within the group
    pa.field("response", pa.string(), nullable=False),
    pa.field("response_token_ids", pa.list_(pa.int32()), nullable=False),
    pa.field("logprobs", pa.list_(pa.float32()), nullable=False),  # behaviour log π per token
    pa.field("versions", pa.list_(pa.int32()), nullable=False),  # policy version per token
    pa.field("finish_reason", pa.string(), nullable=False),  # stop | length | abort
    pa.field("loss_mask", pa.list_(pa.int8()), nullable=False),  # 1 sampled, 0 inserted
    pa.field("episode_metrics", METRICS_TYPE, nullable=False),
]

SCORED_FIELDS: Final[list[pa.Field]] = [
    *ROLLOUT_FIELDS,
    pa.field("reward", pa.float32(), nullable=False),
    pa.field("verdict", pa.string(), nullable=False),  # why, e.g. correct | wrong | timeout; ""
    pa.field("metrics", METRICS_TYPE, nullable=False),  # named numbers of the reward, may be {}
]

WEIGHTS_FIELDS: Final[list[pa.Field]] = [
    pa.field("version", pa.int64(), nullable=False),
    pa.field("path", pa.string(), nullable=False),  # safetensors folder or shared-memory file
    pa.field(
        "checksum", pa.string(), nullable=False
    ),  # "<algorithm>:<hex>" of the weights file (blake3)
    pa.field("created_at", pa.float64(), nullable=False),  # unix seconds, for publish latency
]

SCHEMAS: Final[dict[str, pa.Schema]] = {
    "prompt": pa.schema(PROMPT_FIELDS),
    "rollout": pa.schema(ROLLOUT_FIELDS),
    "scored": pa.schema(SCORED_FIELDS),
    "weights": pa.schema(WEIGHTS_FIELDS),
}


def schema_for(record_type: str) -> pa.Schema | None:
    """The Arrow schema of ``record_type``; None for ``any``."""
    if record_type == "any":
        return None
    return SCHEMAS[record_type]


def fingerprint(schema: pa.Schema) -> str:
    """A short stable hash of field names and types (metadata ignored).

    Two schemas with the same fingerprint can be decoded into each other without casting.
    """
    text = ";".join(f"{f.name}:{f.type}:{int(f.nullable)}" for f in schema)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def schema_difference(a: pa.Schema, b: pa.Schema) -> list[str]:
    """Human-readable differences between two schemas, one line per field."""
    lines = []
    a_fields = {f.name: f for f in a}
    b_fields = {f.name: f for f in b}
    for name in a_fields.keys() - b_fields.keys():
        lines.append(f"'{name}' only on the producer side ({a_fields[name].type})")
    for name in b_fields.keys() - a_fields.keys():
        lines.append(f"'{name}' only on the consumer side ({b_fields[name].type})")
    for name in a_fields.keys() & b_fields.keys():
        if a_fields[name].type != b_fields[name].type:
            lines.append(f"'{name}': {a_fields[name].type} vs {b_fields[name].type}")
    return sorted(lines)


def record_problems(schema: pa.Schema, record: pa.Schema) -> list[str]:
    """Why ``schema`` does not carry ``record`` (missing fields, other types); [] when it does."""
    problems = []
    for field in record:
        index = schema.get_field_index(field.name)
        if index < 0:
            problems.append(f"'{field.name}' ({field.type}) is missing")
        elif not schema.field(index).type.equals(field.type):
            problems.append(f"'{field.name}': {schema.field(index).type} vs {field.type}")
    return problems


def null_problems(batch: pa.RecordBatch, record: pa.Schema) -> list[str]:
    """Nulls in fields ``record`` declares non-nullable (``batch`` carries ``record``)."""
    return [
        f"'{field.name}' has {batch.column(field.name).null_count} null(s)"
        for field in record
        if not field.nullable and batch.column(field.name).null_count
    ]


def extra_columns(batch: pa.RecordBatch, record: pa.Schema) -> list[str]:
    """Columns of ``batch`` that ``record`` does not define, in batch order."""
    return [name for name in batch.schema.names if record.get_field_index(name) < 0]


def with_extra_columns(
    built: pa.RecordBatch, source: pa.RecordBatch, rows: list[int] | None = None
) -> pa.RecordBatch:
    """``built`` plus ``source``'s columns it lacks (taken at ``rows``, default all): how a node
    that rebuilds a batch row by row passes a dataset's or an upstream node's columns on."""
    for name in source.schema.names:
        if built.schema.get_field_index(name) >= 0:
            continue
        column = source.column(name)
        if rows is not None:
            column = column.take(pa.array(rows, pa.int64()))
        built = built.append_column(source.schema.field(name), column)
    return built


def empty_batch(record_type: str) -> pa.RecordBatch:
    """A zero-row batch of ``record_type`` (handy for tests and for schema checks)."""
    schema = SCHEMAS[record_type]
    return pa.RecordBatch.from_pylist([], schema=schema)
