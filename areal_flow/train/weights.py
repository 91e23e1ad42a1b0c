"""Publishing policy weights: one safetensors file per version, written atomically, with a
checksum that names its algorithm.

Rules:
- A version lives in its own folder ``<root>/v<N>/`` holding ``model.safetensors`` (HF parameter
  names, i.e. ``model.state_dict()``; a tied ``lm_head.weight`` is written once, under the
  embedding's name, as ``save_pretrained`` does) and ``model.safetensors.checksum``. That folder
  is what engines load (``areal_flow.engine.base.weight_files``). A LoRA trainer's version
  is a peft adapter instead: ``adapter_model.safetensors`` (+ its ``.checksum``) and
  ``adapter_config.json``; engines merge it into their base (``areal_flow.engine.adapter``).
- Checksums read ``<algorithm>:<hex>``: ``blake3`` for what is published (several times faster
  than sha256 and hashed straight from the file's pages), ``sha256`` still verified; an
  unnamed or unknown algorithm is refused, never guessed.
- Roots: store ``shm`` → ``/dev/shm/areal-flow/<run-id>`` (RAM, fastest); ``run_dir`` →
  ``<run_dir>/weights``. A missing /dev/shm is an error, never a silent switch of store.
- Atomic: the folder is written under a temporary name in the same root and renamed into place,
  so a reader never sees half a file. The checksum is of the file as written (hashed back
  from it before the rename).
- Safetensors only — never pickle. ``load_weights`` verifies the checksum before parsing.
- torch is imported inside functions: the weight publisher verifies files without it.
- ``publish_weights`` writes on the caller's thread; the trainer publishes through
  ``weight_writer.WeightWriter`` instead (snapshot, then this module's ``write_version`` in the
  background).

GPU path (designed here, behind the same notice; not implemented on this CPU-only machine):
a trainer and generators on GPUs skip the file. After the optimizer step the trainer puts each
tensor, in ``state_dict`` order, through ``torch.distributed.broadcast`` on an NCCL group made of
the trainer rank and every generator worker rank (vLLM: ``collective_rpc`` into a worker
extension that joins a ``StatelessProcessGroup``/``PyNcclCommunicator`` and feeds the received
tensors to ``model_runner.reload_weights``, exactly as ``areal_load_weights`` feeds tensors read
from the file). The notice then carries ``path = "nccl://<group>/<version>"`` and as checksum a
named digest (``<algorithm>:<hex>``) of the concatenated tensor bytes computed on the trainer; a
receiver hashes what it got (on the GPU, per tensor, then combined) and refuses a mismatch
exactly like ``verify_weights``.
The publisher forwards and ages such notices the same way; there is no folder to delete.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from areal_flow.engine.adapter import ADAPTER_CONFIG, ADAPTER_FILE
from areal_flow.schema import SCHEMAS

if TYPE_CHECKING:
    import torch

WEIGHTS_FILE = "model.safetensors"
CHECKSUM_SUFFIX = ".checksum"
SHM_ROOT = Path("/dev/shm/areal-flow")
Store = Literal["shm", "run_dir"]
Algorithm = Literal["blake3", "sha256"]
ALGORITHMS: tuple[Algorithm, ...] = ("blake3", "sha256")
PUBLISH_ALGORITHM: Algorithm = "blake3"
HASH_ALL_CORES = -1  # blake3's AUTO: a thread per core


class ChecksumError(ValueError):
    """A weights file whose bytes do not match the checksum it was published with."""


@dataclass(frozen=True)
class WeightsRef:
    """Where one published version lives: the row of a ``weights`` notice."""

    version: int
    path: str  # the version folder
    checksum: str  # '<algorithm>:<hex>' of model.safetensors
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
    """Detached tensors, a tensor shared under several names kept once (under its first name:
    ``model.embed_tokens.weight`` before ``lm_head.weight``). No copies."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), int(tensor.storage_offset()))
        if key in seen:
            continue
        seen.add(key)
        out[name] = tensor.detach()
    return out


def publish_weights(state: dict[str, torch.Tensor], root: Path, version: int) -> WeightsRef:
    """Write ``state`` as ``<root>/v<version>/model.safetensors`` now, on this thread."""
    tensors = {k: v.to("cpu").contiguous() for k, v in unique_tensors(state).items()}
    return write_version(tensors, root, version)


