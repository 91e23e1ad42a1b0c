"""Episodes on a real engine (transformers, tiny random model): loss masks, versions across a
weight update, limits, and untrusted episode code failing without harming the replica."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from areal_flow.engine.base import SamplingConfig
from areal_flow.engine.hf_engine import HFEngine, HFEngineConfig
from areal_flow.episodes import (
    EngineClient,
    Episode,
    EpisodeLLM,
    EpisodeOutcome,
    EpisodeRunner,
    single_turn,
)
from tests.engine.engine_harness import write_state_dict

ROW = {"prompt_token_ids": [1, 330, 2719, 314, 253, 1446], "answer": "7"}


class Replica:
    """What a generator replica holds: an engine, its client, and the reader of its samples."""

    def __init__(self, engine: HFEngine, tokenizer: Any) -> None:
        self.engine = engine
        self.client = EngineClient(engine)
        self.tokenizer = tokenizer

    def runner(self, fn: Callable[..., Awaitable[Episode]], **limits: Any) -> EpisodeRunner:
        settings: dict[str, Any] = {
            "max_turns": 4,
            "max_tokens": None,
            "max_model_len": 512,
            "timeout_s": 60.0,
            **limits,
        }
        return EpisodeRunner(
            fn=fn,
            params={},
            client=self.client,
            sampling=SamplingConfig(temperature=1.0, max_tokens=8),
            tokenizer=self.tokenizer,
            **settings,
        )


@contextlib.asynccontextmanager
async def started(model_dir: Path) -> AsyncIterator[Replica]:
    engine = HFEngine(HFEngineConfig(model=str(model_dir), max_batch=8, seed=3))
    await engine.start()
    replica = Replica(engine, AutoTokenizer.from_pretrained(model_dir))

    reader = asyncio.create_task(replica.client.serve())
    try:
        yield replica
    finally:
        reader.cancel()
        await engine.close()


def on_replica(model_dir: Path, body: Callable[[Replica], Awaitable[None]]) -> None:
    """Run ``body`` on a fresh replica of the tiny model in its own event loop."""

    async def main() -> None:
        async with started(model_dir) as replica:
            await asyncio.wait_for(body(replica), 120)

    asyncio.run(main())


def test_single_turn_is_all_sampled(tiny_model_dir: Path) -> None:
    async def body(replica: Replica) -> None:
        outcome = await replica.runner(single_turn).run(ROW)
        episode = outcome.episode
        assert outcome.failure is None
        assert episode.prompt_token_ids == ROW["prompt_token_ids"]
        assert 1 <= len(episode.response_token_ids) <= 8
        assert episode.loss_mask == [1] * len(episode.response_token_ids)
        assert set(episode.versions) == {0}
        assert all(lp <= 0 for lp in episode.logprobs)

    on_replica(tiny_model_dir, body)


def test_update_between_turns_gives_two_versions_and_masked_insertions(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    async def body(replica: Replica) -> None:
        turned = asyncio.Event()
        updated = asyncio.Event()
        inserted = replica.tokenizer.encode(" <result>42</result>", add_special_tokens=False)

        async def two_turns(llm: EpisodeLLM, row: dict[str, Any]) -> Episode:
            episode = llm.episode()
            episode.add_sampled(await llm.generate(episode))
            episode.add_inserted(inserted)
            turned.set()
            await updated.wait()
            episode.add_sampled(await llm.generate(episode))
            return episode

        run = asyncio.create_task(replica.runner(two_turns).run(ROW))
        await turned.wait()
        weights = write_state_dict(tiny_model_dir, tmp_path / "v1", noise=0.5)
        await replica.engine.update_weights(1, weights)
        updated.set()
        outcome: EpisodeOutcome = await run
        episode = outcome.episode
        assert outcome.failure is None

        first = episode.loss_mask.index(0)
        second = first + len(inserted)
        assert episode.loss_mask == [1] * first + [0] * len(inserted) + [1] * (
            len(episode.loss_mask) - second
        )
        assert len(episode.loss_mask) > second  # the second turn sampled something
        assert episode.response_token_ids[first:second] == inserted
        assert episode.logprobs[first:second] == [0.0] * len(inserted)
        # Sampled tokens: version 0 before the update, 1 after; insertions take the turn before's.
        assert episode.versions == [0] * second + [1] * (len(episode.versions) - second)
        assert " <result>42</result>" in episode.text

    on_replica(tiny_model_dir, body)


def test_turn_limit_keeps_the_episode_as_truncated(tiny_model_dir: Path) -> None:
    async def body(replica: Replica) -> None:
        async def endless(llm: EpisodeLLM, row: dict[str, Any]) -> Episode:
            episode = llm.episode()
            while True:
                episode.add_sampled(await llm.generate(episode))
                episode.add_inserted(llm.encode(" again"))

        outcome = await replica.runner(endless, max_turns=3).run(ROW)
        episode = outcome.episode
        assert outcome.failure is None and episode.finish_reason == "length"
        runs = "".join(str(m) for m in episode.loss_mask).replace("0", " ").split()
        assert len(runs) == 3  # three sampled turns, an insertion after each

    on_replica(tiny_model_dir, body)


def test_token_budget_shortens_turns_and_cuts_the_episode(tiny_model_dir: Path) -> None:
    async def body(replica: Replica) -> None:
        async def long_insertions(llm: EpisodeLLM, row: dict[str, Any]) -> Episode:
            episode = llm.episode()
            episode.add_sampled(await llm.generate(episode))
            episode.add_inserted(llm.encode(" tool output " * 10))
            return episode

        outcome = await replica.runner(long_insertions, max_tokens=12).run(ROW)
        episode = outcome.episode
        assert len(episode.response_token_ids) == 12
        assert episode.finish_reason == "length"
        assert len(episode.loss_mask) == len(episode.versions) == len(episode.logprobs) == 12

    on_replica(tiny_model_dir, body)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("raises", "ZeroDivisionError"),
        ("slow", "timeout"),
        ("bad", "bad_episode"),
        ("temperature", "ValueError"),
    ],
)
def test_failing_episode_code_is_counted_and_harmless(
    tiny_model_dir: Path, case: str, reason: str
) -> None:
    async def body(replica: Replica) -> None:
        async def broken(llm: EpisodeLLM, row: dict[str, Any]) -> Any:
            if case == "raises":
                return 1 / 0
            if case == "slow":
                episode = llm.episode()
                episode.add_sampled(await llm.generate(episode, max_tokens=8))
                await asyncio.sleep(3600)
            if case == "temperature":
                await llm.generate(llm.episode(), temperature=2.0)
            return "not an episode"

        outcome = await replica.runner(broken, timeout_s=2.0).run(ROW)
        assert outcome.failure == reason
        assert outcome.episode.response_token_ids == [] and outcome.episode.finish_reason == "abort"
        assert outcome.episode.metrics == {"failed": 1.0}
        # The replica still serves episodes, and nothing of the failed one is left in the engine.
        assert replica.client.in_flight == 0
        again = await replica.runner(single_turn).run(ROW)
        assert again.failure is None and again.episode.response_token_ids

    on_replica(tiny_model_dir, body)


def test_a_timed_out_turn_is_aborted_in_the_engine(tiny_model_dir: Path) -> None:
    async def body(replica: Replica) -> None:
        async def stuck_in_a_turn(llm: EpisodeLLM, row: dict[str, Any]) -> Episode:
            episode = llm.episode()
            await replica.engine.pause()  # the turn can never finish
            episode.add_sampled(await llm.generate(episode))
            return episode

        outcome = await replica.runner(stuck_in_a_turn, timeout_s=1.0).run(ROW)
        assert outcome.failure == "timeout"
        assert replica.client.in_flight == 0
        await replica.engine.resume()
        for _ in range(100):
            if replica.engine.num_unfinished() == 0:
                break
            await asyncio.sleep(0.05)
        assert replica.engine.num_unfinished() == 0

    on_replica(tiny_model_dir, body)
