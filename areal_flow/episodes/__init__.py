"""Episodes: what a generator runs per trajectory, from one answer to a tool-using conversation.

- `episode`: `Episode` (the trajectory with its loss mask), `Completion` (one turn),
  `EpisodeLimit`.
- `llm`: `EpisodeLLM`, the engine as an episode sees it; `EngineClient`, the replica's side.
- `builtin`: `single_turn` (the default) and `tool_episode`.
- `runner`: `EpisodeRunner`, time limits and failure handling for untrusted episode code.

Write your own as ``async def solve(llm, row) -> Episode`` and name it in the generator's
``episode`` field.
"""

from areal_flow.episodes.builtin import single_turn, tool_episode
from areal_flow.episodes.episode import Completion, Episode, EpisodeLimit
from areal_flow.episodes.llm import EngineClient, EpisodeLLM
from areal_flow.episodes.runner import EpisodeOutcome, EpisodePlan, EpisodeRunner

__all__ = [
    "Completion",
    "EngineClient",
    "Episode",
    "EpisodeLLM",
    "EpisodeLimit",
    "EpisodeOutcome",
    "EpisodePlan",
    "EpisodeRunner",
    "single_turn",
    "tool_episode",
]
