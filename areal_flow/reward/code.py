"""Reward for code answers: run the response's program against the task's tests in the sandbox.

Role: `code_reward(response, tests)` for code tasks (MBPP/HumanEval-style ``assert`` tests),
sync for reward workers and async (`code_reward_async`) for nodes with an event loop.

Rules:
- The program is the last fenced block tagged python (```` ```python ````, ``py``, ``python3``),
  else the last untagged fenced block; a response without one is ``no_code``. Scans are linear.
- A harness runs the program as module ``answer`` (so a ``__main__`` guard stays quiet), then
  the tests in the program's namespace, in one sandboxed interpreter. Both files are read before
  the program runs, so it cannot rewrite the tests. It passes only if the harness then prints a
  random token it read from stdin before the program started, so a program that exits early
  (``sys.exit(0)``, ``os._exit(0)``) cannot pass.
- Not guaranteed: program and tests share an interpreter, so a program written to defeat the
  tests (objects equal to everything, patched builtins, digging the token out of the harness's
  frames) can pass. The sandbox keeps the run safe; it does not make the reward unforgeable.
- Every outcome is a verdict, never an exception; only a sandbox that cannot be set up raises
  (`SandboxError`), since then no answer can be scored.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from areal_flow.tools.sandbox import SandboxLimits, SandboxResult, run_python

CodeReason = Literal["passed", "failed", "no_code", "too_long", "timeout", "limit"]

_PYTHON_TAGS = ("python", "py", "python3")
_HARNESS = """\
import sys


def main():
    token = sys.stdin.readline().strip()
    sources = {}
    for path in ("answer.py", "tests.py"):  # both read before the answer runs and can edit them
        with open(path, encoding="utf-8") as f:
            sources[path] = f.read()
    namespace = {"__name__": "answer"}
    for path, source in sources.items():
        try:
            exec(compile(source, path, "exec"), namespace)
        except SystemExit as e:
            sys.stderr.write(f"{path} exited ({e.code!r}) before the tests finished\\n")
            raise SystemExit(1) from None
    sys.__stdout__.write("\\n" + token + "\\n")


main()
"""


class CodeRewardConfig(BaseModel):
    """What code answers earn and the limits they run under."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    correct_reward: float = Field(1.0, description="Reward when every test passes.")
    wrong_reward: float = Field(0.0, description="Reward otherwise (failure, limit, no code).")
    limits: SandboxLimits = Field(
        default_factory=lambda: SandboxLimits(cpu_s=5, wall_s=10),
        description="Sandbox limits for one answer with its tests.",
    )
    max_response_chars: int = Field(
        65536, gt=0, description="Longer responses are wrong with reason 'too_long', unrun."
    )


@dataclass(frozen=True)
class CodeVerdict:
    """The outcome of one answer: ``detail`` is the last line of the error, or the limit hit."""

    reward: float
    passed: bool
    reason: CodeReason
    detail: str = ""


def extract_code(response: str) -> str | None:
    """The program in ``response``: the last python-tagged fenced block, else the last bare one."""
    tagged: str | None = None
    bare: str | None = None
    pos = 0
    while (start := response.find("```", pos)) >= 0:
        header_end = response.find("\n", start + 3)
        if header_end < 0:
            break
        stop = response.find("```", header_end + 1)
        if stop < 0:
            break
        tag = response[start + 3 : header_end].strip().lower()
        body = response[header_end + 1 : stop]
        if tag in _PYTHON_TAGS:
            tagged = body
        elif not tag:
            bare = body
        pos = stop + 3
    return tagged if tagged is not None else bare


async def code_reward_async(
    response: str, tests: str, config: CodeRewardConfig | None = None
) -> CodeVerdict:
    """Score ``response`` by running its program against ``tests`` (Python with asserts)."""
    config = config or CodeRewardConfig()
    if len(response) > config.max_response_chars:
        return _verdict(config, "too_long", f"{len(response)} characters")
    code = extract_code(response)
    if code is None:
        return _verdict(config, "no_code", "no fenced code block in the response")
    token = secrets.token_hex(16)
    result = await run_python(
        _HARNESS,
        config.limits,
        files={"answer.py": code, "tests.py": tests},
        stdin=token + "\n",
    )
    return _judge(result, token, config)


def code_reward(response: str, tests: str, config: CodeRewardConfig | None = None) -> CodeVerdict:
    """`code_reward_async` for callers without an event loop."""
    return asyncio.run(code_reward_async(response, tests, config))


def _judge(result: SandboxResult, token: str, config: CodeRewardConfig) -> CodeVerdict:
    if result.timed_out:
        return _verdict(config, "timeout", f"stopped: {result.stopped}")
    if result.stopped is not None:
        return _verdict(config, "limit", f"stopped: {result.stopped}")
    lines = result.stdout.rstrip("\n").splitlines()
    if result.exit_code == 0 and lines and lines[-1] == token:
        return CodeVerdict(config.correct_reward, True, "passed")
    errors = result.stderr.strip().splitlines()
    detail = errors[-1] if errors else f"exit status {result.exit_code}, tests not completed"
    return _verdict(config, "failed", detail)


def _verdict(config: CodeRewardConfig, reason: CodeReason, detail: str) -> CodeVerdict:
    return CodeVerdict(config.wrong_reward, False, reason, detail)
