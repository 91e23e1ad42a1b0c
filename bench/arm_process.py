"""One benchmark arm in a fresh interpreter, its result the last JSON line it prints.

Benches that compare engine arms re-run themselves with ``--arm NAME`` so that no arm inherits
another's memory, caches or threads; this reads back what the arm printed.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any


def run_arm_process(
    name: str, command: Sequence[str], env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Run ``command`` and return the last line of its stdout that starts with ``{``, as JSON.
    A failed arm, or one that printed no such line, raises with its exit code and the last 30
    lines of its stderr."""
    done = subprocess.run(list(command), env=env, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.splitlines()[-30:])
        raise RuntimeError(f"arm {name} failed (exit {done.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result
