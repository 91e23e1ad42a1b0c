"""The generator's engine as episodes see it: ``await llm.generate(...)`` per turn.

Rules:
- ``EngineClient`` is one per generator replica: it submits one engine request per turn and
  hands each finished sample to the turn waiting for it (``deliver``, fed by the generator's
  single reader of ``engine.samples()``). Turns are interruptible by weight updates exactly like
  any request: every token keeps the version that sampled it.
- ``EpisodeLLM`` is one per episode. Sampling settings are the generator's: an episode may
  shorten a turn (``max_tokens``) and add stop strings, never change temperature, top-p or
  top-k — the trainer recomputes log-probs at the generator's temperature.
- Limits: at most ``max_turns`` turns; at most ``max_tokens`` response tokens in all (sampled
  and inserted, counted beyond the row's prompt); at most ``max_model_len`` tokens of context.
  A turn is shortened to fit; a turn that cannot get one token raises ``EpisodeLimit``.
- A cancelled turn (the episode timed out) aborts its engine request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import Any, cast

from areal_flow.engine.base import GenerationRequest, InferenceEngine, Sample, SamplingConfig
from areal_flow.episodes.episode import Completion, Episode, EpisodeLimit


class EngineClient:
    """Turns of all episodes of one replica on one engine (see the module rules)."""

    def __init__(self, engine: InferenceEngine, submit_lock: asyncio.Lock | None = None) -> None:
        self.engine = engine
        # Held by a weight update that waits for an idle engine (staleness.interrupt off).
        self.submit_lock = submit_lock or asyncio.Lock()
        self.waiting: dict[str, asyncio.Future[Sample]] = {}
        self.ids = itertools.count()
        self.generated_tokens = 0

    async def complete(self, prompt_ids: Sequence[int], sampling: SamplingConfig) -> Completion:
        request_id = f"turn-{next(self.ids)}"
        future: asyncio.Future[Sample] = asyncio.get_running_loop().create_future()
        self.waiting[request_id] = future
        async with self.submit_lock:
            await self.engine.submit(GenerationRequest(request_id, list(prompt_ids), 1, sampling))
        try:
            sample = await future
        except asyncio.CancelledError:
            if self.waiting.pop(request_id, None) is not None:
                await self.engine.abort(request_id)
            raise
        return Completion(
            token_ids=list(sample.response_token_ids),
            logprobs=list(sample.logprobs),
            versions=list(sample.versions),
            finish_reason=sample.finish_reason,
            text=sample.text,
        )

    def deliver(self, sample: Sample) -> None:
        """A finished sample from the engine; samples of abandoned turns are dropped."""
        self.generated_tokens += len(sample.response_token_ids)
        future = self.waiting.pop(sample.request_id, None)
        if future is not None and not future.done():
            future.set_result(sample)

    async def serve(self) -> None:
        """Hand every sample of ``engine.samples()`` to its turn until the stream ends; if the
        engine fails, every waiting turn raises too. Run it as the engine's one reader."""
        try:
            async for sample in self.engine.samples():
                self.deliver(sample)
        except Exception as error:
            self.fail(error)
            raise

    def fail(self, error: BaseException) -> None:
        """The engine died: every waiting turn raises."""
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(error)
        self.waiting.clear()

    @property
    def in_flight(self) -> int:
        return len(self.waiting)


class EpisodeLLM:
    """What an episode function gets: ``generate``, the tokenizer, and its own limits."""

    def __init__(
        self,
        client: EngineClient,
        sampling: SamplingConfig,
        tokenizer: Any,
        row: Mapping[str, Any],
        *,
        max_turns: int,
        max_tokens: int | None,
        max_model_len: int,
    ) -> None:
        self.client = client
        self.sampling = sampling
        self.tokenizer = tokenizer
        self.prompt_token_ids = [int(t) for t in row["prompt_token_ids"]]
        self.max_turns = max_turns
        self.max_tokens = max_tokens
        self.max_model_len = max_model_len
        self.turns = 0
        self.episodes: list[Episode] = []

    @property
    def version(self) -> int:
        """The policy version the engine serves now."""
        return self.client.engine.version

    @property
    def turns_left(self) -> int:
        return self.max_turns - self.turns

    def tokens_left(self, context: Sequence[int] | Episode) -> int:
        """How many tokens a turn from ``context`` may still generate (0: none)."""
        length = len(context.token_ids if isinstance(context, Episode) else context)
        left = self.max_model_len - length
        if self.max_tokens is not None:
            left = min(left, self.max_tokens - max(0, length - len(self.prompt_token_ids)))
        return max(0, left)

    def episode(self) -> Episode:
        """A new trajectory on the row's prompt, wired to this episode's tokenizer and engine."""
        built = Episode(
            prompt_token_ids=list(self.prompt_token_ids),
            decode=lambda ids: self.tokenizer.decode(ids, skip_special_tokens=False),
            current_version=lambda: self.version,
        )
        self.episodes.append(built)
        return built

    def decode(self, token_ids: Sequence[int]) -> str:
        """The text of ``token_ids``, special tokens (end of turn) left out."""
        return str(self.tokenizer.decode(list(token_ids), skip_special_tokens=True))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens added (for insertions)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    async def generate(
        self,
        prompt: Sequence[int] | Sequence[Mapping[str, Any]] | Episode,
        *,
        max_tokens: int | None = None,
        stop: Sequence[str] = (),
        **other: Any,
    ) -> Completion:
        """One turn from ``prompt`` (token ids, chat messages, or an episode's context).

        ``stop`` strings are added to the generator's own; they end the turn and are part of
        its text (e.g. a tool call's closing tag).
        """
        if other:
            raise ValueError(
                f"episodes may set max_tokens and stop only, got {sorted(other)}: sampling "
                "settings belong to the generator (nodes.<gen>.sampling), because the trainer "
                "recomputes log-probs with them"
            )
        if self.turns >= self.max_turns:
            raise EpisodeLimit(f"max_turns={self.max_turns} reached")
        ids = self._prompt_ids(prompt)
        budget = min(self.tokens_left(ids), max_tokens or self.sampling.max_tokens)
        if budget < 1:
            raise EpisodeLimit(f"no token budget left ({len(ids)} tokens of context)")
        self.turns += 1
        sampling = dataclasses.replace(
            self.sampling,
            max_tokens=min(budget, self.sampling.max_tokens),
            stop=tuple(dict.fromkeys((*self.sampling.stop, *stop))),
        )
        return await self.client.complete(ids, sampling)

    def _prompt_ids(
        self, prompt: Sequence[int] | Sequence[Mapping[str, Any]] | Episode
    ) -> list[int]:
        if isinstance(prompt, Episode):
            return prompt.token_ids
        items = list(prompt)
        if items and isinstance(items[0], Mapping):
            rendered = self.tokenizer.apply_chat_template(
                items, add_generation_prompt=True, tokenize=True
            )
            if isinstance(rendered, Mapping):  # transformers ≥ 5 returns a BatchEncoding
                rendered = rendered["input_ids"]
            return [int(t) for t in rendered]
        return [int(t) for t in cast("list[int]", items)]
