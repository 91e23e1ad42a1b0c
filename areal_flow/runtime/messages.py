"""Control-plane messages: one typed model per message, one union per direction.

Rules:
- The unions are the list of messages: ``WorkerMessage`` (a replica to the driver) and
  ``DriverMessage`` (the driver to a replica). Each member is a frozen Pydantic model whose
  ``type`` literal is its discriminator on the wire; its docstring says when it is sent. A new
  message is a new member, nothing else to keep in step. ``version`` travels both ways with
  different fields (``VersionReport`` up, ``NewVersion`` down).
- On the wire a message is one frame of JSON (never pickle). NaN and ±inf (a diverged loss,
  an unbounded gauge) travel as JSON's ``NaN``/``Infinity`` constants, as ``json.dumps``
  writes them, so a metric arrives as it was sent.
- Decoding validates: a frame that is not JSON, or whose ``type`` is unknown or whose fields
  are missing, extra or of the wrong type, raises ``ValueError`` (Pydantic's
  ``ValidationError``); the driver counts it as ignored and goes on.
- Pydantic, not msgspec: the driver decodes every replica's heartbeats, and ``bench/control.py``
  measures Pydantic's ``validate_json`` of a heartbeat at ~3 µs, less than half the bare
  ``json.loads`` the untyped frames took (~8 µs). msgspec is faster still (~1.4 µs) but its JSON
  has no ``NaN``: a diverged loss would turn a heartbeat into a dropped frame.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class Message(BaseModel):
    """Base of every control message: frozen, unknown fields rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")


# -- a replica to the driver --------------------------------------------------------------


class Hello(Message):
    """The replica's process is up (sent before ``setup``)."""

    type: Literal["hello"] = "hello"
    pid: int = Field(description="The replica's process id.")


class Ready(Message):
    """``setup`` finished: the replica waits for ``start``."""

    type: Literal["ready"] = "ready"


class Heartbeat(Message):
    """Sent every ``HEARTBEAT_S``: the replica is alive, with its metrics."""

    type: Literal["heartbeat"] = "heartbeat"
    metrics: dict[str, float] = Field(description="Worker, edge and node metrics by name.")


class Admit(Message):
    """A gated source asks the staleness gate to admit prompt groups; answered by
    ``AdmitReply``."""

    type: Literal["admit"] = "admit"
    id: int = Field(description="Request id, echoed by the reply.")
    groups: int = Field(description="Prompt groups of the batch the source wants to issue.")


class Cancel(Message):
    """Admitted prompt groups that were never sent (an empty draw, skipped groups, a late
    grant the source no longer waits for): their capacity goes back to the gate."""

    type: Literal["cancel"] = "cancel"
    groups: int = Field(description="How many admitted groups to give back.")


class Issued(Message):
    """A gated source is about to send these groups (ledger on), with its state around the
    draw, from which a resumed run restarts."""

    type: Literal["issued"] = "issued"
    groups: dict[str, int] = Field(description="Group id → trajectories.")
    before: dict[str, Any] | None = Field(description="The source's state before the draw.")
    after: dict[str, Any] | None = Field(description="The source's state after the draw.")


class Took(Message):
    """The replica received a batch of these groups (ledger on)."""

    type: Literal["took"] = "took"
    groups: dict[str, int] = Field(description="Group id → rows received.")


class Sent(Message):
    """The replica sent a batch of these groups on (ledger on)."""

    type: Literal["sent"] = "sent"
    groups: dict[str, int] = Field(description="Group id → rows sent.")


class Accepted(Message):
    """Trajectories reached the trainer."""

    type: Literal["accepted"] = "accepted"
    n: int = Field(description="Trajectories in the batch.")
    versions: list[int] | None = Field(
        description="Per trajectory, its oldest token's policy version; None when the batch "
        "has no ``versions`` column."
    )
    rows: list[str] = Field(description="Per trajectory, its group id.")


class Rejected(Message):
    """A transform dropped trajectories (a filter)."""

    type: Literal["rejected"] = "rejected"
    n: int = Field(description="Trajectories dropped.")
    groups: dict[str, int] = Field(description="Group id → trajectories dropped.")


