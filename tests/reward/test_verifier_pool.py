"""The verifier process pool: order, async and sync use, bounded time on adversarial answers,
replacement of workers that hang or die. Real spawned processes throughout."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import pytest

from areal_flow.reward import REASONS, RewardConfig, VerifierError, VerifierPool

ADVERSARIAL = [
    "x" * 2_000_000,  # a megabyte-scale string
    "The answer is " + "9" * 5000 + ".",  # a 5000-digit number
    "\\boxed{" + "{" * 30_000,  # unbalanced, deep
    "\\boxed{" + "\\frac{" * 60 + "1" + "}{2}" * 60 + "}",  # deeply nested LaTeX
    "\\boxed{" + "\\sqrt{" * 40 + "2" + "}" * 40 + "}",
    "The answer is " + "(" * 200 + "1" + ")" * 200 + ".",
    "\\boxed{" + "(" * 30 + "1" + ")" * 30 + "}",  # short but deep
    "The answer is " + "\\sqrt{" * 12 + "2" + "}" * 12 + ".",
    "\\boxed{10^10^10}",
    "\\boxed{10^{10^{10}}}",
    "\\boxed{9^{9^{9^{9}}}}",
    "\\boxed{(10^{10})!}",
    "The answer is 10!!!!.",
    "The answer is 1e999999999.",
    "\\boxed{\\left(\\left(\\left(\\left(\\left(1\\right)\\right)\\right)\\right)\\right)}",
    "The answer is " * 2000,
    "#### " + "7" * 100_000,
    "\\boxed{" + "\\" * 10_000 + "}",
    "The answer is \x00\x01\x02.",
    "\\boxed{}" * 1000,
    "The answer is \\frac{}{}{}{}.",
]


# The number rule would stop the expressions below before math-verify ("5" is a plain number);
# these tests are about what the parser does to the pool, so they let expressions through.
PARSE_ALL = RewardConfig(number_answers=False)


@pytest.fixture(scope="module")
def pool() -> Iterator[VerifierPool]:
    with VerifierPool(PARSE_ALL, workers=2, timeout_s=3.0) as running:
        yield running


def test_sync_and_async_scoring_keep_input_order(pool: VerifierPool) -> None:
    pairs = [(f"The answer is {n}.", str(n if n % 3 else n + 1)) for n in range(30)]
    sync = pool.score_sync(pairs)
    assert [v.correct for v in sync] == [n % 3 != 0 for n in range(30)]
    assert [v.extracted for v in sync] == [str(n) for n in range(30)]
    async_verdicts = asyncio.run(pool.score(pairs))
    assert async_verdicts == sync


def test_async_scoring_does_not_block_the_event_loop(pool: VerifierPool) -> None:
    async def main() -> int:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        await pool.score([("\\boxed{10^{10^{10}}}", "5")] * 2)  # ~1 s of worker time each
        stop.set()
        await task
        return ticks

    assert asyncio.run(main()) >= 10


def test_adversarial_answers_finish_in_bounded_time(pool: VerifierPool) -> None:
    before = pool.stats()
    start = time.perf_counter()
    verdicts = pool.score_sync([(text, "5") for text in ADVERSARIAL])
    elapsed = time.perf_counter() - start
    assert elapsed < 10.0, f"adversarial set took {elapsed:.1f} s"
    assert all(not v.correct for v in verdicts)
    assert all(v.reason in REASONS for v in verdicts)
    reasons = {v.reason for v in verdicts}
    assert {"too_long", "too_complex", "timeout"} <= reasons
    after = pool.stats()
    assert after.scored - before.scored == len(ADVERSARIAL)
    # the pool is still healthy afterwards
    assert pool.score_sync([("The answer is 5.", "5")])[0].correct


def test_a_hanging_worker_is_killed_and_replaced() -> None:
    # math-verify's own alarm is 5 s here; the pool's deadline of 0.3 s must win.
    config = PARSE_ALL.model_copy(update={"parse_timeout_s": 5})
    with VerifierPool(config, workers=1, timeout_s=0.3) as pool:
        first_pid = pool.worker_pids()[0]
        start = time.perf_counter()
        # one chunk: the hanging answer sits between good ones
        pairs = [("The answer is 1.", "1"), ("\\boxed{10^{10^{10}}}", "5"), ("#### 3", "3")]
        verdicts = pool.score_sync(pairs)
        assert [v.reason for v in verdicts] == ["correct", "timeout", "correct"]
        assert time.perf_counter() - start < 3.0
        assert pool.score_sync([("The answer is 5.", "5")])[0].correct
        assert pool.stats().restarts == 1
        assert pool.worker_pids()[0] != first_pid


def test_a_dying_worker_is_replaced() -> None:
    config = PARSE_ALL.model_copy(update={"parse_timeout_s": 5})
    with VerifierPool(config, workers=1, timeout_s=30.0) as pool:
        pid = pool.worker_pids()[0]
        assert pid is not None
        future = pool.submit("\\boxed{10^{10^{10}}}", "5")
        os.kill(pid, signal.SIGKILL)
        assert future.result(timeout=30).reason == "worker_crash"
        assert pool.score_sync([("The answer is 5.", "5")])[0].correct
        stats = pool.stats()
        assert stats.restarts == 1
        assert stats.by_reason["worker_crash"] == 1


def test_oversized_responses_never_reach_a_worker(pool: VerifierPool) -> None:
    future = pool.submit("y" * (pool.config.max_response_chars + 1), "1")
    assert future.done()  # decided in the caller, no round trip
    assert future.result().reason == "too_long"


def test_pool_refuses_work_when_not_running() -> None:
    pool = VerifierPool(workers=1)
    with pytest.raises(VerifierError, match="not running"):
        pool.submit("The answer is 1.", "1")
    with pytest.raises(ValueError, match="workers"):
        VerifierPool(workers=0)
