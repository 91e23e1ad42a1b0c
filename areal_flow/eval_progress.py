"""One progress bar for an evaluation, with the engine's own output in a log file.

Rules:
- While an ``EvalProgress`` is open, this process's stdout and stderr (file descriptors 1 and
  2, so also every process it starts meanwhile: vLLM's engine core, compiler runs) go to
  ``log``. vLLM's start-up and compilation logs are hundreds of lines a person does not read
  unless something failed; the log keeps them for that case.
- The bar draws on the terminal the process had when the progress opened (a duplicate of its
  stdout), so it is the one thing the user sees: the stage (starting the engine, scoring a
  model) and the episodes done out of all the evaluation's episodes.
- Closing restores both descriptors, also when the evaluation raised.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import TracebackType
from typing import IO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


class EvalProgress:
    """A context manager: ``stage(text)``, ``add_total(n)`` and ``advance()`` move the bar."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self._saved: tuple[int, int] | None = None
        self._terminal: IO[str] | None = None
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> EvalProgress:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        self._terminal = os.fdopen(os.dup(1), "w", buffering=1)
        target = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(target, 1)
        os.dup2(target, 2)
        os.close(target)
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("episodes"),
            TimeElapsedColumn(),
            console=Console(file=self._terminal),
        )
        self._task = self._progress.add_task("evaluating", total=0)
        self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
        sys.stdout.flush()
        sys.stderr.flush()
        if self._saved is not None:
            os.dup2(self._saved[0], 1)
            os.dup2(self._saved[1], 2)
            os.close(self._saved[0])
            os.close(self._saved[1])
            self._saved = None
        if self._terminal is not None:
            self._terminal.close()
            self._terminal = None

    def stage(self, text: str) -> None:
        """What the evaluation is doing now (the bar's label)."""
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=text)

    def add_total(self, episodes: int) -> None:
        """``episodes`` more to run (each model's are added when its scoring starts)."""
        if self._progress is not None and self._task is not None:
            total = self._progress.tasks[0].total or 0
            self._progress.update(self._task, total=total + episodes)

    def advance(self) -> None:
        """One episode finished."""
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task)
