"""Read math problems from files: JSONL, Parquet, or a Hugging Face ``save_to_disk`` folder.

Role: turn rows into `Problem` items through a field mapping, skipping and counting bad rows.

Rules:
- Formats: ``.jsonl`` / ``.json`` lines; ``.parquet``; a folder written by
  ``datasets.Dataset.save_to_disk`` (``state.json`` naming ``data-*.arrow`` files in Arrow IPC
  *stream* format) or ``DatasetDict.save_to_disk`` (``dataset_dict.json`` and one such folder
  per split). Arrow is read with pyarrow directly; the ``datasets`` package is not needed.
- The answer field may hold a full GSM8K solution: its last ``#### N`` line is the reference,
  with thousands separators removed. Otherwise the stripped field text is the reference.
- ``extra`` fields are carried along as they are (None where a row lacks one): they reach the
  reward function with the row.
- A row is skipped (and counted by reason) when it is not valid JSON, not an object, lacks a
  mapped field, or has an empty question or answer. The first few skips keep their 1-based
  line (JSONL) or row number (Arrow, Parquet) for logging. A source with no valid rows is an
  error that names the file.
- Files are read once into memory; a dataset is an immutable `Sequence[Problem]`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, overload

import pyarrow as pa

from areal_flow.data.problem import Problem

Format = Literal["auto", "jsonl", "parquet", "arrow_dir"]

_GSM8K_FINAL: Final = re.compile(r"^[ \t]*####[ \t]*(.*?)[ \t]*$", re.MULTILINE)
_GROUPED_DIGITS: Final = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


class DatasetError(ValueError):
    """A dataset source cannot be read, or holds no usable rows."""


@dataclass(frozen=True)
class FieldMap:
    """Which row fields hold the question, the answer, and (optionally) an id and a level."""

    question: str = "question"
    answer: str = "answer"
    id: str | None = None
    level: str | None = None
    extra: tuple[str, ...] = ()  # other fields carried along (None where a row lacks one)


@dataclass(frozen=True)
class SkippedRow:
    """A row that was left out: where (1-based line or row number) and why."""

    line: int
    reason: str


@dataclass
class LoadReport:
    """What reading a source found: rows seen, kept, skipped by reason, the first skips."""

    source: str
    rows: int = 0
    kept: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    first_skipped: list[SkippedRow] = field(default_factory=list)

    def summary(self) -> str:
        reasons = ", ".join(f"{n} {why}" for why, n in self.skipped.most_common()) or "none"
        where = "; ".join(f"line {s.line}: {s.reason}" for s in self.first_skipped)
        return f"{self.source}: {self.kept}/{self.rows} rows kept, skipped: {reasons}" + (
            f" (first: {where})" if where else ""
        )


def reference_answer(text: str) -> str:
    """The reference final answer in an answer field: GSM8K's last ``#### N`` value, else the text.

    "…\\n#### 1,080" → "1080"; "\\frac{1}{2}" → "\\frac{1}{2}". May return "" (then the row is bad).
    """
    finals = _GSM8K_FINAL.findall(text)
    value = finals[-1] if finals else text.strip()
    return _GROUPED_DIGITS.sub("", value.strip())


class ProblemDataset(Sequence[Problem]):
    """Problems read from one source, with the `LoadReport` of that read."""

    def __init__(self, name: str, problems: list[Problem], report: LoadReport) -> None:
        self.name = name
        self.problems = problems
        self.report = report

    def __len__(self) -> int:
        return len(self.problems)

    @overload
    def __getitem__(self, index: int) -> Problem: ...
    @overload
    def __getitem__(self, index: slice) -> list[Problem]: ...
    def __getitem__(self, index: int | slice) -> Problem | list[Problem]:
        return self.problems[index]

    def __iter__(self) -> Iterator[Problem]:
        return iter(self.problems)


def load_problems(
    path: str | Path,
    fields: FieldMap | None = None,
    *,
    fmt: Format = "auto",
    split: str = "train",
    name: str | None = None,
    keep_skipped: int = 5,
) -> ProblemDataset:
    """Read problems from ``path``; ``split`` picks the split of a saved ``DatasetDict`` folder.

    ``name`` (default: the file stem or folder name) prefixes generated ids and is the level
    when ``fields.level`` is not mapped. Raises `DatasetError` when nothing usable is found.
    """
    path = Path(path)
    fields = fields if fields is not None else FieldMap()
    fmt = _detect_format(path) if fmt == "auto" else fmt
    name = name if name is not None else path.stem
    report = LoadReport(source=str(path))
    rows: Iterable[tuple[int, Any]]
    if fmt == "jsonl":
        rows = _jsonl_rows(path, report)
    elif fmt == "parquet":
        rows = _table_rows(_read_parquet(path))
    else:
        rows = _table_rows(read_arrow_dir(path, split))
    problems = _to_problems(rows, fields, name, report, keep_skipped)
    if not problems:
        raise DatasetError(
            f"no usable rows in {path} with fields question={fields.question!r}, "
            f"answer={fields.answer!r}: {report.summary()}"
        )
    return ProblemDataset(name, problems, report)


def read_arrow_dir(path: Path, split: str = "train") -> pa.Table:
    """The table of a ``save_to_disk`` folder (a Dataset, or a DatasetDict's ``split``)."""
    dict_marker = path / "dataset_dict.json"
    if dict_marker.is_file():
        splits = json.loads(dict_marker.read_text())["splits"]
        if split not in splits:
            raise DatasetError(f"{path} has splits {splits}; pick one of them, not {split!r}")
        path = path / split
    state_file = path / "state.json"
    if not state_file.is_file():
        raise DatasetError(f"{path} is not a save_to_disk folder: state.json is missing")
    state = json.loads(state_file.read_text())
    files = [path / entry["filename"] for entry in state.get("_data_files", [])]
    if not files:
        raise DatasetError(f"{state_file} lists no _data_files")
    tables = []
    for file in files:
        with pa.memory_map(str(file)) as source:
            tables.append(pa.ipc.open_stream(source).read_all())
    return pa.concat_tables(tables)


def _detect_format(path: Path) -> Format:
    if path.is_dir():
        return "arrow_dir"
    if not path.is_file():
        raise DatasetError(f"dataset path {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise DatasetError(
        f"cannot tell the format of {path}: use .jsonl, .parquet or a save_to_disk folder, "
        "or pass fmt='jsonl' | 'parquet' | 'arrow_dir'"
    )


def _read_parquet(path: Path) -> pa.Table:
    import pyarrow.parquet as pq

    return pq.read_table(path)


def _jsonl_rows(path: Path, report: LoadReport) -> Iterator[tuple[int, Any]]:
    with path.open("r", encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue  # blank lines (often a trailing one) are not rows
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError:
                yield number, _BadJson()


def _table_rows(table: pa.Table) -> Iterator[tuple[int, Any]]:
    number = 0
    for batch in table.to_batches():
        for row in batch.to_pylist():
            number += 1
            yield number, row


class _BadJson:
    """Marks a JSONL line that did not parse."""


def _to_problems(
    rows: Iterable[tuple[int, Any]],
    fields: FieldMap,
    name: str,
    report: LoadReport,
    keep_skipped: int,
) -> list[Problem]:
    problems = []
    for index, (line, row) in enumerate(rows):
        report.rows += 1
        problem_or_reason = _row_to_problem(row, fields, name, index)
        if isinstance(problem_or_reason, Problem):
            problems.append(problem_or_reason)
            continue
        report.skipped[problem_or_reason] += 1
        if len(report.first_skipped) < keep_skipped:
            report.first_skipped.append(SkippedRow(line, problem_or_reason))
    report.kept = len(problems)
    return problems


def _row_to_problem(row: Any, fields: FieldMap, name: str, index: int) -> Problem | str:
    """The problem in ``row``, or the reason it is unusable."""
    if isinstance(row, _BadJson):
        return "bad_json"
    if not isinstance(row, dict):
        return "not_an_object"
    values = {}
    for role in ("question", "answer", "id", "level"):
        key = getattr(fields, role)
        if key is None:
            continue
        value = row.get(key)
        if value is None:
            return f"missing_{role}"
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            return f"bad_{role}_type"
        values[role] = str(value)
    question = values["question"].strip()
    answer = reference_answer(values["answer"])
    if not question:
        return "empty_question"
    if not answer:
        return "empty_answer"
    problem_id = values.get("id", f"{name}-{index}")
    extra = {key: row.get(key) for key in fields.extra}
    return Problem(problem_id, question, answer, values.get("level", name), extra)
