"""Build a cached folder once per machine, however many processes ask for it at the same time.

Rules:
- ``convert_once(target, write, required)`` returns ``target`` when it already holds every
  ``required`` file; otherwise one process builds it and every other one waits for it. A run
  starts all its nodes at once and each prepares the same model: without this, each of them
  converted it, on the same cores, and all but one threw the result away.
- Waiting is an exclusive ``flock`` on ``<cache>/.locks/<name>.lock``. The kernel drops a
  lock when its process dies, so a converter killed mid-way never leaves the others stuck; the
  next holder starts the conversion again.
- ``write`` fills a private temporary folder next to ``target``, which is renamed into place
  only once it is complete: a half-written folder never has ``target``'s name, and a reader
  never sees one. Temporaries left by killed converters are removed by the next holder of
  the lock (no one else can be writing one then).
- A ``target`` that lacks a required file (damaged by hand, or a disk that filled up) is moved
  aside and built again, never used.
- Keying is the caller's: the name of ``target`` must change when the source changes (the GGUF
  conversion puts the source's content hash in it), so a changed source is converted again.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

LOCKS = ".locks"


def is_complete(folder: Path, required: Sequence[str]) -> bool:
    """Whether ``folder`` holds every ``required`` file."""
    return all((folder / name).is_file() for name in required)


def convert_once(target: Path, write: Callable[[Path], None], required: Sequence[str]) -> Path:
    """``target``, built by ``write(temporary_folder)`` unless it is already complete."""
    if not required:
        raise ValueError("convert_once: name at least one required file, or nothing is checked")
    if is_complete(target, required):
        return target
    cache = target.parent
    (cache / LOCKS).mkdir(parents=True, exist_ok=True)
    with (cache / LOCKS / f"{target.name}.lock").open("a+") as lock:
        began = time.monotonic()
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process that is preparing %s", target)
            fcntl.flock(lock, fcntl.LOCK_EX)
            log.info("%s ready after %.1f s of waiting", target, time.monotonic() - began)
        try:
            if is_complete(target, required):  # the holder before us built it
                return target
            _clear_leftovers(target)
            _build(target, write, required)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target


def _temporary_prefix(target: Path) -> str:
    return f".{target.name}."


def _clear_leftovers(target: Path) -> None:
    """Remove temporaries of killed converters, and move a damaged ``target`` out of the way
    (renamed first: a process still reading its files keeps them until it closes them)."""
    for leftover in target.parent.glob(f"{_temporary_prefix(target)}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if target.exists():
        log.warning("%s is incomplete; building it again", target)
        aside = Path(tempfile.mkdtemp(prefix=_temporary_prefix(target), dir=target.parent))
        target.rename(aside / "damaged")
        shutil.rmtree(aside, ignore_errors=True)


def _build(target: Path, write: Callable[[Path], None], required: Sequence[str]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(target), dir=target.parent))
    log.info("building %s", target)
    began = time.monotonic()
    try:
        write(tmp)
        missing = [name for name in required if not (tmp / name).is_file()]
        if missing:
            raise RuntimeError(f"building {target} wrote no {', '.join(missing)}")
        tmp.rename(target)
        log.info("built %s in %.1f s", target, time.monotonic() - began)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
