"""The built-in episodes: one answer (the generator's default) and a tool-using conversation.

Rules:
- ``single_turn``: one turn from the row's prompt; the trajectory is that turn.
- ``tool_episode``: turns that end at a tool call's closing string; each call is run and its
  result inserted (``loss_mask`` 0) before the next turn, until a turn makes no call (the
  answer), a turn is cut at its length, or the turn limit stops it (``length``: the model
  wanted another call). Its metrics: ``turns``, ``tool_calls``, ``tool_errors``, and
  ``used_tools`` (1 when it made at least one call).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from areal_flow.episodes.episode import Episode
from areal_flow.episodes.llm import EpisodeLLM
from areal_flow.tools.toolset import ToolSet


async def single_turn(llm: EpisodeLLM, row: Mapping[str, Any]) -> Episode:
    """One sampled answer to the row's prompt."""
    episode = llm.episode()
    episode.add_sampled(await llm.generate(episode))
    return episode


async def tool_episode(llm: EpisodeLLM, row: Mapping[str, Any], tools: ToolSet) -> Episode:
    """A conversation with ``tools`` (see the module rules)."""
    episode = llm.episode()
    calls = errors = 0
    while True:
        turn = await llm.generate(episode, stop=tools.stop_strings())
        episode.add_sampled(turn)
        results = await tools.run_all(turn.text) if turn.finish_reason == "stop" else []
        if not results:
            break
        calls += len(results)
        errors += sum(not r.ok for r in results)
        insertion = llm.encode(tools.insertion(results, llm.tokenizer))
        if llm.turns_left == 0 or llm.tokens_left(episode) <= len(insertion):
            episode.finish_reason = "length"  # it wanted to go on: a truncated episode
            break
        episode.add_inserted(insertion)
    episode.metrics.update(
        turns=float(llm.turns),
        tool_calls=float(calls),
        tool_errors=float(errors),
        used_tools=float(calls > 0),
    )
    return episode
