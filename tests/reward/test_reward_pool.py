"""The reward pool: any reward function in worker processes. Order, async and sync use, bounded
time on adversarial answers for the math verifier, replacement of workers that hang or die, and
every failure of user code counted by reason. Real spawned processes throughout."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import pytest

from areal_flow.reward import (
    REASONS,
    RewardConfig,
    RewardPool,
    RewardPoolError,
    RewardResult,
    math_pool,
)

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


def rows(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"prompt": "q", "response": r, "answer": a} for r, a in pairs]


def correct(result: RewardResult) -> bool:
    return result.metrics.get("correct") == 1.0


@pytest.fixture(scope="module")
def pool() -> Iterator[RewardPool]:
    with math_pool(PARSE_ALL, workers=2, timeout_s=3.0) as running:
        yield running


def test_sync_and_async_scoring_keep_input_order(pool: RewardPool) -> None:
    pairs = [(f"The answer is {n}.", str(n if n % 3 else n + 1)) for n in range(30)]
    sync = pool.score_sync(rows(pairs))
    assert [correct(r) for r in sync] == [n % 3 != 0 for n in range(30)]
    assert {r.verdict for r in sync} == {"correct", "wrong"}
    assert all(r.metrics["format_ok"] == 1.0 for r in sync)
    async_results = asyncio.run(pool.score(rows(pairs)))
    assert async_results == sync


def test_async_scoring_does_not_block_the_event_loop(pool: RewardPool) -> None:
    async def main() -> int:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        await pool.score(rows([("\\boxed{10^{10^{10}}}", "5")] * 2))  # ~1 s of work each
        stop.set()
        await task
        return ticks

    assert asyncio.run(main()) >= 10


def test_adversarial_answers_finish_in_bounded_time(pool: RewardPool) -> None:
    before = pool.stats()
    start = time.perf_counter()
    results = pool.score_sync(rows([(text, "5") for text in ADVERSARIAL]))
    elapsed = time.perf_counter() - start
    assert elapsed < 10.0, f"adversarial set took {elapsed:.1f} s"
    assert not any(correct(r) for r in results)
    assert all(r.verdict in REASONS for r in results)
    assert {"too_long", "too_complex", "timeout"} <= {r.verdict for r in results}
    after = pool.stats()
    assert after.scored - before.scored == len(ADVERSARIAL)
    # the pool is still healthy afterwards
    assert correct(pool.score_sync(rows([("The answer is 5.", "5")]))[0])


def test_a_hanging_worker_is_killed_and_replaced() -> None:
    # math-verify's own alarm is 5 s here; the pool's deadline of 0.3 s must win.
    config = PARSE_ALL.model_copy(update={"parse_timeout_s": 5})
    with math_pool(config, workers=1, timeout_s=0.3) as pool:
        first_pid = pool.worker_pids()[0]
        start = time.perf_counter()
        # one chunk: the hanging answer sits between good ones
        pairs = [("The answer is 1.", "1"), ("\\boxed{10^{10^{10}}}", "5"), ("#### 3", "3")]
        results = pool.score_sync(rows(pairs))
        assert [r.verdict for r in results] == ["correct", "timeout", "correct"]
        assert results[1].failure == "timeout" and results[1].reward == config.wrong_reward
        assert time.perf_counter() - start < 3.0
        assert correct(pool.score_sync(rows([("The answer is 5.", "5")]))[0])
        assert pool.stats().restarts == 1
        assert pool.worker_pids()[0] != first_pid


def test_a_dying_worker_is_replaced() -> None:
    config = PARSE_ALL.model_copy(update={"parse_timeout_s": 5})
    with math_pool(config, workers=1, timeout_s=30.0) as pool:
        pid = pool.worker_pids()[0]
        assert pid is not None
        future = pool.submit({"prompt": "q", "response": "\\boxed{10^{10^{10}}}", "answer": "5"})
        os.kill(pid, signal.SIGKILL)
        assert future.result(timeout=30).verdict == "worker_crash"
        assert correct(pool.score_sync(rows([("The answer is 5.", "5")]))[0])
        stats = pool.stats()
        assert stats.restarts == 1
        assert stats.failures["worker_crash"] == 1


def test_oversized_responses_never_reach_a_worker(pool: RewardPool) -> None:
    big = "y" * (pool.max_response_chars + 1)
    future = pool.submit({"prompt": "q", "response": big, "answer": "1"})
    assert future.done()  # decided in the caller, no round trip
    assert future.result().failure == "too_long"


def test_pool_refuses_work_when_not_running() -> None:
    pool = RewardPool("tests.reward.fns:plain_float", workers=1)
    with pytest.raises(RewardPoolError, match="not running"):
        pool.submit({"prompt": "q", "response": "a", "answer": "a"})
    with pytest.raises(ValueError, match="workers"):
        RewardPool("tests.reward.fns:plain_float", workers=0)


# -- user reward functions ------------------------------------------------------------------


def test_graded_rewards_metrics_and_extra_row_fields_come_back() -> None:
    with RewardPool("tests.reward.fns:brevity", workers=1) as pool:
        (good, bad) = pool.score_sync(
            [
                {"prompt": "2+2?", "response": "4", "answer": "4", "bonus": 0.5},
                {"prompt": "2+2?", "response": "five", "answer": "4"},
            ]
        )
    assert good.reward == pytest.approx(0.99) and good.verdict == "correct"
    assert good.metrics == {"correct": 1.0, "length": 1.0, "bonus": 0.5}
    assert bad.reward == pytest.approx(-0.04) and bad.metrics["correct"] == 0.0
    assert good.failure is None and bad.failure is None


def test_every_failure_of_user_code_is_counted_and_scored_as_the_failure_reward() -> None:
    row = {"prompt": "q", "response": "a", "answer": "a"}
    cases = {
        "tests.reward.fns:raises": ("exception", "ValueError: cannot score 'a'"),
        "tests.reward.fns:returns_text": ("bad_return", "must be a number, got str"),
        "tests.reward.fns:returns_nan": ("bad_return", "not a finite number"),
        "tests.reward.fns:returns_no_reward": ("bad_return", "without 'reward'"),
    }
    for fn, (reason, message) in cases.items():
        with RewardPool(fn, workers=1, failure_reward=-1.0) as pool:
            results = pool.score_sync([row, row])
            assert [r.failure for r in results] == [reason, reason], fn
            assert all(r.reward == -1.0 and r.verdict == reason for r in results)
            assert message in results[0].message, (fn, results[0].message)
            assert pool.stats().failures == {reason: 2}
            assert pool.stats().restarts == 0  # a failure is a reply, the worker lives on


def test_a_user_function_that_hangs_or_exits_is_stopped_and_the_pool_goes_on() -> None:
    with RewardPool("tests.reward.fns:sleeps", workers=1, timeout_s=0.5) as pool:
        slow, quick = pool.score_sync(
            [
                {"prompt": "", "response": "30", "answer": ""},
                {"prompt": "", "response": "0", "answer": ""},
            ]
        )
        assert slow.failure == "timeout" and quick.reward == 1.0
    with RewardPool("tests.reward.fns:dies", workers=1) as pool:
        dead, alive = pool.score_sync(
            [
                {"prompt": "", "response": "die", "answer": ""},
                {"prompt": "", "response": "x", "answer": ""},
            ]
        )
        assert dead.failure == "worker_crash" and alive.reward == 1.0
        assert pool.stats().restarts == 1


def test_a_reference_that_does_not_load_fails_at_start() -> None:
    with pytest.raises(RewardPoolError, match=r"tests\.reward\.fns:missing"):
        RewardPool("tests.reward.fns:missing", workers=1, start_timeout_s=30).start()
