"""Tool math: SmolLM2-135M-Instruct learns to solve multi-step word problems with a calculator.

Problems (three arithmetic levels over 2-3-digit numbers: boxes shared out, stock after a sale,
two orders) need two computations a 135M model cannot do in its head. Each trajectory is an
episode: the model writes ``<calc>expression</calc>``, generation stops there, the calculator's
``<result>…</result>`` is inserted (loss_mask 0: the policy did not sample it) and the model
goes on, up to ``max_turns`` turns; the math verifier scores the final answer. Two example
exchanges in the conversation teach the call format (a description alone: the model never
calls). The end-of-run evaluation runs the same episodes on held-out problems, so its table
compares the base and the trained model *with* tools; `episode/tool_calls` and
`episode/used_tools` per step are in MLflow.

Run:      areal-flow run graphs/tool_math.py
Table:    python bench/tool_math_eval.py runs/<tool_math run>/checkpoints/step_N
          --single-turn runs/<math_rl run>/checkpoints/step_M   (the README's three rows)
"""

from areal_flow import Evaluation, Graph, Resources, Staleness, Tracking
from areal_flow.episodes import Episode, EpisodeLLM, tool_episode
from areal_flow.nodes import (
    Exchange,
    GeneratorConfig,
    GroupFilterConfig,
    MathVerifierConfig,
    PromptFormat,
    PromptSourceConfig,
    Sampling,
    TrainerConfig,
    WeightPublisherConfig,
)
from areal_flow.tools import Calculator, ToolSet

MODEL = "smollm2"
LEVELS = ["boxes_shared", "boxes_sold", "two_orders"]
TOOLS = ToolSet([Calculator()], style="plain")  # SmolLM2's chat template knows no tools

PROMPT = PromptFormat(
    system="You solve math problems. To compute, write <calc>expression</calc> and wait for "
    "the <result>. Use the calculator for every multiplication, division and subtraction. "
    "End with: The answer is <number>.",
    instruction="",  # the examples show the answer format; "…N…" was copied literally
    examples=[
        Exchange(
            user="A shop buys 15 boxes of 42 pens. It shares them equally among 6 stores. How "
            "many pens does each store get?",
            assistant="Total pens: <calc>15*42</calc><result>630</result>. Each store: "
            "<calc>630/6</calc><result>105</result>. The answer is 105.",
        ),
        Exchange(
            user="A farm has 23 trays with 36 eggs in each. It sells 254 eggs. How many eggs "
            "are left?",
            assistant="Total eggs: <calc>23*36</calc><result>828</result>. Left: "
            "<calc>828-254</calc><result>574</result>. The answer is 574.",
        ),
    ],
)


async def solve(llm: EpisodeLLM, row: dict) -> Episode:
    """A conversation with the calculator (see areal_flow.episodes.builtin.tool_episode)."""
    return await tool_episode(llm, row, TOOLS)


graph = Graph(
    name="tool_math",
    description="SmolLM2-135M learns multi-step word problems with a calculator tool",
    nodes=[
        PromptSourceConfig(
            name="prompts",
            dataset="arithmetic",
            levels=LEVELS,
            model=MODEL,
            group_size=8,
            format=PROMPT,
        ),
        GeneratorConfig(
            name="gen",
            model=MODEL,
            engine="vllm",
            episode=solve,
            max_turns=4,
            max_episode_tokens=192,
            sampling=Sampling(temperature=0.7, max_tokens=64),
            resources=Resources(cpus=1),
        ),
        MathVerifierConfig(name="reward", workers=1),
        GroupFilterConfig(name="filter", drop_uniform_reward=True),
        TrainerConfig(
            name="trainer",
            model=MODEL,
            batch_groups=4,
            steps=12,  # held-out 0.665 after 10 steps (docs/benchmarks.md "Tool math")
            micro_batch_tokens=2048,
            resources=Resources(cpus=1),
        ),
        WeightPublisherConfig(name="publisher"),
    ],
    edges=[
        "prompts -> gen",
        "gen -> reward",
        "reward -> filter",
        "filter -> trainer",
        "trainer.weights -> publisher",
        "publisher -> gen.weights",
    ],
    staleness=Staleness(max_lag=2),
    tracking=Tracking(experiment="tool_math"),
    evaluation=Evaluation(problems=100, samples=4),
)
