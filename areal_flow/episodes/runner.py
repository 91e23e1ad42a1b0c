"""Running an untrusted episode function: time limit, limits, failures counted, never lost.

Rules:
- An episode function is ``async def fn(llm, row, **params) -> Episode``; ``row`` is the prompt
  row (prompt, answer, the dataset's extra fields, …).
- It runs with a wall-time limit (``timeout_s``); on time-out its pending turn is aborted.
- ``EpisodeLimit`` (turn or token budget) keeps what the function built so far (the last
  episode it started) as a ``length`` trajectory.
- Any other failure — an exception, a time-out, a return value that is not a valid ``Episode``
  of the row's prompt — gives an empty ``abort`` trajectory (reward from an empty response,
  no loss) and a named reason; the caller counts reasons and stops the node when failures
  repeat (``max_failed_in_a_row``), so a broken function cannot silently train on nothing.
- A response longer than the token budget is cut to it (``length``).
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from areal_flow.engine.base import SamplingConfig
from areal_flow.episodes.episode import Episode, EpisodeLimit
from areal_flow.episodes.llm import EngineClient, EpisodeLLM

if TYPE_CHECKING:
    from areal_flow.roles import GeneratorSpec

EpisodeFn = Callable[..., Awaitable[Episode]]


@dataclass(frozen=True)
class EpisodePlan:
    """Which episode function runs, with which limits: a generator's episode fields, so that
    evaluation runs episodes exactly as training does."""

    fn: str = "areal_flow.episodes.builtin:single_turn"
    params: dict[str, Any] = field(default_factory=dict)
    max_turns: int = 1
    max_tokens: int | None = None
    timeout_s: float = 600.0
    max_model_len: int = 1024

    @classmethod
    def of(cls, generator: GeneratorSpec) -> EpisodePlan:
        return cls(
            fn=generator.episode,
            params=dict(generator.episode_params),
            max_turns=generator.max_turns,
            max_tokens=generator.max_episode_tokens,
            timeout_s=generator.episode_timeout_s,
            max_model_len=generator.max_model_len,
        )

    def runner(
        self, client: EngineClient, sampling: SamplingConfig, tokenizer: Any
    ) -> EpisodeRunner:
        from areal_flow.usercode import resolve

        return EpisodeRunner(
            fn=resolve(self.fn),
            params=self.params,
            client=client,
            sampling=sampling,
            tokenizer=tokenizer,
            max_turns=self.max_turns,
            max_tokens=self.max_tokens,
            max_model_len=self.max_model_len,
            timeout_s=self.timeout_s,
        )


@dataclass(frozen=True)
class EpisodeOutcome:
    """A finished episode; ``failure`` names why it failed (None when it did not)."""

    episode: Episode
    failure: str | None = None
    details: str = ""


@dataclass
class EpisodeRunner:
    """Runs episodes of one function on one engine client (see the module rules)."""

    fn: EpisodeFn
    params: Mapping[str, Any]
    client: EngineClient
    sampling: SamplingConfig
    tokenizer: Any
    max_turns: int
    max_tokens: int | None
    max_model_len: int
    timeout_s: float

    async def run(self, row: Mapping[str, Any]) -> EpisodeOutcome:
        llm = EpisodeLLM(
            self.client,
            self.sampling,
            self.tokenizer,
            row,
            max_turns=self.max_turns,
            max_tokens=self.max_tokens,
            max_model_len=self.max_model_len,
        )
        try:
            result = await asyncio.wait_for(self.fn(llm, row, **self.params), self.timeout_s)
        except EpisodeLimit:
            if not llm.episodes:
                return self._failed(llm, "limit", "the limit was hit before an episode began")
            result = llm.episodes[-1]
            result.finish_reason = "length"
        except asyncio.TimeoutError:
            return self._failed(llm, "timeout", f"the episode ran past {self.timeout_s} s")
        except Exception as error:  # user code: any bug is counted, not fatal at once
            return self._failed(llm, type(error).__name__, traceback.format_exc())
        problem = _problem(result, llm.prompt_token_ids)
        if problem is not None:
            return self._failed(llm, "bad_episode", problem)
        assert isinstance(result, Episode)
        if self.max_tokens is not None:
            result.truncate(self.max_tokens)
        return EpisodeOutcome(result)

    def _failed(self, llm: EpisodeLLM, reason: str, details: str) -> EpisodeOutcome:
        empty = Episode(prompt_token_ids=list(llm.prompt_token_ids), finish_reason="abort")
        empty.metrics["failed"] = 1.0
        return EpisodeOutcome(empty, reason, details)


def _problem(result: object, prompt_ids: list[int]) -> str | None:
    if not isinstance(result, Episode):
        return f"the episode function returned {type(result).__name__}, not an Episode"
    if result.prompt_token_ids != prompt_ids:
        return "the episode's prompt is not the row's prompt (start it with llm.episode())"
    try:
        result.check()
    except ValueError as error:
        return str(error)
    return None
