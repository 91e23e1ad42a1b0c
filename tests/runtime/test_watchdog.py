"""The driver's loop watchdog: a stalled loop leaves every thread's stack in the run folder."""

from __future__ import annotations

import time
from pathlib import Path

from areal_flow.runtime.watchdog import STALL_FILE, LoopWatchdog


def test_a_stall_is_reported_once_with_stacks_and_again_after_the_loop_turned(
    tmp_path: Path,
) -> None:
    with LoopWatchdog(tmp_path, stall_s=0.5, check_s=0.05) as dog:
        for _ in range(10):  # a loop that turns: no report
            dog.beat()
            time.sleep(0.1)
        assert dog.stalls == 0 and not (tmp_path / STALL_FILE).exists()
        time.sleep(1.5)  # stalled for three stall periods: one report
        assert dog.stalls == 1
        dog.beat()
        time.sleep(1.0)  # turned once, then stalled again: a second report
        assert dog.stalls == 2
    text = (tmp_path / STALL_FILE).read_text()
    assert text.count("driver loop stalled") == 2
    assert "test_a_stall_is_reported_once" in text  # the stalled (main) thread's stack
