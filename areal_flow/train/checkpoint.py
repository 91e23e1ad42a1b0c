"""Trainer checkpoints: everything a resumed run needs to continue as if it never stopped.

Layout of ``<run_dir>/checkpoints/step_<N>/``:
- the model in Hugging Face format (``save_pretrained`` + tokenizer): loads in plain
  transformers and in vLLM, and is the ``model`` a resumed trainer starts from. A LoRA
  trainer's checkpoint holds its adapter instead (peft's ``save_pretrained``), which loads on
  its base in transformers + peft and which a resumed trainer loads onto the configured model;
- ``train_state.pt``: optimizer and scheduler state and torch RNG states (a trainer of several
  ranks keeps its optimizer in ``optim/`` instead: torch.distributed.checkpoint shards, which
  load at any rank count). ``torch.save`` of
  tensors is acceptable here — on disk, written and read by this code only, and read back with
  ``weights_only=True`` (no arbitrary objects). Never on the wire;
- ``trainer.json``: version, step, the ids of every trajectory trained so far, the position
  inside an interrupted batch, Python's RNG state;
- ``pending.arrow`` / ``batch.arrow`` (Arrow IPC): groups received but not yet batched, and the
  prepared batch whose minibatches were not all trained. With the ids these make the data
  position exact: nothing is lost, nothing trained twice.

Rules: a checkpoint is written under a temporary name and renamed into place, then the
``latest`` file (the folder name of the newest checkpoint) is replaced atomically; a crash
leaves at most a stray temporary folder, never a half checkpoint behind ``latest``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from areal_flow.train.weights import replace_dir

CHECKPOINTS = "checkpoints"
LATEST = "latest"
META_FILE = "trainer.json"
STATE_FILE = "train_state.pt"
TABLES = ("pending", "batch")


@dataclass
class Checkpoint:
    """A loaded checkpoint; ``path`` is also the HF model folder."""

    path: Path
    meta: dict[str, Any]
    train_state: dict[str, Any]
    tables: dict[str, pa.Table]


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def save_checkpoint(
    root: Path,
    step: int,
    *,
    model: Any,
    tokenizer: Any,
    train_state: dict[str, Any],
    meta: dict[str, Any],
    tables: dict[str, pa.Table],
    keep: int | None = None,
    model_state: dict[str, Any] | None = None,
    write_shards: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``<root>/step_<step>/`` atomically, point ``latest`` at it, keep the newest
    ``keep`` checkpoints (all if None). Returns the checkpoint folder. A sharded trainer
    gives its gathered ``model_state`` and ``write_shards``, which writes the optimizer's
    shards (``optim/``) into the folder."""
    import torch

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".step_{step}.", dir=root))
    try:
        model.save_pretrained(tmp, state_dict=model_state)
        tokenizer.save_pretrained(tmp)
        if write_shards is not None:
            write_shards(tmp)
        torch.save({**train_state, "rng": _torch_rng()}, tmp / STATE_FILE)
        full_meta = {**meta, "step": step, "python_rng": _python_rng()}
        (tmp / META_FILE).write_text(json.dumps(full_meta))
        for name, table in tables.items():
            if name not in TABLES:
                raise ValueError(f"unknown checkpoint table {name!r}; expected one of {TABLES}")
            _write_table(tmp / f"{name}.arrow", table)
        target = root / f"step_{step}"
        replace_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    _write_latest(root, target.name)
    if keep is not None:
        _prune(root, keep, target)
    return target


def resolve_checkpoint(ref: str | Path) -> Path:
    """A checkpoint folder from ``ref``: the folder itself, a checkpoints folder or a run folder
    (both through their ``latest`` file)."""
    path = Path(ref).expanduser()
    for candidate in (path, path / CHECKPOINTS):
        if (candidate / META_FILE).is_file():
            return candidate
        if (candidate / LATEST).is_file():
            found = candidate / (candidate / LATEST).read_text().strip()
            if not (found / META_FILE).is_file():
                raise FileNotFoundError(f"{candidate / LATEST} points at {found}, which is gone")
            return found
    raise FileNotFoundError(
        f"no checkpoint at {path}: give a step_<N> folder, a checkpoints folder or a run folder"
    )


def load_checkpoint(path: Path) -> Checkpoint:
    """Read every part of a checkpoint except the model weights (the folder loads those)."""
    import torch

    path = resolve_checkpoint(path)
    meta = json.loads((path / META_FILE).read_text())
    state = torch.load(path / STATE_FILE, weights_only=True)
    tables = {name: _read_table(path / f"{name}.arrow") for name in TABLES}
    return Checkpoint(path, meta, state, {k: v for k, v in tables.items() if v is not None})


@dataclass(frozen=True)
class DataPosition:
    """What a checkpoint holds of the data: the groups it trained or keeps, by group id."""

    path: Path
    step: int
    version: int
    held: dict[str, int]  # group id → trajectories trained, pending or in the kept batch
    pending: int  # trajectories received but not yet trained (pending groups)


def data_position(ref: str | Path) -> DataPosition:
    """The data position of a checkpoint (or a run folder's latest), without loading torch."""
    path = resolve_checkpoint(ref)
    meta = json.loads((path / META_FILE).read_text())
    held: dict[str, int] = {}
    for trajectory in meta["trained_ids"]:
        group = str(trajectory).rsplit("/", 1)[0]
        held[group] = held.get(group, 0) + 1
    pending = 0
    for name in TABLES:
        table = _read_table(path / f"{name}.arrow")
        if table is None:
            continue
        if name == "pending":
            pending = table.num_rows
        trained = set(meta["trained_ids"]) if name == "batch" else set()
        samples = table.column("sample_index").to_pylist()
        for group, sample in zip(table.column("group_id").to_pylist(), samples, strict=True):
            if f"{group}/{sample}" not in trained:  # a kept batch's trained minibatches
                held[group] = held.get(group, 0) + 1
    return DataPosition(path, int(meta["step"]), int(meta["version"]), held, pending)


def restore_rng(checkpoint: Checkpoint) -> None:
    """Put torch's and Python's random generators back where the checkpoint left them."""
    import torch

    rng = checkpoint.train_state["rng"]
    torch.set_rng_state(rng["cpu"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    version, internal, gauss = checkpoint.meta["python_rng"]
    random.setstate((version, tuple(internal), gauss))


def _torch_rng() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def _python_rng() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _write_table(path: Path, table: pa.Table) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def _read_table(path: Path) -> pa.Table | None:
    if not path.is_file():
        return None
    with pa.OSFile(str(path), "rb") as source:
        return pa.ipc.open_stream(source).read_all()


def _write_latest(root: Path, name: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".latest.", dir=root)
    with os.fdopen(fd, "w") as handle:
        handle.write(name + "\n")
    os.replace(tmp, root / LATEST)


def _prune(root: Path, keep: int, newest: Path) -> None:
    steps = sorted(
        (p for p in root.glob("step_*") if p.is_dir() and p.name[5:].isdigit()),
        key=lambda p: int(p.name[5:]),
    )
    for old in steps[: max(0, len(steps) - keep)]:
        if old != newest:
            shutil.rmtree(old)
