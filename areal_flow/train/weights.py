"""Publishing policy weights: one safetensors file per version, written atomically, with sha256.

Rules:
- A version lives in its own folder ``<root>/v<N>/`` holding ``model.safetensors`` (HF parameter
  names, i.e. ``model.state_dict()``; a tied ``lm_head.weight`` is written once, under the
  embedding's name, as ``save_pretrained`` does) and ``model.safetensors.sha256``. That folder
  is what engines load (``areal_flow.engine.base.weight_files``).
- Roots: store ``shm`` → ``/dev/shm/areal-flow/<run-id>`` (RAM, fastest); ``run_dir`` →
  ``<run_dir>/weights``. A missing /dev/shm is an error, never a silent switch of store.
- Atomic: the folder is written under a temporary name in the same root and renamed into place,
  so a reader never sees half a file. The checksum is of the exact bytes written.
- Safetensors only — never pickle. ``load_weights`` verifies the checksum before parsing.
- torch is imported inside functions: the weight publisher verifies files without it.

GPU path (designed here, behind the same notice; not implemented on this CPU-only machine):
a trainer and generators on GPUs skip the file. After the optimizer step the trainer puts each
tensor, in ``state_dict`` order, through ``torch.distributed.broadcast`` on an NCCL group made of
the trainer rank and every generator worker rank (vLLM: ``collective_rpc`` into a worker
extension that joins a ``StatelessProcessGroup``/``PyNcclCommunicator`` and feeds the received
tensors to ``model_runner.reload_weights``, exactly as ``areal_load_weights`` feeds tensors read
from the file). The notice then carries ``path = "nccl://<group>/<version>"`` and as checksum the
sha256 of the concatenated tensor bytes computed on the trainer; a receiver hashes what it got
(on the GPU, per tensor, then combined) and refuses a mismatch exactly like ``verify_weights``.
The publisher forwards and ages such notices the same way; there is no folder to delete.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pyarrow as pa

from areal_flow.schema import SCHEMAS

if TYPE_CHECKING:
    import torch

WEIGHTS_FILE = "model.safetensors"
CHECKSUM_SUFFIX = ".sha256"
SHM_ROOT = Path("/dev/shm/areal-flow")
Store = Literal["shm", "run_dir"]


class ChecksumError(ValueError):
    """A weights file whose bytes do not match the checksum it was published with."""


@dataclass(frozen=True)
class WeightsRef:
    """Where one published version lives: the row of a ``weights`` notice."""

    version: int
    path: str  # the version folder
    checksum: str  # sha256 hex of model.safetensors
    created_at: float  # unix seconds when the file became ready

    def batch(self) -> pa.RecordBatch:
        """A one-row ``weights`` record batch."""
        row = {
            "version": self.version,
            "path": self.path,
            "checksum": self.checksum,
            "created_at": self.created_at,
        }
        return pa.RecordBatch.from_pylist([row], schema=SCHEMAS["weights"])


def weights_root(store: Store, run_dir: Path) -> Path:
    """The folder holding the version folders of a run."""
    if store == "run_dir":
        return Path(run_dir) / "weights"
    if not SHM_ROOT.parent.is_dir():
        raise FileNotFoundError(
            f"{SHM_ROOT.parent} does not exist on this machine; set the weight publisher's "
            "store to 'run_dir'"
        )
    return SHM_ROOT / Path(run_dir).resolve().name


def version_dir(root: Path, version: int) -> Path:
    return Path(root) / f"v{version}"


def unique_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, detached tensors; a tensor shared under several names is kept once
    (under its first name: ``model.embed_tokens.weight`` before ``lm_head.weight``)."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), int(tensor.storage_offset()))
        if key in seen:
            continue
        seen.add(key)
        out[name] = tensor.detach().to("cpu").contiguous()
    return out


def publish_weights(state: dict[str, torch.Tensor], root: Path, version: int) -> WeightsRef:
    """Write ``state`` as ``<root>/v<version>/model.safetensors`` atomically; its notice row."""
    from safetensors.torch import save

    data = save(unique_tensors(state), metadata={"version": str(version)})
    checksum = hashlib.sha256(data).hexdigest()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".v{version}.", dir=root))
    try:
        (tmp / WEIGHTS_FILE).write_bytes(data)
        (tmp / (WEIGHTS_FILE + CHECKSUM_SUFFIX)).write_text(checksum + "\n")
        target = version_dir(root, version)
        replace_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return WeightsRef(version, str(target), checksum, time.time())


def replace_dir(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``; an existing ``target`` (a version written again after a
    resume) is moved aside first, since rename(2) cannot replace a non-empty folder."""
    if target.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        target.rename(trash / target.name)
        new.rename(target)
        shutil.rmtree(trash)
    else:
        new.rename(target)


def weights_file(path: str | Path) -> Path:
    """The existing ``model.safetensors`` of a version folder (or the file itself)."""
    path = Path(path)
    file = path if path.is_file() else path / WEIGHTS_FILE
    if not file.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_FILE} at {path}; was this version deleted?")
    return file


def file_checksum(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_weights(path: str | Path, checksum: str | None = None) -> Path:
    """Raise ChecksumError unless the file's sha256 equals ``checksum`` (default: the
    ``.sha256`` file written beside it). Returns the weights file."""
    file = weights_file(path)
    _check(file, file_checksum(file), checksum or _sidecar_checksum(file))
    return file


def load_weights(path: str | Path, checksum: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a published version, after checking its sha256 (default: the sidecar)."""
    from safetensors.torch import load

    file = weights_file(path)
    expected = checksum or _sidecar_checksum(file)
    data = file.read_bytes()
    _check(file, hashlib.sha256(data).hexdigest(), expected)
    return load(data)


def _sidecar_checksum(file: Path) -> str:
    sidecar = file.with_name(file.name + CHECKSUM_SUFFIX)
    if not sidecar.is_file():
        raise ChecksumError(f"{file} has no {sidecar.name} beside it and no checksum was given")
    return sidecar.read_text().strip()


def _check(file: Path, actual: str, expected: str) -> None:
    if actual != expected:
        raise ChecksumError(
            f"{file} is corrupt or was overwritten: sha256 {actual[:16]}… != published "
            f"{expected[:16]}…; do not load it"
        )


def remove_version(path: str | Path) -> None:
    """Delete a version folder, then its root if that was the last version."""
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path)
    root = path.parent
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
