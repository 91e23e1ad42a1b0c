"""The end-of-run evaluation: one progress bar with the engine's output in a log, and the
generator's engine settings (so vLLM's compile cache from the run is reused)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from areal_flow.loader import load_graph
from areal_flow.report import eval_settings

ROOT = Path(__file__).resolve().parents[2]

# Opens a progress, then talks like an engine would: its own stdout and stderr, and a child
# process's output. ``raise`` as the second argument makes the block fail half-way.
SCRIPT = textwrap.dedent(
    """
    import subprocess, sys
    from pathlib import Path
    from areal_flow.eval_progress import EvalProgress

    log, fail = Path(sys.argv[1]), sys.argv[2] == "raise"
    try:
        with EvalProgress(log) as progress:
            progress.add_total(3)
            progress.stage("scoring the checkpoint")
            print("INFO engine stdout line", flush=True)
            print("INFO engine stderr line", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, "-c", "print('INFO child process line')"])
            for _ in range(3):
                progress.advance()
            if fail:
                raise RuntimeError("engine died")
    except RuntimeError as error:
        print(f"caught: {error}", file=sys.stderr)
    print("back on the terminal", flush=True)
    """
)


def _run(log: Path, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(log), mode],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.parametrize("mode", ["ok", "raise"])
def test_engine_output_goes_to_the_log_and_the_terminal_shows_one_bar(
    tmp_path: Path, mode: str
) -> None:
    log = tmp_path / "logs" / "evaluation.log"
    done = _run(log, mode)
    assert done.returncode == 0, done.stderr
    assert "INFO" not in done.stdout + done.stderr  # no engine line reached the terminal
    assert "scoring the checkpoint" in done.stdout and "3/3" in done.stdout
    assert done.stdout.rstrip().endswith("back on the terminal")  # descriptors restored
    if mode == "raise":
        assert "caught: engine died" in done.stderr
    text = log.read_text()
    for line in ("engine stdout line", "engine stderr line", "child process line"):
        assert line in text


class Recorder:
    """Stands in for ``EvalProgress``: what an evaluation tells its progress."""

    def __init__(self) -> None:
        self.stages: list[str] = []
        self.total = 0
        self.done = 0

    def stage(self, text: str) -> None:
        self.stages.append(text)

    def add_total(self, episodes: int) -> None:
        self.total += episodes

    def advance(self) -> None:
        self.done += 1


@pytest.mark.slow
def test_an_evaluation_reports_every_episode_and_runs_the_given_engine_settings(
    tiny_model_dir: Path,
) -> None:
    from areal_flow.evaluate import evaluate_models

    progress = Recorder()
    results = evaluate_models(
        [tiny_model_dir, tiny_model_dir],
        "arithmetic:add1",
        problems=3,
        samples=2,
        k=2,
        max_tokens=4,
        engine="hf",
        engine_settings={"max_batch": 2, "max_model_len": 512},
        progress=progress,  # type: ignore[arg-type]
    )
    assert len(results) == 2 and results[0].problems == {"all": 3, "add1": 3}
    assert progress.total == progress.done == 2 * 3 * 2
    assert progress.stages[0] == "starting the hf engine"
    assert [s.split(" (")[0] for s in progress.stages[1:]] == [
        "scoring base model",
        "scoring model",
    ]
    with pytest.raises(ValueError, match="max_batch"):  # settings reach the engine's config
        evaluate_models([tiny_model_dir], "arithmetic:add1", problems=1, samples=1, k=1,
                        engine="hf", engine_settings={"max_batch": 0})  # fmt: skip


def test_the_run_evaluation_starts_its_engine_like_the_generator(smollm2_dir: Path) -> None:
    """vLLM keys its compile cache on the batch size (max_num_seqs) among others: the
    evaluation's engine takes the generator's settings, so it reuses the run's compilation.
    They do not change what is scored, so the base score's cache key ignores them (dtype
    aside)."""
    graph = load_graph(ROOT / "graphs" / "math_rl.py")
    generator: Any = next(n for n in graph.nodes if n.kind == "generator")
    settings = eval_settings(graph)
    assert settings is not None
    assert settings.engine_settings == generator.engine_settings()
    assert settings.engine_settings["max_num_seqs"] == generator.max_running
    assert settings.engine_settings["enforce_eager"] is generator.eager
    dtype_only = {"dtype": settings.engine_settings["dtype"]}
    bare = type(settings)(**{**settings.__dict__, "engine_settings": dtype_only})
    assert bare.cache_key() == settings.cache_key()
    dtype = "float32" if settings.engine_settings["dtype"] == "bfloat16" else "bfloat16"
    other = {**settings.engine_settings, "dtype": dtype}
    assert type(settings)(**{**settings.__dict__, "engine_settings": other}).cache_key() != (
        settings.cache_key()
    )
    hf = load_graph(ROOT / "graphs" / "math_rl.py", ["evaluation.engine=hf"])
    assert eval_settings(hf).engine_settings == {}  # type: ignore[union-attr]
