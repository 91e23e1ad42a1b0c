"""Publishing off the trainer's critical path: snapshot the weights, write them in the background.

Rules:
- ``publish(state, version)`` blocks its caller only for the snapshot: every unique tensor is
  copied into a buffer the writer owns (allocated and touched once by ``prepare``, reused by
  every version, pinned when the weights live on a GPU), in one call (the GIL is taken once,
  not once per tensor), on one thread, on the caller's own ``cores`` when given. It returns a
  future of the published version; one background thread writes it (``weights.write_version``:
  safetensors, checksum of the file written, atomic rename), so a notice never points at half a
  file.
- The snapshot is taken in ``dtype`` where that is exact for every receiving engine: bfloat16
  only when all generators load the model in bfloat16 (their own load would round each value
  the same way, ``copy_`` into a bf16 parameter); integer tensors and those under
  ``keep_fp32`` modules (HF's ``_keep_in_fp32_modules``) keep their dtype. Otherwise the
  trainer's dtype, bit for bit. A LoRA adapter (``adapter_config`` given) is always written in
  the trainer's dtype: it is small, and B·A of rounded factors is not the rounded product.
- One version in flight: ``publish`` first waits for the previous write (that wait counts in the
  blocking time it reports), so versions are written, and their futures complete, in order,
  and the snapshot being written is never overwritten. The caller's next optimizer step may run
  while a write is in flight: it changes the parameters, not the snapshot.
- Errors are not lost: a failed write raises from its future and again from every later
  ``publish`` and ``wait``. ``close`` waits for the write in flight and stops the thread.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from areal_flow.train.weights import WeightsRef, unique_tensors, write_version

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Published:
    """A version whose file is ready: its notice and how long publishing it took."""

    ref: WeightsRef
    block_s: float  # the caller was blocked: waiting for the previous write + the snapshot
    ready_s: float  # snapshot start → file ready (the notice's created_at)


class WeightWriter:
    """Writes versions of one model to ``root`` from a reusable snapshot (module docstring)."""

    def __init__(
        self,
        root: Path,
        dtype: torch.dtype | None = None,
        keep_fp32: tuple[str, ...] = (),
        adapter_config: bytes | None = None,
        cores: Sequence[int] = (),
    ) -> None:
        self.root = Path(root)
        self.cores = set(cores)  # the caller's own cores: the snapshot is taken there
        self.adapter_config = adapter_config  # versions are LoRA adapters (weights.py)
        self.dtype = dtype
        self.keep_fp32 = frozenset(keep_fp32)
        self._buffers: dict[str, torch.Tensor] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="weights-writer")
        self._pending: Future[Published] | None = None

    def prepare(self, state: dict[str, torch.Tensor]) -> None:
        """Allocate (and touch) the snapshot buffers for ``state`` now, so the first publish
        does not pay for fresh pages."""
        import torch

        tensors = unique_tensors(state)
        if self._matches(tensors):
            return
        pin = any(t.is_cuda for t in tensors.values()) and torch.cuda.is_available()
        self._buffers = {
            name: torch.zeros(t.shape, dtype=self._dtype_of(name, t), pin_memory=pin)
            for name, t in tensors.items()
        }

    def publish(self, state: dict[str, torch.Tensor], version: int) -> Future[Published]:
        """Snapshot ``state`` as ``version`` and write it in the background; returns once the
        snapshot is taken (after the previous version's write finished)."""
        import torch

        began = time.perf_counter()
        self.wait()
        self.prepare(state)
        tensors = unique_tensors(state)
        buffers = [self._buffers[name] for name in tensors]
        with torch.no_grad(), _one_thread(self.cores):
            # One call for every tensor: a loop of copy_ takes the GIL back after each of the
            # ~270 copies, and while another thread of the trainer runs Python (its event loop
            # reading batches) each take waits for it; bench/snapshot.py measured 1.8 s for
            # the loop against 31 ms for this (SmolLM2, fp32 -> bf16).
            torch._foreach_copy_(buffers, list(tensors.values()), non_blocking=True)
        if any(t.is_cuda for t in tensors.values()):
            torch.cuda.synchronize()  # the copies into pinned memory are asynchronous
        block_s = time.perf_counter() - began
        self._pending = self._pool.submit(self._write, version, began, block_s)
        return self._pending

    def wait(self) -> Published | None:
        """Block until the write in flight (if any) is done; raises its error."""
        return self._pending.result() if self._pending is not None else None

    def close(self) -> None:
        """Wait for the write in flight (its error stays with its future) and stop the thread."""
        self._pool.shutdown(wait=True)

    def _write(self, version: int, began: float, block_s: float) -> Published:
        ref = write_version(self._buffers, self.root, version, adapter_config=self.adapter_config)
        return Published(ref, block_s, time.perf_counter() - began)

    def _dtype_of(self, name: str, tensor: torch.Tensor) -> torch.dtype:
        if self.dtype is None or not tensor.is_floating_point():
            return tensor.dtype
        if self.keep_fp32.intersection(name.split(".")):
            return tensor.dtype
        return self.dtype

    def _matches(self, tensors: dict[str, torch.Tensor]) -> bool:
        buffers = self._buffers
        return buffers.keys() == tensors.keys() and all(
            buffers[n].shape == t.shape and buffers[n].dtype == self._dtype_of(n, t)
            for n, t in tensors.items()
        )


@contextlib.contextmanager
def _one_thread(cores: set[int]) -> Iterator[None]:
    """torch on one thread meanwhile, and that thread on ``cores`` (if given). A snapshot is a
    memory copy, as fast on one core as on several, and a parallel copy stalls on whichever core
    another process holds (measured on a busy 2-core machine: median 0.6 s with 2 threads, 0.09 s
    with 1, for 513 MiB). A lending trainer's threads may also run on a generator's core, where
    the copy would share the core with the engine: in two main-job runs each had one step
    blocked 0.29–0.36 s, both on the borrowed core, against ≤ 70 ms in the steps that did not
    borrow."""
    import torch

    threads = torch.get_num_threads()
    affinity = os.sched_getaffinity(0)  # this thread's (Linux: 0 is the calling thread)
    pin = bool(cores) and cores != affinity
    torch.set_num_threads(1)
    if pin:
        os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if pin:
            os.sched_setaffinity(0, affinity)
