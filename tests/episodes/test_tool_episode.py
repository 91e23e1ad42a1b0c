"""The built-in tool episode: calls run, results inserted with loss_mask 0, limits respected.

The model's turns come from a scripted engine (a real tokenizer, scripted texts), since a random
tiny model never writes a tool call; graphs/tool_math.py shows the real model doing it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from areal_flow.engine.base import (
    GenerationRequest,
    InferenceEngine,
    Sample,
    SampleStream,
    SamplingConfig,
)
from areal_flow.episodes import EngineClient, EpisodeRunner, tool_episode
from areal_flow.tools import Calculator, ToolSet


class ScriptedEngine(InferenceEngine):
    """Answers each request with the next scripted text, cut after a stop string as an engine
    would; tokens through the real tokenizer, log-prob -0.5 each."""

    def __init__(self, tokenizer: Any, replies: list[str]) -> None:
        self.tokenizer = tokenizer
        self.replies = iter(replies)
        self.stream = SampleStream()
        self.prompts: list[list[int]] = []
        self._version = 0

    @property
    def version(self) -> int:
        return self._version

    async def start(self) -> None:
        pass

    async def submit(self, request: GenerationRequest) -> None:
        self.prompts.append(list(request.prompt_token_ids))
        text = next(self.replies)
        reason = "stop"
        for stop in request.sampling.stop:
            if stop in text:
                text = text[: text.index(stop) + len(stop)]
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) > request.sampling.max_tokens:
            ids, reason = ids[: request.sampling.max_tokens], "length"
            text = self.tokenizer.decode(ids)
        self.stream.put(
            Sample(
                request.request_id,
                0,
                list(request.prompt_token_ids),
                ids,
                [-0.5] * len(ids),
                [self._version] * len(ids),
                reason,  # type: ignore[arg-type]
                text,
            )
        )

    def samples(self) -> AsyncIterator[Sample]:
        return self.stream.__aiter__()

    async def pause(self) -> None:
        pass

    async def update_weights(self, version: int, path: str | Path) -> None:
        self._version = version

    async def resume(self) -> None:
        pass

    async def abort(self, request_id: str) -> None:
        pass

    async def close(self) -> None:
        self.stream.close()

    def num_unfinished(self) -> int:
        return 0


def run_script(model_dir: Path, replies: list[str], max_turns: int = 4) -> tuple[Any, Any, Any]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    engine = ScriptedEngine(tokenizer, replies)
    client = EngineClient(engine)
    tools = ToolSet([Calculator()], style="plain")
    runner = EpisodeRunner(
        fn=tool_episode,
        params={"tools": tools},
        client=client,
        sampling=SamplingConfig(temperature=1.0, max_tokens=64),
        tokenizer=tokenizer,
        max_turns=max_turns,
        max_tokens=None,
        max_model_len=1024,
        timeout_s=30.0,
    )
    row = {"prompt_token_ids": tokenizer.encode("Q: 12 boxes of 7?"), "answer": "84"}

    async def main() -> Any:
        reader = asyncio.create_task(client.serve())
        try:
            return await runner.run(row)
        finally:
            reader.cancel()

    return asyncio.run(main()), engine, tokenizer


def test_a_call_is_answered_and_its_result_masked(tiny_model_dir: Path) -> None:
    outcome, engine, tokenizer = run_script(
        tiny_model_dir,
        ["Boxes: <calc>12*7</calc> and more text", "So the answer is \\boxed{84}."],
    )
    episode = outcome.episode
    assert outcome.failure is None and episode.finish_reason == "stop"
    assert (
        episode.text == "Boxes: <calc>12*7</calc><result>84</result>So the answer is \\boxed{84}."
    )
    result_ids = tokenizer.encode("<result>84</result>", add_special_tokens=False)
    first = episode.loss_mask.index(0)
    assert episode.response_token_ids[first : first + len(result_ids)] == result_ids
    assert episode.loss_mask.count(0) == len(result_ids)
    assert episode.logprobs[first : first + len(result_ids)] == [0.0] * len(result_ids)
    # The second turn continued from the whole conversation so far, result included.
    assert (
        engine.prompts[1]
        == episode.prompt_token_ids + episode.response_token_ids[: first + len(result_ids)]
    )
    assert episode.metrics == {
        "turns": 2.0,
        "tool_calls": 1.0,
        "tool_errors": 0.0,
        "used_tools": 1.0,
    }


def test_bad_calls_are_answered_with_errors(tiny_model_dir: Path) -> None:
    outcome, _, _ = run_script(tiny_model_dir, ["<calc>import os</calc>", "\\boxed{0}"])
    assert outcome.episode.metrics["tool_errors"] == 1.0
    assert "<result>error" in outcome.episode.text


def test_the_turn_limit_truncates_an_episode_that_wants_more_calls(tiny_model_dir: Path) -> None:
    calls = ["<calc>1+1</calc>"] * 5
    outcome, engine, _ = run_script(tiny_model_dir, calls, max_turns=2)
    episode = outcome.episode
    assert episode.finish_reason == "length"
    assert episode.metrics["turns"] == 2.0 and episode.metrics["tool_calls"] == 2.0
    assert len(engine.prompts) == 2
    # The last call's result is not inserted: the episode ends on the model's own tokens.
    assert episode.loss_mask[-1] == 1


def test_an_answer_without_calls_is_one_turn(tiny_model_dir: Path) -> None:
    outcome, _, _ = run_script(tiny_model_dir, ["The answer is \\boxed{84}."])
    assert outcome.episode.metrics["used_tools"] == 0.0
    assert set(outcome.episode.loss_mask) == {1}


def test_a_token_past_the_closing_tag_is_not_inserted_twice(tiny_model_dir: Path) -> None:
    # SmolLM2 (and the tiny model's tokenizer) has one token for "><": a turn stopped at
    # "</calc>" ends in "</calc><", so the result block must go on from "result>".
    outcome, _, tokenizer = run_script(tiny_model_dir, ["<calc>6*7</calc><result>", "\\boxed{42}"])
    episode = outcome.episode
    assert "</calc><result>42</result>" in episode.text
    assert "<<result>" not in tokenizer.decode(episode.response_token_ids)
