"""The group ledger and the resume point, as pure logic: hand-made reports, hand-made folders."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from areal_flow.runtime.ledger import Ledger, read_ledger
from areal_flow.runtime.resume import ResumeError, resume_point, resumed_gate
from areal_flow.runtime.staleness import StalenessController

RANKS = {"prompts": 0, "gen": 1, "reward": 2, "filter": 3, "trainer": 4}
UPSTREAM = {"gen": {"prompts"}, "reward": {"gen"}, "filter": {"reward"}, "trainer": {"filter"}}
SRC = "prompts/0"


def ledger(path: Path | None = None, batch: int = 2, lag: int | None = 1) -> Ledger:
    return Ledger(StalenessController(batch, lag), RANKS, UPSTREAM, path)


def issue(book: Ledger, group: str, n: int = 4, index: int = 0) -> None:
    book.gate.admit(1)  # the gate counts groups; the ledger follows their n trajectories
    state = {"position": {"epoch": 0, "index": index}, "walked": index}
    after = {"position": {"epoch": 0, "index": index + 1}, "walked": index + 1}
    book.issued(SRC, "prompts", {group: n}, state, after)


def move(book: Ledger, group: str, node: str, n: int = 4) -> None:
    book.took(f"{node}/0", node, {group: n})
    book.sent(f"{node}/0", node, {group: n})


def test_a_group_settles_when_all_its_trajectories_are_resolved() -> None:
    book = ledger()
    issue(book, "a")
    for node in ("gen", "reward"):
        move(book, "a", node)
    book.took("filter/0", "filter", {"a": 4})
    assert book.rejected({"a": 1}) == []  # one trajectory dropped, three go on
    assert book.gate.running == 1  # not settled yet
    settled = book.accepted(["a", "a", "a"], [0, 0, 0])
    assert [r.group for r in settled] == ["a"] and settled[0].source == SRC
    gate = book.gate
    # The group reached the trainer short of a row: one accepted group, nothing rejected.
    assert (gate.admitted, gate.accepted, gate.rejected, gate.running) == (1, 1, 0, 0)
    assert gate.lag_histogram == {0: 3}
    assert book.unsettled() == []


def test_a_group_filtered_out_whole_gives_its_capacity_back() -> None:
    book = ledger(lag=0)
    issue(book, "a")
    issue(book, "b")
    assert book.gate.capacity == 0
    assert [r.group for r in book.rejected({"a": 4})] == ["a"]
    assert (book.gate.rejected, book.gate.capacity) == (1, 1)


def test_a_dead_generator_loses_what_it_held_and_what_was_on_its_way() -> None:
    book = ledger(lag=None)
    for i, group in enumerate("abcd"):
        issue(book, group, index=i)
    move(book, "a", "gen")  # a: sent on to the verifier (may sit in gen's send queue)
    book.took("reward/0", "reward", {"b": 4})  # b: safe downstream
    move(book, "b", "gen")  # ... a late report from gen cannot move b back
    book.took("gen/0", "gen", {"c": 4})  # c: generating
    # d: sent by the source, maybe in gen's receive queue
    lost = book.lose("gen/0", "gen", "exited with code -9")
    assert lost == {SRC: ["a", "c", "d"]}
    assert (book.gate.running, book.gate.lost) == (1, 3)  # their capacity is back
    assert book.groups["b"].node == "reward"


def test_a_reissued_group_counts_once_whichever_copy_arrives() -> None:
    book = ledger(lag=None)
    issue(book, "a")
    book.took("gen/0", "gen", {"a": 4})
    book.lose("gen/0", "gen", "killed")
    issue(book, "a")  # the re-issue: counted again
    assert book.gate.running == 1
    settled = book.accepted(["a"] * 4, [0] * 4)  # the first copy to arrive settles it
    assert [r.group for r in settled] == ["a"]
    assert book.accepted(["a"] * 4, [1] * 4) == []  # the other copy is a duplicate
    issue(book, "a")  # a third copy issued later (a stale re-issue) is cancelled at once
    gate = book.gate
    assert (gate.accepted, gate.running, gate.lost, book.duplicates) == (1, 0, 1, 4)
    assert gate.admitted == 2  # the cancelled copy is not admitted work


def test_events_are_appended_to_the_run_folder(tmp_path: Path) -> None:
    book = ledger(tmp_path / "ledger.jsonl")
    issue(book, "a")
    book.took("gen/0", "gen", {"a": 4})
    book.lose("gen/0", "gen", "killed")
    issue(book, "a")
    book.accepted(["a"] * 4)
    book.close()
    events = read_ledger(tmp_path)
    assert [e["e"] for e in events] == ["issued", "lost", "reissued", "accepted", "settled"]
    assert events[1]["why"] == "killed" and events[3]["counted"] == 4
    assert events[4]["accepted"] is True
    (tmp_path / "ledger.jsonl").write_text(
        (tmp_path / "ledger.jsonl").read_text() + '{"e":"iss'
    )  # a line cut short by a crash
    assert len(read_ledger(tmp_path)) == 5


# -- resume ----------------------------------------------------------------------------------


def checkpoint(run_dir: Path, step: int, trained: list[str], pending: list[str]) -> None:
    """A checkpoint's data files as the trainer writes them (model files are not read)."""
    folder = run_dir / "checkpoints" / f"step_{step}"
    folder.mkdir(parents=True)
    meta = {"step": step, "version": step, "trained_ids": trained, "next_minibatch": 0}
    (folder / "trainer.json").write_text(json.dumps(meta))
    groups = [t.rsplit("/", 1)[0] for t in pending]
    samples = [int(t.rsplit("/", 1)[1]) for t in pending]
    table = pa.table({"group_id": groups, "sample_index": pa.array(samples, pa.int32())})
    sink = pa.OSFile(str(folder / "pending.arrow"), "wb")
    with sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    (run_dir / "checkpoints" / "latest").write_text(f"step_{step}\n")


