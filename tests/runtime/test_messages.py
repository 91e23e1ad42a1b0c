"""Control-plane messages on the wire: every message of both unions round-trips as JSON, and a
frame that is not a message is refused (the driver counts it as ignored)."""

from __future__ import annotations

import json
import math
from typing import Any, get_args

import pytest

from areal_flow.runtime import messages as m
from areal_flow.runtime.driver import _control_message

FROM_WORKER = [
    m.Hello(pid=12),
    m.Ready(),
    m.Heartbeat(metrics={"rows_in": 3.0, "edge.0.depth": 1.0}),
    m.Admit(id=7, groups=4),
    m.Cancel(groups=2),
    m.Issued(groups={"0:1": 4}, before={"position": {"index": 1}}, after=None),
    m.Took(groups={"0:1": 4}),
    m.Sent(groups={"0:1": 4}),
    m.Accepted(n=2, versions=[0, 1], rows=["0:1", "0:1"]),
    m.Accepted(n=1, versions=None, rows=["0:2"]),
    m.Rejected(n=1, groups={"0:1": 1}),
    m.Loaded(version=3),
    m.VersionReport(version=3, notice={"version": 3, "path": "/w/3"}),
    m.Finished(metrics={"busy_s": 0.5}),
    m.ErrorReport(error="ValueError: no", traceback="Traceback ..."),
]
FROM_DRIVER = [
    m.Start(version=2, ledger=True, ended={0: 1, 3: 2}, weights={"version": 2}),
    m.Stop(),
    m.Drain(),
    m.NewVersion(version=4),
    m.Capacity(),
    m.AdmitReply(id=7, granted=True),
    m.Reissue(groups=["0:1"]),
    m.Settled(groups=["0:1", "0:2"]),
    m.Ping(),
]


def _members(union: Any) -> set[type]:
    members, _field = get_args(union)  # Annotated[Union[...], Field(discriminator=...)]
    return set(get_args(members))


def test_every_message_round_trips_as_one_json_object() -> None:
    # A new member of either union must be added above: the unions are the list.
    assert {type(x) for x in FROM_WORKER} == _members(m.WorkerMessage)
    assert {type(x) for x in FROM_DRIVER} == _members(m.DriverMessage)
    for message in FROM_WORKER:
        frame = m.encode(message)
        assert json.loads(frame)["type"] == message.type
        assert m.from_worker(frame) == message
    for message in FROM_DRIVER:
        assert m.from_driver(m.encode(message)) == message


def test_nan_and_inf_metrics_arrive_as_sent() -> None:
    frame = m.encode(m.Heartbeat(metrics={"loss": math.nan, "capacity": math.inf}))
    metrics = json.loads(frame)["metrics"]  # the constants json itself reads and writes
    assert math.isnan(metrics["loss"]) and metrics["capacity"] == math.inf
    decoded = m.from_worker(frame)
    assert isinstance(decoded, m.Heartbeat)
    assert math.isnan(decoded.metrics["loss"]) and decoded.metrics["capacity"] == math.inf


@pytest.mark.parametrize(
    "frame",
    [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"groups": 2}',  # no type
        b'{"type": "nonsense"}',
        b'{"type": "ping"}',  # the driver's message, sent to the driver
        b'{"type": "admit", "id": 1}',  # a field missing
        b'{"type": "admit", "id": "one", "groups": 1}',  # a field of the wrong type
        b'{"type": "cancel", "groups": 1, "extra": 0}',  # a field no message has
        b'{"type": "heartbeat", "metrics": {"x": "high"}}',
    ],
)
def test_a_frame_that_is_no_replica_message_is_refused(frame: bytes) -> None:
    with pytest.raises(ValueError):
        m.from_worker(frame)
    assert _control_message([b"gen/0", frame]) is None


def test_the_driver_takes_only_identity_and_one_frame() -> None:
    frame = m.encode(m.Ready())
    assert _control_message([b"gen/0", frame]) == m.Ready()
    assert _control_message([frame]) is None
    assert _control_message([b"gen/0", b"", frame]) is None