class Loaded(Message):
    """A weights consumer loaded a policy version (the gate admits for what is served)."""

    type: Literal["loaded"] = "loaded"
    version: int = Field(description="The policy version now loaded.")


class VersionReport(Message):
    """A weights notice is leaving this replica: the policy version advanced."""

    type: Literal["version"] = "version"
    version: int = Field(description="The new policy version.")
    notice: dict[str, Any] | None = Field(
        None, description="The weights notice (a row of the weights record), kept for restarts."
    )


class Finished(Message):
    """The replica's work is done (end of stream, or stopped), with its last metrics."""

    type: Literal["finished"] = "finished"
    metrics: dict[str, float] = Field(description="Final metrics, as in ``Heartbeat``.")


class ErrorReport(Message):
    """The replica raised; it exits with code 1 next."""

    type: Literal["error"] = "error"
    error: str = Field(description="Exception type and message.")
    traceback: str = Field("", description="The formatted traceback.")


WorkerMessage = Annotated[
    Hello
    | Ready
    | Heartbeat
    | Admit
    | Cancel
    | Issued
    | Took
    | Sent
    | Accepted
    | Rejected
    | Loaded
    | VersionReport
    | Finished
    | ErrorReport,
    Field(discriminator="type"),
]
#: The reports the driver's group ledger applies (``Ledger.handle``).
LedgerReport = Issued | Took | Sent | Cancel | Accepted | Rejected


# -- the driver to a replica --------------------------------------------------------------


class Start(Message):
    """Run, with what a (re)started replica must catch up on."""

    type: Literal["start"] = "start"
    version: int = Field(description="The current policy version.")
    ledger: bool = Field(description="The driver keeps the group ledger: report groups.")
    ended: dict[int, int] = Field(
        description="Input edge index → its producers that already finished."
    )
    weights: dict[str, Any] | None = Field(
        description="The newest weights notice, None before the first."
    )


class Stop(Message):
    """Stop now (the run ends, or fails)."""

    type: Literal["stop"] = "stop"


class Drain(Message):
    """Interrupted: sources stop producing; in-flight data may still land."""

    type: Literal["drain"] = "drain"


class NewVersion(Message):
    """The policy version advanced."""

    type: Literal["version"] = "version"
    version: int = Field(description="The new policy version.")


class Capacity(Message):
    """The staleness gate may admit more now: denied sources ask again."""

    type: Literal["capacity"] = "capacity"


class AdmitReply(Message):
    """The answer to an ``Admit`` request."""

    type: Literal["admit_reply"] = "admit_reply"
    id: int = Field(description="The request's id.")
    granted: bool = Field(description="Whether the groups were admitted.")


class Reissue(Message):
    """To a gated source: these groups died with a replica; issue them again."""

    type: Literal["reissue"] = "reissue"
    groups: list[str] = Field(description="Group ids to issue again.")


class Settled(Message):
    """To a gated source: these groups are settled; forget them."""

    type: Literal["settled"] = "settled"
    groups: list[str] = Field(description="Group ids settled.")


class Ping(Message):
    """The driver is alive (sent to every replica every ``HEARTBEAT_S``)."""

    type: Literal["ping"] = "ping"


DriverMessage = Annotated[
    Start | Stop | Drain | NewVersion | Capacity | AdmitReply | Reissue | Settled | Ping,
    Field(discriminator="type"),
]

_FROM_WORKER: TypeAdapter[WorkerMessage] = TypeAdapter(WorkerMessage)
_FROM_DRIVER: TypeAdapter[DriverMessage] = TypeAdapter(DriverMessage)


def encode(message: Message) -> bytes:
    """One JSON frame."""
    return message.model_dump_json().encode()


def from_worker(frame: bytes) -> WorkerMessage:
    """A replica's message; ValueError for a frame that is not one."""
    return _FROM_WORKER.validate_json(frame)


def from_driver(frame: bytes) -> DriverMessage:
    """The driver's message; ValueError for a frame that is not one."""
    return _FROM_DRIVER.validate_json(frame)