def ids(group: str, n: int = 4) -> list[str]:
    return [f"{group}/{s}" for s in range(n)]


def test_resume_restarts_the_source_at_its_oldest_unresolved_group(tmp_path: Path) -> None:
    book = ledger(tmp_path / "ledger.jsonl", batch=2, lag=None)
    for i, group in enumerate("abcdef"):
        issue(book, group, index=i)
    book.rejected({"b": 4})  # filtered out whole: resolved
    book.accepted(["a"] * 4 + ["c"] * 4 + ["e"] * 4)
    book.close()
    # The checkpoint (step 1) trained a and c, keeps e pending; d and f were in flight.
    checkpoint(tmp_path, 1, ids("a") + ids("c"), ids("e"))
    point = resume_point(tmp_path)
    assert point.version == 1 and point.pending == 4 and point.held == 3
    start = point.sources[SRC]
    assert start.state == {"position": {"epoch": 0, "index": 3}, "walked": 3}  # before d
    assert start.skip == ["e"]  # f comes again, e does not
    gate = resumed_gate(point, StalenessController(2, None))
    assert (gate.version, gate.accepted, gate.running) == (1, 3, 0)  # a, c trained; e pending
    assert (gate.admitted, gate.rejected, gate.lost) == (6, 1, 2)  # d and f died in flight


def test_groups_trained_after_the_checkpoint_are_issued_again(tmp_path: Path) -> None:
    book = ledger(tmp_path / "ledger.jsonl", lag=None)
    for i, group in enumerate("abc"):
        issue(book, group, index=i)
    book.accepted(["a"] * 4 + ["b"] * 4 + ["c"] * 4)
    book.close()
    checkpoint(tmp_path, 1, ids("a"), [])  # b and c were trained after it, then lost
    start = resume_point(tmp_path).sources[SRC]
    assert start.state == {"position": {"epoch": 0, "index": 1}, "walked": 1}
    assert start.skip == []


def test_everything_resolved_resumes_after_the_last_group(tmp_path: Path) -> None:
    book = ledger(tmp_path / "ledger.jsonl", lag=None)
    issue(book, "a")
    book.accepted(["a"] * 4)
    book.close()
    checkpoint(tmp_path, 1, ids("a"), [])
    start = resume_point(tmp_path).sources[SRC]
    assert start.state == {"position": {"epoch": 0, "index": 1}, "walked": 1}


def test_resume_without_a_checkpoint_names_the_folder(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    with pytest.raises(ResumeError, match=f"cannot resume {tmp_path}: it holds no checkpoint"):
        resume_point(tmp_path)
    with pytest.raises(ResumeError, match="no such run folder"):
        resume_point(tmp_path / "missing")


def test_lose_and_cancel_give_capacity_back() -> None:
    gate = StalenessController(batch_groups=4, max_lag=0)
    gate.admit(4)
    assert gate.capacity == 0
    gate.lose(4)
    assert (gate.capacity, gate.lost, gate.admitted) == (4, 4, 4)
    gate.admit(4)
    gate.cancel(4)
    assert (gate.capacity, gate.admitted, gate.running) == (4, 4, 0)
    with pytest.raises(ValueError, match="only 0 groups are in flight"):
        gate.lose(1)
