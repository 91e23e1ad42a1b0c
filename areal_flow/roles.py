"""The roles of the RL loop, as types: one base spec per role holding the fields the runtime
relies on (DESIGN.md §3, "roles are types, not names").

Rules:
- A node spec takes its role by subclassing one of ``SourceSpec``, ``GeneratorSpec``,
  ``RewardSpec``, ``FilterSpec``, ``TrainerSpec``, ``PublisherSpec``, ``TransformSpec`` or
  ``SinkSpec`` (a plain ``NodeSpec`` is a transform). The runtime — gate, ledger, resume,
  report, live view, drawing — reads only these types and their fields, never an attribute
  guessed by name. Declaring ``role = "..."`` by hand on any other class is a ``TypeError``:
  a spec that claims a role must carry that role's fields.
- The staleness gate counts prompt groups (each prompt row is one group and carries its own
  ``group_size``), so a source needs no field for it: any source whose port emits ``prompt``
  records is gated correctly.
- Cross-node rules (one trainer per gated graph; generators and trainer agree on the model and
  the sampling temperature) are graph validation (``areal_flow.graph``).
- Pure Pydantic: no torch, zmq or processes.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, JsonValue, model_validator

from areal_flow.data.prompting import PromptFormat
from areal_flow.spec import (
    FunctionRef,
    ModelRef,
    NodeSpec,
    Port,
    Resources,
    Spec,
    light_resources,
)
from areal_flow.train.algo import DecoupledPPO

ROLES: tuple[str, ...] = (
    "source",
    "generator",
    "reward",
    "filter",
    "trainer",
    "publisher",
    "transform",
    "sink",
)


class Sampling(Spec):
    """Sampling parameters shared by every request of a generator."""

    temperature: float = Field(
        1.0,
        gt=0,
        le=10,
        description="Softmax temperature (> 0). The trainer computes log-probs at this "
        "temperature (graph validation makes them agree).",
    )
    top_p: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Nucleus sampling mass; 1 = off. Must be 1 in a graph with a trainer: "
        "behaviour log-probs of a truncated distribution do not match the trainer's.",
    )
    top_k: int = Field(
        0, ge=0, description="Top-k cut; 0 = off. Must be 0 in a graph with a trainer (as top_p)."
    )
    max_tokens: int = Field(256, ge=1, le=131072, description="Most response tokens.")
    stop: list[str] = Field(default_factory=list, description="Extra stop strings.")


class SourceSpec(NodeSpec):
    """Produces batches; a source whose port carries ``prompt`` records is gated by staleness."""

    role: ClassVar[str] = "source"
    resources: Resources = Field(default_factory=light_resources, description="Per replica.")

    def held_out_data(self) -> str | None:
        """The held-out split of this source's task as an ``Evaluation.data`` value, for the
        end-of-run evaluation when the graph sets none; None when it has no such split."""
        return None

    def prompt_format(self) -> PromptFormat | None:
        """How this source renders questions, so evaluation renders held-out ones the same
        way; None: the default format."""
        return None


class GeneratorSpec(NodeSpec):
    """Turns prompt groups into rollouts with a policy it keeps up to date (weight notices)."""

    role: ClassVar[str] = "generator"
    stateless: ClassVar[bool] = True

    model: ModelRef = Field(
        "smollm2",
        min_length=1,
        description="HF model folder, a .gguf file, or 'smollm2' (SmolLM2-135M-Instruct).",
    )
    sampling: Sampling = Field(default_factory=Sampling, description="Sampling parameters.")
    episode: FunctionRef = Field(
        "areal_flow.episodes.builtin:single_turn",
        description="What one trajectory is: 'package.module:function' or the function itself "
        "in a Python graph file, called as `await fn(llm, row, **episode_params)` and returning "
        "an areal_flow.episodes.Episode. Default: one sampled answer.",
    )
    episode_params: dict[str, JsonValue] = Field(
        default_factory=dict, description="Extra keyword arguments of every episode call."
    )
    max_turns: int = Field(
        1, ge=1, le=1024, description="Most generated turns per episode (tool calls + answer)."
    )
    max_episode_tokens: int | None = Field(
        None,
        ge=1,
        description="Most response tokens per episode, sampled and inserted together; longer "
        "episodes are cut ('length'). None: bounded by max_model_len only.",
    )
    episode_timeout_s: float = Field(
        600.0, gt=0, description="Wall-time limit of one episode (its turns and tool calls)."
    )
    max_model_len: int = Field(
        1024, ge=16, le=131072, description="Most prompt + response tokens per sequence."
    )

    def eval_engine(self) -> str | None:
        """The inference engine (``vllm``/``hf``) evaluation should use to match this
        generator; None when it uses neither (evaluation then takes its own default)."""
        return None

    def engine_settings(self) -> dict[str, Any]:
        """The fields of ``eval_engine()``'s config this generator runs its engine with,
        besides the model, seed, cores and version. The end-of-run evaluation starts its engine
        with the same ones: vLLM keys its compile cache on them (batch size included), so the
        evaluation then reuses the compilation the run already paid for."""
        return {}

    def weights_dtype(self) -> str | None:
        """The dtype its engine holds weights in ('bfloat16', 'float32'); None when unknown.
        When every generator a trainer feeds says 'bfloat16' the trainer publishes bf16."""
        return None


class RewardSpec(NodeSpec):
    """Scores rollouts (rollout records in, scored records out)."""

    role: ClassVar[str] = "reward"
    stateless: ClassVar[bool] = True
    inputs: ClassVar[dict[str, Port]] = {"rollouts": Port(record="rollout")}
    outputs: ClassVar[dict[str, Port]] = {"scored": Port(record="scored")}
    resources: Resources = Field(default_factory=light_resources, description="Per replica.")


class FilterSpec(NodeSpec):
    """Drops trajectories or whole groups; dropped rows give their staleness capacity back."""

    role: ClassVar[str] = "filter"
    stateless: ClassVar[bool] = True
    resources: Resources = Field(default_factory=light_resources, description="Per replica.")


class TrainerSpec(NodeSpec):
    """Consumes scored trajectories in batches of whole groups; emits weight notices. A graph
    with a trainer is gated: exactly one per graph, and the run ends when it finishes."""

    role: ClassVar[str] = "trainer"
    ends_run: ClassVar[bool] = True
    inputs: ClassVar[dict[str, Port]] = {"scored": Port(record="scored")}
    outputs: ClassVar[dict[str, Port]] = {"weights": Port(record="weights", weights=True)}

    model: ModelRef = Field(
        "smollm2", min_length=1, description="Initial policy: the generators' model."
    )
    batch_groups: int = Field(
        8, ge=1, le=4096, description="Prompt groups per batch (the staleness gate's unit)."
    )
    steps: int = Field(50, ge=1, description="Optimizer steps; the run stops after the last.")
    algo: DecoupledPPO = Field(default_factory=DecoupledPPO, description="Objective.")
    temperature: float | None = Field(
        None,
        gt=0,
        description="Temperature of the log-probs; null (default) = the sampling temperature "
        "of the generators feeding this trainer. A value that disagrees with them is a "
        "validation error.",
    )

    @model_validator(mode="after")
    def _minibatches_fit_the_batch(self) -> TrainerSpec:
        # Every minibatch needs a row, and a batch holds at least one row per group: with
        # K ≤ batch_groups a batch always spans exactly K versions, which the gate relies on.
        k = self.algo.updates_per_batch
        if k > self.batch_groups:
            raise ValueError(
                f"algo.updates_per_batch = {k} exceeds batch_groups = {self.batch_groups}: "
                "each minibatch needs at least one group's worth of rows; lower K or raise "
                "batch_groups"
            )
        return self


class PublisherSpec(NodeSpec):
    """Delivers weight notices from the trainer to every generator replica."""

    role: ClassVar[str] = "publisher"
    stateless: ClassVar[bool] = True
    resources: Resources = Field(default_factory=light_resources, description="Per replica.")

    store: Literal["shm", "run_dir"] = Field(
        "shm",
        description="Where the trainer feeding this publisher writes weight versions: "
        "/dev/shm (fast) or the run folder.",
    )


class TransformSpec(NodeSpec):
    """Any other batch-to-batch step."""

    role: ClassVar[str] = "transform"
    resources: Resources = Field(default_factory=light_resources, description="Per replica.")


class SinkSpec(NodeSpec):
    """Consumes batches and emits nothing."""

    role: ClassVar[str] = "sink"
    resources: Resources = Field(default_factory=light_resources, description="Per replica.")


ROLE_BASES: dict[str, type[NodeSpec]] = {
    "source": SourceSpec,
    "generator": GeneratorSpec,
    "reward": RewardSpec,
    "filter": FilterSpec,
    "trainer": TrainerSpec,
    "publisher": PublisherSpec,
    "transform": TransformSpec,
    "sink": SinkSpec,
}


def role_of(spec: NodeSpec) -> str:
    """The role of a node spec, from its type (a plain ``NodeSpec`` is a transform)."""
    for name, base in ROLE_BASES.items():
        if isinstance(spec, base):
            return name
    return "transform"
