"""Dataset readers: JSONL, Parquet, save_to_disk folders; field maps; GSM8K answers; bad rows."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from areal_flow.data import (
    DatasetError,
    FieldMap,
    SkippedRow,
    load_problems,
    reference_answer,
)

GSM8K_TRAIN = Path("/work/shared/data/gsm8k/train.jsonl")

ROWS = [
    {"question": "What is 2 + 2?", "answer": "2 + 2 = <<2+2=4>>4\n#### 4"},
    {"question": "How many?", "answer": "Lots.\n#### 1,080"},
    {"question": "Half?", "answer": "\\frac{1}{2}"},
]


def _write_save_to_disk(folder: Path, shards: list[list[dict[str, str]]]) -> None:
    """The layout `datasets.Dataset.save_to_disk` writes: Arrow IPC *stream* shards + json."""
    folder.mkdir(parents=True)
    features = {name: {"dtype": "string", "_type": "Value"} for name in shards[0][0]}
    schema = pa.schema(
        [pa.field(name, pa.string()) for name in shards[0][0]],
        metadata={"huggingface": json.dumps({"info": {"features": features}})},
    )
    files = []
    for i, rows in enumerate(shards):
        name = f"data-{i:05d}-of-{len(shards):05d}.arrow"
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, schema) as w:
            w.write_table(pa.Table.from_pylist(rows, schema=schema))
        files.append({"filename": name})
    info = {"citation": "", "description": "", "features": features, "homepage": "", "license": ""}
    (folder / "dataset_info.json").write_text(json.dumps(info))
    state = {
        "_data_files": files,
        "_fingerprint": "0123456789abcdef",
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": "train",
    }
    (folder / "state.json").write_text(json.dumps(state))


def test_reference_answer_understands_gsm8k_lines() -> None:
    assert reference_answer("work\n#### 72") == "72"
    assert reference_answer("work\n####  1,080  ") == "1080"
    assert reference_answer("#### 1\nmore\n#### -2,500,000") == "-2500000"
    assert reference_answer("  \\frac{1}{2} ") == "\\frac{1}{2}"
    assert reference_answer("(1,2)") == "(1,2)"  # a tuple, not a grouped number
    assert reference_answer("####   ") == ""


def test_jsonl_rows_become_problems(tmp_path: Path) -> None:
    path = tmp_path / "toy.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS) + "\n")
    data = load_problems(path)
    assert [p.answer for p in data] == ["4", "1080", "\\frac{1}{2}"]
    assert [p.id for p in data] == ["toy-0", "toy-1", "toy-2"]
    assert {p.level for p in data} == {"toy"}
    assert data[0].question == "What is 2 + 2?"
    assert data.report.kept == data.report.rows == 3


def test_malformed_jsonl_rows_are_skipped_counted_and_located(tmp_path: Path) -> None:
    lines = [
        json.dumps(ROWS[0]),  # 1 ok
        "{not json",  # 2
        json.dumps({"question": "q"}),  # 3 missing answer
        json.dumps({"question": "q", "answer": "#### "}),  # 4 empty answer
        json.dumps(["a", "list"]),  # 5 not an object
        json.dumps({"question": "  ", "answer": "3"}),  # 6 empty question
        json.dumps({"question": "q", "answer": {"x": 1}}),  # 7 wrong type
        json.dumps(ROWS[1]),  # 8 ok
    ]
    path = tmp_path / "messy.jsonl"
    path.write_text("\n".join(lines) + "\n")
    data = load_problems(path, keep_skipped=3)
    assert len(data) == 2
    report = data.report
    assert report.rows == 8
    assert dict(report.skipped) == {
        "bad_json": 1,
        "missing_answer": 1,
        "empty_answer": 1,
        "not_an_object": 1,
        "empty_question": 1,
        "bad_answer_type": 1,
    }
    assert report.first_skipped == [
        SkippedRow(2, "bad_json"),
        SkippedRow(3, "missing_answer"),
        SkippedRow(4, "empty_answer"),
    ]
    assert "2/8 rows kept" in report.summary()


def test_no_valid_rows_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "empty_answers.jsonl"
    path.write_text(json.dumps({"problem": "q", "solution": "1"}) + "\n")
    with pytest.raises(DatasetError, match=r"empty_answers\.jsonl.*missing_question"):
        load_problems(path)
    # the right field map reads it
    data = load_problems(path, FieldMap(question="problem", answer="solution"))
    assert data[0].answer == "1"


def test_field_map_with_id_and_level(tmp_path: Path) -> None:
    rows = [{"uid": 17, "q": "Q1", "a": 5, "subject": "algebra"}]
    path = tmp_path / "mapped.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n")
    data = load_problems(path, FieldMap(question="q", answer="a", id="uid", level="subject"))
    assert (data[0].id, data[0].question, data[0].answer, data[0].level) == (
        "17",
        "Q1",
        "5",
        "algebra",
    )


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "toy.parquet"
    rows = [*ROWS, {"question": "Broken", "answer": None}]
    pq.write_table(pa.Table.from_pylist(rows), path)
    data = load_problems(path, name="toyset")
    assert [p.answer for p in data] == ["4", "1080", "\\frac{1}{2}"]
    assert data[0].id == "toyset-0"
    assert data.report.first_skipped == [SkippedRow(4, "missing_answer")]


def test_save_to_disk_folder_with_shards(tmp_path: Path) -> None:
    folder = tmp_path / "gsm_like"
    _write_save_to_disk(folder, [ROWS[:2], ROWS[2:]])
    data = load_problems(folder)
    assert [p.answer for p in data] == ["4", "1080", "\\frac{1}{2}"]
    assert data.name == "gsm_like"


def test_save_to_disk_dataset_dict_splits(tmp_path: Path) -> None:
    root = tmp_path / "dd"
    _write_save_to_disk(root / "train", [ROWS[:2]])
    _write_save_to_disk(root / "test", [ROWS[2:]])
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    assert len(load_problems(root)) == 2
    assert [p.answer for p in load_problems(root, split="test")] == ["\\frac{1}{2}"]
    with pytest.raises(DatasetError, match="validation"):
        load_problems(root, split="validation")


def test_unknown_paths_and_formats_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_problems(tmp_path / "nope.jsonl")
    odd = tmp_path / "data.csv"
    odd.write_text("question,answer\n")
    with pytest.raises(DatasetError, match="fmt="):
        load_problems(odd)
    with pytest.raises(DatasetError, match=r"state\.json"):
        load_problems(tmp_path)


@pytest.mark.skipif(not GSM8K_TRAIN.is_file(), reason=f"no GSM8K at {GSM8K_TRAIN}")
def test_real_gsm8k_train_split() -> None:
    data = load_problems(GSM8K_TRAIN, name="gsm8k")
    assert len(data) == 7473
    assert data.report.skipped.total() == 0
    assert data[0].answer == "72"
    assert all(p.answer.lstrip("-").isdigit() for p in data)  # "#### 1,080" lines read as 1080
    assert data[0].id == "gsm8k-0"
