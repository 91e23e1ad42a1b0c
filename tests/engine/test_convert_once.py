"""The conversion cache: one build per machine, a changed source rebuilt, half folders never used.

The concurrency tests start real processes: the waiting is a file lock between processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from areal_flow import models
from areal_flow.convert_once import LOCKS, convert_once
from areal_flow.models import convert_gguf, smollm2_gguf_path

REQUIRED = ("config.json", "weights.bin")

# A converter in its own process: announces itself in ``log`` (one line per build), writes
# the first file, then the second after ``pause`` seconds, and prints the folder it got.
CONVERTER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from areal_flow.convert_once import convert_once

    target, log, pause = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])

    def write(out):
        with log.open("a") as f:
            f.write(f"{os.getpid()}\\n")
        (out / "config.json").write_text("{}")
        time.sleep(pause)
        (out / "weights.bin").write_bytes(b"w" * 1000)

    print(convert_once(target, write, ("config.json", "weights.bin")), flush=True)
    """
)


def _converter(target: Path, log: Path, pause: float) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(models.__file__).parents[1])}
    return subprocess.Popen(
        [sys.executable, "-c", CONVERTER, str(target), str(log), str(pause)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name != LOCKS)


def _counting_writer(calls: list[Path]) -> object:
    def write(out: Path) -> None:
        calls.append(out)
        (out / "config.json").write_text("{}")
        (out / "weights.bin").write_bytes(b"w")

    return write


def test_two_processes_asking_at_once_build_once(tmp_path: Path) -> None:
    target, log = tmp_path / "cache" / "model-abc", tmp_path / "builds.log"
    first = _converter(target, log, pause=2.0)
    second = _converter(target, log, pause=2.0)
    outputs = [p.communicate(timeout=60)[0].strip() for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0]
    assert outputs == [str(target), str(target)]
    assert len(log.read_text().splitlines()) == 1  # one build; the other process waited
    assert (target / "weights.bin").read_bytes() == b"w" * 1000
    assert _leftovers(target.parent) == [target.name]


def test_a_converter_killed_half_way_leaves_nothing_that_is_used(tmp_path: Path) -> None:
    """Killed between its two files: no target appears, the lock is free again, and the next
    caller builds a complete folder and removes the half-written one."""
    target, log = tmp_path / "cache" / "model-abc", tmp_path / "builds.log"
    victim = _converter(target, log, pause=60.0)
    deadline = time.monotonic() + 30
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.exists(), "the converter never started building"
    time.sleep(0.2)  # let it write its first file
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    assert not target.exists()
    half = [p for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")]
    assert half and (half[0] / "config.json").is_file() and not (half[0] / "weights.bin").exists()

    calls: list[Path] = []
    began = time.monotonic()
    assert convert_once(target, _counting_writer(calls), REQUIRED) == target  # type: ignore[arg-type]
    assert time.monotonic() - began < 10  # the dead process's lock did not hold us
    assert len(calls) == 1 and (target / "weights.bin").read_bytes() == b"w"
    assert _leftovers(target.parent) == [target.name]


def test_an_incomplete_target_is_built_again(tmp_path: Path) -> None:
    target = tmp_path / "model-abc"
    target.mkdir()
    (target / "config.json").write_text("{}")  # weights missing: damaged by hand
    calls: list[Path] = []
    assert convert_once(target, _counting_writer(calls), REQUIRED) == target  # type: ignore[arg-type]
    assert len(calls) == 1 and (target / "weights.bin").is_file()
    assert convert_once(target, _counting_writer(calls), REQUIRED) == target  # type: ignore[arg-type]
    assert len(calls) == 1  # complete now: used as is
    assert _leftovers(tmp_path) == [target.name]


def test_a_failed_or_short_build_publishes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "model-abc"

    def crash(out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        convert_once(target, crash, REQUIRED)
    with pytest.raises(RuntimeError, match=r"weights\.bin"):
        convert_once(target, lambda out: (out / "config.json").write_text("{}"), REQUIRED)
    assert _leftovers(tmp_path) == []


def test_a_changed_gguf_is_converted_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GGUF cache is keyed by content: the same bytes (even touched) reuse the folder,
    changed bytes get a new one. The writer is counted, not run (conversion is ~20 s)."""
    calls: list[Path] = []
    counting = _counting_writer(calls)
    monkeypatch.setattr(models, "CONVERTED_MODEL_FILES", REQUIRED)
    monkeypatch.setattr(models, "_write_hf_folder_from_gguf", lambda gguf, out: counting(out))  # type: ignore[operator]
    source, cache = tmp_path / "m.gguf", tmp_path / "cache"
    source.write_bytes(b"GGUF version one")
    first = convert_gguf(source, cache)
    os.utime(source, (time.time() + 5, time.time() + 5))
    assert convert_gguf(source, cache) == first and len(calls) == 1
    source.write_bytes(b"GGUF version two")
    second = convert_gguf(source, cache)
    assert second != first and len(calls) == 2
    assert second.name.startswith("m-") and (second / "weights.bin").is_file()


@pytest.mark.slow
def test_real_gguf_converted_once_by_two_processes(tmp_path: Path) -> None:
    """SmolLM2's GGUF, two processes at once into an empty cache: one conversion, one folder."""
    script = textwrap.dedent(
        """
        import logging, sys
        from pathlib import Path
        from areal_flow.models import convert_gguf
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        print(convert_gguf(Path(sys.argv[1]), Path(sys.argv[2])), flush=True)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(models.__file__).parents[1])}
    cache = tmp_path / "cache"
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(smollm2_gguf_path()), str(cache)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=600) for p in runs]
    assert [p.returncode for p in runs] == [0, 0], results
    folders = {out.strip() for out, _ in results}
    assert len(folders) == 1
    logs = "".join(err for _, err in results)
    assert logs.count("building ") == 1 and "waiting for another process" in logs
    folder = Path(folders.pop())
    assert (folder / "model.safetensors").stat().st_size > 400e6
    assert _leftovers(cache) == [folder.name]