def write_version(
    tensors: dict[str, torch.Tensor],
    root: Path,
    version: int,
    algorithm: Algorithm = PUBLISH_ALGORITHM,
    adapter_config: bytes | None = None,
) -> WeightsRef:
    """Write CPU, contiguous ``tensors`` (none sharing memory) as version ``version``: into a
    temporary folder, hashed back from the file, then renamed into place. Its notice row.
    With ``adapter_config`` (peft's ``adapter_config.json``) the version is a LoRA adapter."""
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".v{version}.", dir=root))
    try:
        file = tmp / (WEIGHTS_FILE if adapter_config is None else ADAPTER_FILE)
        save_file(tensors, str(file), metadata={"version": str(version)})
        checksum = file_checksum(file, algorithm)
        (tmp / (file.name + CHECKSUM_SUFFIX)).write_text(checksum + "\n")
        if adapter_config is not None:
            (tmp / ADAPTER_CONFIG).write_bytes(adapter_config)
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
    """The existing ``model.safetensors`` (or LoRA ``adapter_model.safetensors``) of a version
    folder, or the file itself."""
    path = Path(path)
    if path.is_file():
        return path
    for name in (WEIGHTS_FILE, ADAPTER_FILE):
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(
        f"no {WEIGHTS_FILE} or {ADAPTER_FILE} at {path}; was this version deleted?"
    )


def _hasher(algorithm: str, threads: int = 1) -> Any:
    if algorithm == "blake3":
        from blake3 import blake3

        # One thread by default: the writer shares its cores with training.
        return blake3(max_threads=threads)
    if algorithm == "sha256":
        return hashlib.sha256()
    raise ChecksumError(f"unknown checksum algorithm {algorithm!r}; known: {', '.join(ALGORITHMS)}")


def file_checksum(path: Path, algorithm: Algorithm = PUBLISH_ALGORITHM, threads: int = 1) -> str:
    """``'<algorithm>:<hex>'`` of a file's bytes; blake3 hashes on up to ``threads`` threads
    (``HASH_ALL_CORES``: as many as the machine has), the same digest whatever the count."""
    digest = _hasher(algorithm, threads)
    if algorithm == "blake3":
        digest.update_mmap(str(path))  # straight from the page cache, without the GIL
    else:
        with Path(path).open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
    return f"{algorithm}:{digest.hexdigest()}"


def bytes_checksum(data: bytes, algorithm: Algorithm = PUBLISH_ALGORITHM) -> str:
    """``'<algorithm>:<hex>'`` of ``data``."""
    digest = _hasher(algorithm)
    digest.update(data)
    return f"{algorithm}:{digest.hexdigest()}"


def checksum_algorithm(checksum: str) -> Algorithm:
    """The algorithm a ``'<algorithm>:<hex>'`` checksum names; ChecksumError otherwise."""
    algorithm, sep, digest = checksum.partition(":")
    if not sep or not digest or algorithm not in ALGORITHMS:
        raise ChecksumError(
            f"checksum {checksum[:24]!r} must read '<algorithm>:<hex>' with the algorithm one "
            f"of {', '.join(ALGORITHMS)}; republish the version with this areal-flow"
        )
    return algorithm


def verify_weights(path: str | Path, checksum: str | None = None, threads: int = 1) -> Path:
    """Raise ChecksumError unless the file's checksum equals ``checksum`` (default: the
    ``.checksum`` file written beside it), in the algorithm it names. Returns the file."""
    file = weights_file(path)
    expected = checksum or _sidecar_checksum(file)
    _check(file, file_checksum(file, checksum_algorithm(expected), threads), expected)
    return file


def load_weights(path: str | Path, checksum: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a published version, after checking its checksum (default: the sidecar)."""
    from safetensors.torch import load

    file = weights_file(path)
    expected = checksum or _sidecar_checksum(file)
    data = file.read_bytes()
    _check(file, bytes_checksum(data, checksum_algorithm(expected)), expected)
    return load(data)


def _sidecar_checksum(file: Path) -> str:
    sidecar = file.with_name(file.name + CHECKSUM_SUFFIX)
    if not sidecar.is_file():
        raise ChecksumError(f"{file} has no {sidecar.name} beside it and no checksum was given")
    return sidecar.read_text().strip()


def _check(file: Path, actual: str, expected: str) -> None:
    if actual != expected:
        raise ChecksumError(
            f"{file} is corrupt or was overwritten: {actual[:24]}… != published "
            f"{expected[:24]}…; do not load it"
        )


def remove_version(path: str | Path) -> None:
    """Delete a version folder, then its root if that was the last version."""
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path)
    root = path.parent
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
