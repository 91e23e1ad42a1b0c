"""Python execution as a tool: the model's code runs in the sandbox, its output comes back.

Role: `PythonTool` wraps `areal_flow.tools.sandbox.run_python` (plain-text form
``<python>code</python>``). Each call is a fresh sandbox: no state survives between calls.

Rules:
- A program that fails, times out or hits a limit is a normal result (``ok=True``): its output
  and a status line are what the model needs to see. Only a sandbox that cannot be set up is an
  error, and it propagates (`SandboxError`): that is the host's problem, not the model's.
- The text is stdout, then stderr when there is any, then a status line unless the program
  exited 0; ``Tool.max_result_chars`` caps it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from areal_flow.tools.base import Tool
from areal_flow.tools.sandbox import SandboxLimits, SandboxResult, run_python


class PythonTool(Tool):
    """Run a Python program in the sandbox and report its output."""

    name: ClassVar[str] = "python"
    description: ClassVar[str] = (
        "Run a Python 3 program and return what it prints. No network, no files kept; "
        "each call starts fresh."
    )
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"code": {"type": "string", "description": "The program to run."}},
        "required": ["code"],
        "additionalProperties": False,
    }

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        *,
        tag: str | None = "python",
        max_result_chars: int = 2000,
    ) -> None:
        self.limits = limits or SandboxLimits(cpu_s=5, wall_s=10)
        # The sandbox enforces its own wall limit; the tool's timeout only guards against a
        # hung set-up, so it sits well past it.
        super().__init__(
            tag=tag,
            tag_argument="code" if tag else None,
            timeout_s=self.limits.wall_s + 30,
            max_result_chars=max_result_chars,
        )

    async def call(self, args: dict[str, Any]) -> str:
        return describe(await run_python(args["code"], self.limits))


def describe(result: SandboxResult) -> str:
    """The model-facing text of a sandbox run."""
    parts = [result.stdout.rstrip("\n")] if result.stdout else []
    if result.stderr:
        parts.append(f"[stderr]\n{result.stderr.rstrip()}")
    status = {
        "wall_time": "stopped: wall-clock limit reached",
        "cpu_time": "stopped: CPU time limit reached",
        "output_limit": "stopped: too much output",
        "memory": "stopped: out of memory",
        None: None if result.exit_code == 0 else f"exit status {result.exit_code}",
    }[result.stopped]
    if status is not None:
        parts.append(f"[{status}]")
    return "\n".join(parts) if parts else "[no output]"
