"""The prompt source node: groups, chat template, resumable position, bad rows, files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from areal_flow.node import NodeContext
from areal_flow.nodes.prompt_source import PromptSource, PromptSourceConfig
from areal_flow.schema import SCHEMAS, record_problems

GSM8K = Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k" / "train.jsonl"


def start(tmp_path: Path, resume: dict[str, Any] | None = None, **fields: Any) -> PromptSource:
    config = PromptSourceConfig(name="prompts", **fields)
    node = PromptSource(config)
    node.setup(
        NodeContext(
            config=config, replica=0, replicas=1, run_dir=tmp_path, seed=3, resume_state=resume
        )
    )
    return node


def drain(node: PromptSource, count: int) -> list[dict[str, Any]]:
    rows = []
    for _ in range(count):
        batch = node.next_batch()
        assert isinstance(batch, pa.RecordBatch)
        assert record_problems(batch.schema, SCHEMAS["prompt"]) == []
        rows.extend(batch.to_pylist())
    return rows


def test_groups_carry_the_chat_template_and_group_size(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    node = start(tmp_path, model=str(tiny_model_dir), group_size=4, size=50)
    row = drain(node, 1)[0]
    assert node.next_groups() == 1 and row["group_size"] == 4  # the gate counts groups
    assert row["prompt"].startswith("<|im_start|>") and row["prompt"].endswith(
        "<|im_start|>assistant\n"
    )
    assert "The answer is N." in row["prompt"]
    assert row["group_id"] == f"{row['prompt_id']}@0" and row["answer"].isdigit()
    assert len(row["prompt_token_ids"]) > 10


def test_resumed_source_continues_at_the_exact_next_prompt(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    fields = {"model": str(tiny_model_dir), "size": 7, "epochs": 2}
    straight = [r["group_id"] for r in drain(start(tmp_path, **fields), 14)]
    first = start(tmp_path, **fields)
    head = [r["group_id"] for r in drain(first, 5)]
    state = json.loads(json.dumps(first.state()))  # what a checkpoint stores
    tail = [r["group_id"] for r in drain(start(tmp_path, resume=state, **fields), 9)]
    assert head + tail == straight
    assert len(set(straight)) == 14 and straight[:7] != [
        g.replace("@0", "@1") for g in straight[7:]
    ]
    ended = start(tmp_path, resume=state, **fields)
    drain(ended, 9)
    assert ended.exhausted and ended.next_batch() is None


def test_malformed_rows_are_skipped_and_counted(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "mixed.jsonl"
    data.write_text(
        '{"q": "What is 2 + 2?", "a": "#### 4"}\n'
        "not json\n"
        '{"q": "What is 3 + 3?"}\n'
        '{"q": "What is 5 + 1?", "a": "6"}\n'
    )
    node = start(
        tmp_path,
        model=str(tiny_model_dir),
        dataset=str(data),
        fields={"question": "q", "answer": "a"},
        shuffle=False,
        epochs=1,
    )
    rows = drain(node, 2)
    assert [r["answer"] for r in rows] == ["4", "6"]
    assert node.ctx is not None and node.ctx.metrics.gauges["rows_malformed"] == 2
    assert node.next_batch() is None and node.exhausted


def test_a_file_without_valid_rows_is_an_error_naming_it(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    data = tmp_path / "empty.jsonl"
    data.write_text("garbage\n")
    with pytest.raises(ValueError, match=r"empty\.jsonl"):
        start(tmp_path, model=str(tiny_model_dir), dataset=str(data))


def test_real_gsm8k_rows(tmp_path: Path, tiny_model_dir: Path) -> None:
    node = start(tmp_path, model=str(tiny_model_dir), dataset=str(GSM8K), shuffle=False)
    row = drain(node, 1)[0]
    assert row["answer"] == "72" and "Natalia" in row["prompt"]


def test_held_out_split_never_meets_training(tmp_path: Path, tiny_model_dir: Path) -> None:
    train = start(tmp_path, model=str(tiny_model_dir), size=300, epochs=1)
    test = start(tmp_path, model=str(tiny_model_dir), size=300, epochs=1, split="test")
    questions = lambda node: {r["prompt"] for r in drain(node, 300)}  # noqa: E731
    assert not questions(train) & questions(test)


def test_system_prompt_instruction_and_plain_text_rendering(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    fmt = {"system": "You are terse.", "instruction": "Answer with a number."}
    templated = drain(start(tmp_path, model=str(tiny_model_dir), size=5, format=fmt), 1)[0]
    assert templated["prompt"].startswith("<|im_start|>system\nYou are terse.")
    assert (
        "Answer with a number." in templated["prompt"]
        and "The answer is" not in (templated["prompt"])
    )
    plain = {**fmt, "chat_template": False}
    row = drain(start(tmp_path, model=str(tiny_model_dir), size=5, format=plain), 1)[0]
    assert row["prompt"].startswith("You are terse.\n\n") and "<|im_start|>" not in row["prompt"]
    assert row["prompt"].endswith("\nAnswer with a number.")


def test_gsm8k_with_mapped_ids_and_extra_fields(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A dataset's own fields ride along as extra columns (they reach the reward function)."""
    data = tmp_path / "gsm8k_sample.jsonl"
    lines = GSM8K.read_text().splitlines()[:3]
    rows = [json.loads(line) for line in lines]
    with data.open("w") as out:
        for i, row in enumerate(rows):
            row.update(uid=f"g{i}", source="gsm8k-train", difficulty=i)
            out.write(json.dumps(row) + "\n")
    fields = {"id": "uid", "extra": ["source", "difficulty"]}
    node = start(
        tmp_path, model=str(tiny_model_dir), dataset=str(data), fields=fields, shuffle=False
    )
    batch = node.next_batch()
    assert isinstance(batch, pa.RecordBatch)
    assert batch.schema.names[-2:] == ["source", "difficulty"]
    row = batch.to_pylist()[0]
    assert (row["prompt_id"], row["source"], row["difficulty"]) == ("g0", "gsm8k-train", 0)
    with pytest.raises(ValueError, match="clash with prompt record fields"):
        start(tmp_path, model=str(tiny_model_dir), dataset=str(data), fields={"extra": ["answer"]})


def test_example_exchanges_come_before_the_question(tmp_path: Path, tiny_model_dir: Path) -> None:
    fmt = {
        "examples": [{"user": "What is 12 × 3?", "assistant": "<calc>12*3</calc>"}],
        "instruction": "",
    }
    row = drain(start(tmp_path, model=str(tiny_model_dir), size=5, format=fmt), 1)[0]
    text = row["prompt"]
    assert text.index("What is 12 × 3?") < text.index("<calc>12*3</calc>")
    assert text.count("<|im_start|>user") == 2 and text.count("<|im_start|>assistant") == 2
    plain = drain(start(tmp_path, model=str(tiny_model_dir), size=5,
                        format={**fmt, "chat_template": False}), 1)[0]  # fmt: skip
    assert plain["prompt"].startswith("What is 12 × 3?\n<calc>12*3</calc>\n\n")
