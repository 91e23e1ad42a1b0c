"""The inference-engine interface every generator backend implements.

Rules:
- Callers submit ``GenerationRequest``s (prompt token ids, ``n`` samples, ``SamplingConfig``)
  and read finished ``Sample``s from ``samples()`` in the order they finish, not the order
  submitted. Each of the ``n`` samples of a request is its own ``Sample``.
- **Log-prob definition.** ``Sample.logprobs[t]`` is the natural-log probability of the sampled
  token ``response_token_ids[t]`` under the distribution it was drawn from, computed in fp32:
  ``log_softmax(logits_t / T)[token]`` with ``T = temperature`` (``T = 1`` when greedy,
  ``temperature == 0``). With ``top_k``/``top_p`` active the distribution is the truncated,
  renormalised one (tokens outside the kept set have probability 0); with ``top_k = 0`` and
  ``top_p = 1`` (the RL default) it is exactly ``log_softmax(logits / T)``, which is what the
  trainer recomputes.
- **Versions.** ``Sample.versions[t]`` is the policy version of the weights that produced token
  ``t``. ``update_weights`` interrupts in-flight sequences: by default they continue from their
  prefix recomputed under the new weights (KV and prefix caches dropped), so one sample may
  carry several versions. The vLLM engine offers other ways (``interrupt_mode``: continue over
  the old KV, abort and resubmit, or drain first); no request submitted after an update ever
  reads KV computed under older weights.
- **Finish reasons.** ``stop`` (EOS or a stop string; the EOS token / stop string is part of the
  response), ``length`` (``max_tokens`` reached) or ``abort`` (``abort(request_id)``; the partial
  response so far is returned).
- ``pause``/``resume`` bracket a weight update when the caller wants several actions inside one
  pause; ``update_weights`` on a running engine pauses and resumes by itself.
- Weight folders hold ``model.safetensors`` (or several ``*.safetensors``) keyed by the HF
  parameter names of the model, i.e. what ``model.state_dict()`` of the HF model gives.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

FinishReason = Literal["stop", "length", "abort"]
FINISH_REASONS: tuple[FinishReason, ...] = ("stop", "length", "abort")


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample one response. ``top_k = 0`` and ``top_p = 1`` switch truncation off."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")


@dataclass(frozen=True)
class GenerationRequest:
    """``n`` independent samples for one prompt; ``request_id`` must be unique in the engine."""

    request_id: str
    prompt_token_ids: Sequence[int]
    n: int = 1
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"request {self.request_id}: n must be >= 1, got {self.n}")
        if len(self.prompt_token_ids) == 0:
            raise ValueError(f"request {self.request_id}: prompt_token_ids is empty")


@dataclass
class Sample:
    """One finished response; the per-token lists all have ``len(response_token_ids)``."""

    request_id: str
    sample_index: int
    prompt_token_ids: list[int]
    response_token_ids: list[int]
    logprobs: list[float]
    versions: list[int]
    finish_reason: FinishReason
    text: str

    def check(self) -> None:
        """Raise if the per-token lists disagree in length or the finish reason is unknown."""
        n = len(self.response_token_ids)
        if len(self.logprobs) != n or len(self.versions) != n:
            raise ValueError(
                f"sample {self.request_id}/{self.sample_index}: {n} tokens but "
                f"{len(self.logprobs)} log-probs and {len(self.versions)} versions"
            )
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"sample {self.request_id}: bad finish reason {self.finish_reason}")


class InferenceEngine(abc.ABC):
    """An engine generating samples with interruptible weight updates (see module docstring)."""

    @property
    @abc.abstractmethod
    def version(self) -> int:
        """The policy version of the weights loaded now."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model; must be awaited once before anything else."""

    @abc.abstractmethod
    async def submit(self, request: GenerationRequest) -> None:
        """Queue a request; its samples appear on ``samples()`` as they finish."""

    @abc.abstractmethod
    def samples(self) -> AsyncIterator[Sample]:
        """Finished samples in completion order; ends only after ``close()``."""

    @abc.abstractmethod
    async def pause(self) -> None:
        """Stop decoding; in-flight sequences are kept and continue after ``resume()``."""

    @abc.abstractmethod
    async def update_weights(self, version: int, path: str | Path) -> None:
        """Load the weights in ``path`` as ``version``; in-flight sequences continue on them
        (the vLLM engine's ``drain`` mode finishes them first)."""

    @abc.abstractmethod
    async def resume(self) -> None:
        """Continue decoding after ``pause()``."""

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None:
        """Stop all samples of ``request_id``; they finish with reason ``abort``."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the model and background workers; ``samples()`` then ends."""

    @abc.abstractmethod
    def num_unfinished(self) -> int:
        """Samples submitted but not yet delivered on ``samples()``."""

    async def __aenter__(self) -> InferenceEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def weight_files(path: str | Path) -> list[Path]:
    """The ``*.safetensors`` files of a weight folder (or the file itself); raises if none."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"no safetensors weights at {path}; expected a folder with model.safetensors "
            "keyed by HF parameter names (model.state_dict())"
        )
    return files


class SampleStream:
    """The queue behind ``samples()``: engines ``put`` finished samples, ``close`` ends it."""

    _END = object()

    def __init__(self) -> None:
        import asyncio

        self._queue: asyncio.Queue[object] = asyncio.Queue()

    def put(self, sample: Sample) -> None:
        sample.check()
        self._queue.put_nowait(sample)

    def close(self) -> None:
        self._queue.put_nowait(self._END)

    def fail(self, error: BaseException) -> None:
        """End the stream by raising ``error`` in its reader."""
        self._queue.put_nowait(error)

    async def __aiter__(self) -> AsyncIterator[Sample]:
        while True:
            item = await self._queue.get()
            if item is self._END:
                # Leave the marker for any other reader of the same stream.
                self._queue.put_nowait(item)
                return
            if isinstance(item, BaseException):
                raise RuntimeError(f"inference engine failed: {item!r}") from item
            assert isinstance(item, Sample)
            yield item
