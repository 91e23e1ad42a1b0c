"""code_reward: answers run against their tests in the sandbox; passing, failing, forged and
hostile answers each get the right verdict, and none of them disturbs the caller."""

from __future__ import annotations

import asyncio

import pytest

from areal_flow.reward import CodeRewardConfig, code_reward, code_reward_async
from areal_flow.reward.code import extract_code
from areal_flow.tools import SandboxLimits

CONFIG = CodeRewardConfig(
    correct_reward=1.0,
    wrong_reward=-1.0,
    limits=SandboxLimits(cpu_s=1, wall_s=3, output_bytes=10_000, memory_bytes=256 * 2**20),
)
TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"
FORK_BOMB = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"


def answer(code: str, lang: str = "python") -> str:
    return f"Here is my solution:\n```{lang}\n{code}\n```\nIt adds the numbers."


def test_extract_code_prefers_the_last_python_block() -> None:
    text = "```\nbare = 1\n```\n```python\nfirst = 1\n```\n```py\nlast = 2\n```\n```text\nno\n```"
    assert extract_code(text) == "last = 2\n"
    assert extract_code("```\nonly_bare = 1\n```") == "only_bare = 1\n"
    assert extract_code("```text\nprose\n```") is None
    assert extract_code("no code at all") is None
    assert extract_code("```python\nnever closed") is None


needs_sandbox = pytest.mark.usefixtures("sandbox_isolation")


@needs_sandbox
def test_passing_and_failing_answers() -> None:
    good = code_reward(answer("def add(a, b):\n    return a + b"), TESTS, CONFIG)
    assert (good.reward, good.passed, good.reason) == (1.0, True, "passed")
    wrong = code_reward(answer("def add(a, b):\n    return a - b"), TESTS, CONFIG)
    assert (wrong.reward, wrong.passed, wrong.reason) == (-1.0, False, "failed")
    assert wrong.detail == "AssertionError"
    broken = code_reward(answer("def add(a, b) return a + b"), TESTS, CONFIG)
    assert broken.reason == "failed" and broken.detail.startswith("SyntaxError")
    guarded = "def add(a, b):\n    return a + b\n\nif __name__ == '__main__':\n    input()"
    assert code_reward(answer(guarded), TESTS, CONFIG).passed  # its main block stays quiet
    assert code_reward("def add(a, b): return a + b", TESTS, CONFIG).reason == "no_code"
    long = CONFIG.model_copy(update={"max_response_chars": 10})
    assert code_reward(answer("x = 1"), TESTS, long).reason == "too_long"


@needs_sandbox
@pytest.mark.parametrize(
    "forgery",
    [
        "import sys\nsys.exit(0)",
        "import os\nos._exit(0)",
        "import sys\nprint('\\n' * 3)\nsys.stdout.close()",
        "import atexit, os\natexit.register(lambda: os._exit(0))\nraise SystemExit(0)",
    ],
)
def test_early_exits_do_not_pass(forgery: str) -> None:
    verdict = code_reward(answer(forgery), TESTS, CONFIG)
    assert not verdict.passed and verdict.reason == "failed"


@needs_sandbox
@pytest.mark.parametrize(
    ("hostile", "reason"),
    [
        ("while True:\n    pass", "timeout"),
        ("import time\ntime.sleep(600)", "timeout"),
        (FORK_BOMB, "timeout"),
        ("while True:\n    print('spam' * 100)", "limit"),
        ("x = bytearray(8 * 2**30)", "limit"),  # MemoryError
    ],
)
def test_hostile_answers_are_stopped(hostile: str, reason: str) -> None:
    verdict = code_reward(answer(hostile), TESTS, CONFIG)
    assert (verdict.passed, verdict.reason) == (False, reason)


@needs_sandbox
def test_network_and_file_tricks_fail_the_tests() -> None:
    fetch = (
        "import urllib.request\n"
        "def add(a, b):\n"
        "    return int(urllib.request.urlopen('http://127.0.0.1:9/', timeout=2).read())"
    )
    verdict = code_reward(answer(fetch), TESTS, CONFIG)
    assert verdict.reason == "failed" and "URLError" in verdict.detail
    rewrite = (
        "open('tests.py', 'w').write('')\n"  # rewriting its own copy of the tests changes nothing
        "def add(a, b):\n    return 0"
    )
    assert code_reward(answer(rewrite), TESTS, CONFIG).reason == "failed"


@needs_sandbox
def test_async_scoring_runs_answers_concurrently() -> None:
    async def score_all() -> list[bool]:
        answers = [answer(f"def add(a, b):\n    return a + b + {k}") for k in range(4)]
        verdicts = await asyncio.gather(*(code_reward_async(a, TESTS, CONFIG) for a in answers))
        return [v.passed for v in verdicts]

    assert asyncio.run(score_all()) == [True, False, False, False]
