"""Your own reward and your own node, in the graph file: arithmetic with a brevity bonus.

``score`` is a plain function: the reward is 1 for a correct final answer plus a bonus for
saying it in few words (so it is graded, not 0/1), and it reports its parts as named metrics
(``correct``, ``brevity``, ``words``) that the run logs by name. ``CountWords`` is a node of
this file too: it adds a ``words`` column to every rollout, which reaches ``score`` as a
keyword argument. Nothing here is registered or installed: the runtime records where both are
defined and every worker process loads them from this file.

Run:       areal-flow run graphs/custom_reward.py
Check it:  areal-flow validate graphs/custom_reward.py
Draw it:   areal-flow viz graphs/custom_reward.py -o custom_reward.png
"""

from typing import Any, ClassVar, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from areal_flow import Graph, Resources, Staleness, Tracking
from areal_flow.node import Output, Transform
from areal_flow.nodes import (
    GeneratorConfig,
    GroupFilterConfig,
    PromptSourceConfig,
    RewardFnConfig,
    Sampling,
    TrainerConfig,
    WeightPublisherConfig,
)
from areal_flow.reward import RewardConfig, score_answer
from areal_flow.roles import TransformSpec
from areal_flow.spec import Port

MODEL = "smollm2"


def score(prompt: str, response: str, answer: str, words: int, **row: Any) -> dict[str, Any]:
    """1 for the right final answer, plus up to 0.2 for a short answer; 0 when wrong."""
    verdict = score_answer(response, answer, RewardConfig())
    brevity = 0.2 * max(0.0, 1.0 - words / 40) if verdict.correct else 0.0
    return {
        "reward": float(verdict.correct) + brevity,
        "verdict": verdict.reason,
        "correct": verdict.correct,
        "brevity": brevity,
        "words": words,
    }


class CountWordsConfig(TransformSpec):
    """Adds the number of words of each response as a ``words`` column."""

    inputs: ClassVar[dict[str, Port]] = {"rollouts": Port(record="rollout")}
    outputs: ClassVar[dict[str, Port]] = {"rollouts": Port(record="rollout")}
    kind: Literal["count_words"] = "count_words"
    column: str = Field("words", description="Name of the column to add.")


class CountWords(Transform[CountWordsConfig]):
    def process(self, batch: pa.RecordBatch) -> Output:
        column = self.config.column
        words = pc.list_value_length(pc.utf8_split_whitespace(batch.column("response")))
        return batch.append_column(column, pc.cast(words, pa.int64()))


graph = Graph(
    name="custom_reward",
    description="SmolLM2-135M learns arithmetic, rewarded for correct and short answers",
    nodes=[
        PromptSourceConfig(name="prompts", dataset="arithmetic", model=MODEL, group_size=8),
        GeneratorConfig(
            name="gen",
            model=MODEL,
            sampling=Sampling(temperature=0.7, max_tokens=96),
            resources=Resources(cpus=1),
        ),
        CountWordsConfig(name="words"),
        RewardFnConfig(name="reward", fn=score, workers=1),
        GroupFilterConfig(name="filter", drop_uniform_reward=True),
        TrainerConfig(
            name="trainer",
            model=MODEL,
            batch_groups=4,
            steps=20,
            micro_batch_tokens=2048,
            resources=Resources(cpus=1),
        ),
        WeightPublisherConfig(name="publisher"),
    ],
    edges=[
        "prompts -> gen",
        "gen -> words",
        "words -> reward",
        "reward -> filter",
        "filter -> trainer",
        "trainer.weights -> publisher",
        "publisher -> gen.weights",
    ],
    staleness=Staleness(max_lag=2),
    tracking=Tracking(experiment="custom_reward"),
)
