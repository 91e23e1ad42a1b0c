"""Prompt data: problems, where they come from, and the order they are visited in.

- `problem`: `Problem` (id, question, answer, level) and the answer-format instruction.
- `arithmetic`: `ArithmeticTask`, a seeded procedural task with a disjoint held-out split.
- `datasets`: `load_problems` for JSONL, Parquet and ``save_to_disk`` folders (GSM8K aware).
- `sampler`: `EpochSampler`, shuffled epochs with an exact resumable `Position`.
"""

from areal_flow.data.arithmetic import (
    DEFAULT_MIX,
    LEVELS,
    ArithmeticDataset,
    ArithmeticTask,
    Split,
    canonical_key,
    split_of,
)
from areal_flow.data.datasets import (
    DatasetError,
    FieldMap,
    LoadReport,
    ProblemDataset,
    SkippedRow,
    load_problems,
    reference_answer,
)
from areal_flow.data.problem import ANSWER_INSTRUCTION, Problem, prompt_text
from areal_flow.data.sampler import Draw, EpochSampler, Position, iterate

__all__ = [
    "ANSWER_INSTRUCTION",
    "DEFAULT_MIX",
    "LEVELS",
    "ArithmeticDataset",
    "ArithmeticTask",
    "DatasetError",
    "Draw",
    "EpochSampler",
    "FieldMap",
    "LoadReport",
    "Position",
    "Problem",
    "ProblemDataset",
    "SkippedRow",
    "Split",
    "canonical_key",
    "iterate",
    "load_problems",
    "prompt_text",
    "reference_answer",
    "split_of",
]
