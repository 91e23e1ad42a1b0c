"""One trajectory of a (possibly multi-turn) episode: what an episode function returns.

Rules:
- A trajectory is the row's prompt followed by a response that interleaves *sampled* tokens
  (``add_sampled``: a turn the policy generated, with its log-probs and versions) and *inserted*
  tokens (``add_inserted``: tool results, observations, chat-template glue). ``loss_mask`` is 1
  for sampled tokens and 0 for inserted ones; the trainer trains only the former.
- Inserted tokens carry log-prob 0 and the version of the sampled token before them (the
  engine's version when nothing was sampled yet), so every per-token list has one entry per
  response token and no inserted token ever looks older than the turn it follows.
- Tokens are appended exactly as sampled and inserted, never re-tokenized: the trainer scores
  the very ids the policy saw.
- ``finish_reason``: ``stop`` (the episode ended by itself), ``length`` (a turn, the episode's
  token budget or its turn limit cut it short: the filter's ``truncated`` policy applies) or
  ``abort``.
- ``metrics``: named numbers of the episode (turns, tool calls…); the trainer logs their batch
  means as ``episode/<name>``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length", "abort"]


class EpisodeLimit(Exception):
    """An episode asked for a turn beyond ``max_turns`` or its token budget. The generator
    keeps what the episode built so far, with ``finish_reason='length'``."""


@dataclass(frozen=True)
class Completion:
    """One generated turn: the sampled tokens with their log-probs and policy versions."""

    token_ids: list[int]
    logprobs: list[float]
    versions: list[int]
    finish_reason: FinishReason
    text: str


@dataclass
class Episode:
    """A trajectory under construction (see the module rules)."""

    prompt_token_ids: list[int]
    response_token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    finish_reason: FinishReason = "stop"
    metrics: dict[str, float] = field(default_factory=dict)
    #: Text of each appended piece, in order; ``text`` joins them.
    pieces: list[str] = field(default_factory=list)
    #: Decodes inserted ids when no text is given, and names the version of tokens inserted
    #: before anything was sampled (set by ``EpisodeLLM.episode``).
    decode: Callable[[Sequence[int]], str] | None = field(default=None, repr=False)
    current_version: Callable[[], int] | None = field(default=None, repr=False)

    @property
    def token_ids(self) -> list[int]:
        """Prompt then response: the context of the next turn."""
        return self.prompt_token_ids + self.response_token_ids

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def sampled_tokens(self) -> int:
        return sum(self.loss_mask)

    def add_sampled(self, turn: Completion) -> None:
        """Append a generated turn; its finish reason becomes the episode's."""
        n = len(turn.token_ids)
        if len(turn.logprobs) != n or len(turn.versions) != n:
            raise ValueError(
                f"a turn of {n} tokens came with {len(turn.logprobs)} log-probs and "
                f"{len(turn.versions)} versions"
            )
        self.response_token_ids.extend(turn.token_ids)
        self.logprobs.extend(turn.logprobs)
        self.versions.extend(turn.versions)
        self.loss_mask.extend([1] * n)
        self.pieces.append(turn.text)
        self.finish_reason = turn.finish_reason

    def add_inserted(self, token_ids: Sequence[int], text: str | None = None) -> None:
        """Append tokens the policy did not sample (``loss_mask`` 0)."""
        ids = [int(t) for t in token_ids]
        if text is None:
            if self.decode is None:
                raise ValueError("add_inserted needs the text of the ids (no tokenizer attached)")
            text = self.decode(ids)
        if self.versions:
            version = self.versions[-1]
        elif self.current_version is not None:
            version = self.current_version()
        else:
            raise ValueError("add_inserted before any sampled token needs the engine's version")
        self.response_token_ids.extend(ids)
        self.logprobs.extend([0.0] * len(ids))
        self.versions.extend([version] * len(ids))
        self.loss_mask.extend([0] * len(ids))
        self.pieces.append(text)

    def truncate(self, max_response_tokens: int) -> None:
        """Cut the response to ``max_response_tokens`` (the episode's budget), as ``length``.
        The text is cut at the last whole piece that fits, since pieces and tokens need not
        align."""
        if len(self.response_token_ids) <= max_response_tokens:
            return
        del self.response_token_ids[max_response_tokens:]
        del self.logprobs[max_response_tokens:]
        del self.versions[max_response_tokens:]
        del self.loss_mask[max_response_tokens:]
        if self.decode is not None:
            self.pieces = [self.decode(self.response_token_ids)]
        self.finish_reason = "length"

    def check(self) -> None:
        """Raise if the per-token lists disagree or the finish reason is unknown."""
        n = len(self.response_token_ids)
        lists: dict[str, list[Any]] = {
            "logprobs": self.logprobs,
            "versions": self.versions,
            "loss_mask": self.loss_mask,
        }
        for name, values in lists.items():
            if len(values) != n:
                raise ValueError(f"episode has {n} response tokens but {len(values)} {name}")
        if self.finish_reason not in ("stop", "length", "abort"):
            raise ValueError(f"episode finish_reason {self.finish_reason!r}: not stop|length|abort")
        if not self.prompt_token_ids:
            raise ValueError("episode has no prompt tokens")
