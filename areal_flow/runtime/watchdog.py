"""A thread that notices when the driver's event loop stops turning, and records where it is.

Rules:
- The driver's loop calls ``beat()`` once per turn (every ~0.1 s when idle).
- A daemon thread checks every ``check_s``; once no beat came for ``stall_s`` seconds it writes
  every thread's stack (``faulthandler``) to ``driver-stall.log`` in the run folder and prints
  one warning naming that file. Once per stall: the next report waits for the loop to turn.
- It never stops the run itself. A driver that is stalled cannot be trusted to stop its
  replicas cleanly, and they stop themselves after ``DRIVER_SILENT_S`` without pings anyway;
  the stack dump is what makes such a hang diagnosable afterwards.
"""

from __future__ import annotations

import faulthandler
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

STALL_FILE = "driver-stall.log"


class LoopWatchdog:
    """Context manager: ``with LoopWatchdog(run_dir) as dog: ... dog.beat() every turn``."""

    def __init__(self, run_dir: Path, stall_s: float = 30.0, check_s: float = 1.0) -> None:
        self.path = run_dir / STALL_FILE
        self.stall_s = stall_s
        self.check_s = check_s
        self.stalls = 0
        self._last = time.monotonic()
        self._reported = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="driver-watchdog", daemon=True)

    def beat(self) -> None:
        self._last = time.monotonic()
        self._reported = False

    def __enter__(self) -> LoopWatchdog:
        self.beat()
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(self.check_s + 1)

    def _watch(self) -> None:
        while not self._stop.wait(self.check_s):
            silent = time.monotonic() - self._last
            if silent < self.stall_s or self._reported:
                continue
            self._reported = True
            self.stalls += 1
            with self.path.open("a") as out:
                out.write(f"--- driver loop stalled for {silent:.0f} s at {time.ctime()} ---\n")
                out.flush()
                faulthandler.dump_traceback(out, all_threads=True)
            print(
                f"warning: the driver's event loop has not turned for {silent:.0f} s; "
                f"every thread's stack is in {self.path}",
                file=sys.stderr,
                flush=True,
            )
