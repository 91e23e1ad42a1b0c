"""The graph specification: Pydantic models a graph file is made of.

Rules:
- Every model is frozen and forbids unknown fields, so a misspelt field fails validation with
  its path instead of being ignored.
- Every field has a description; limits live in ``Field`` so errors state the allowed range.
- Node configs subclass ``NodeSpec``, set ``kind: Literal["..."]`` and declare their ports as
  class variables (``inputs`` / ``outputs``). Which class validates a node is decided by its
  ``kind`` through the registry (``areal_flow.registry``), so third-party kinds validate the
  same way as built-in ones.
- This module knows nothing of torch, zmq or processes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    WrapValidator,
    field_validator,
    model_validator,
)

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
DEFAULT_CAPACITY = 4


@dataclass(frozen=True)
class LocalPath:
    """Field metadata: the value names a local file or folder that graph validation checks
    exists (``areal_flow.checks``), unless it is one of ``names`` (built-ins such as
    ``smollm2``) or starts with one of them and a colon (``arithmetic:add1``)."""

    what: Literal["model", "dataset", "checkpoint"]
    names: tuple[str, ...] = ()


#: A model reference: an HF folder, a .gguf file or the alias ``smollm2``.
ModelRef = Annotated[str, LocalPath("model", ("smollm2",))]
#: A dataset reference: the built-in ``arithmetic`` task, or a .jsonl/.parquet file or a
#: ``save_to_disk`` folder.
DatasetRef = Annotated[str, LocalPath("dataset", ("arithmetic",))]
#: A checkpoint, a checkpoints folder or a run folder to resume from.
CheckpointRef = Annotated[Path, LocalPath("checkpoint")]


@dataclass(frozen=True)
class Importable:
    """Field metadata: the value is a ``module:qualname`` reference that graph validation
    resolves (``areal_flow.checks``) and workers load (``areal_flow.usercode``)."""


def _reference(obj: Any) -> str:
    """``module:qualname`` of a module-level function (``areal_flow.usercode.reference`` has the
    full rules; this copy keeps spec.py free of imports from the package)."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
    if not module or not qualname or "<" in qualname or module == "__main__":
        raise ValueError(
            f"{obj!r} cannot be loaded by other processes: define it at the top level of the "
            "graph file or an importable module (not a lambda, not inside a function)"
        )
    return f"{module}:{qualname}"


def _function_reference(value: Any) -> Any:
    # A function object (in a Python graph file) becomes its reference: specs stay plain data,
    # and every process loads the function from where it is defined.
    if callable(value) and not isinstance(value, str):
        return _reference(value)
    if isinstance(value, str):
        module, sep, name = value.partition(":")
        if not sep or not module or not all(p.isidentifier() for p in name.split(".")):
            raise ValueError(f"{value!r} must look like 'package.module:function'")
    return value


#: A function: ``"package.module:function"``, or the function itself in a Python graph file.
FunctionRef = Annotated[str, BeforeValidator(_function_reference), Importable()]


class Spec(BaseModel):
    """Base of every spec model: frozen, unknown fields rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class Port(Spec):
    """A named input or output of a node kind."""

    record: Literal["prompt", "rollout", "scored", "weights", "any"] = Field(
        description="Record type carried (a schema in areal_flow/schema.py); 'any' for test nodes."
    )
    required: bool = Field(True, description="Validation fails if a required port is unconnected.")
    weights: bool = Field(
        False,
        description="A weight-feedback port: exempt from the data-cycle check, drawn dashed.",
    )


class Resources(Spec):
    """What one replica of a node needs from the machine."""

    cpus: float = Field(
        1.0,
        ge=0,
        le=1024,
        description="CPU cores per replica. Whole numbers pin the replica to that many cores; "
        "0 or a fraction shares the cores left over (light nodes).",
    )
    gpus: float = Field(
        0,
        ge=0,
        le=64,
        description="GPUs per replica (CUDA_VISIBLE_DEVICES). Whole numbers give the replica "
        "that many GPUs of its own; a fraction (0.5) shares one GPU with other fractional "
        "replicas (a generator and a trainer on one device; memory is then each engine's own "
        "setting, e.g. the generator's gpu_memory).",
    )
    memory: float | None = Field(
        None, gt=0, description="Memory per replica in GiB; used by the Ray launcher's placement."
    )

    @field_validator("gpus")
    @classmethod
    def _whole_or_share(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError(
                f"gpus = {value:g}: ask for whole GPUs (1, 2, …) or a share of one (0 < gpus < 1)"
            )
        return value


def light_resources() -> Resources:
    """Default for nodes that only move data around: no pinned cores."""
    return Resources(cpus=0)


class Staleness(Spec):
    """The AReaL staleness bound (DESIGN.md §5)."""

    max_lag: int | None = Field(
        4,
        ge=0,
        le=1_000_000,
        description="η: the most policy versions a trajectory may lag the trainer. "
        "0 = synchronous training; null = unbounded (gate off).",
    )
    interrupt: bool = Field(
        True,
        description="Interrupt in-flight generation when new weights arrive (how: the "
        "generator's interrupt_mode). Off: new weights wait until no episode is running (the "
        "sync baseline).",
    )


class RayOptions(Spec):
    """Settings of the Ray launcher (``launcher: ray``); ignored by the local launcher."""

    address: str | None = Field(
        None,
        description="Ray cluster to join: 'auto', 'HOST:6379' or 'ray://HOST:10001'. Default: "
        "$RAY_ADDRESS, else a cluster started on this machine with 'ray start', else a new "
        "local one.",
    )
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK",
        description="How the placement group lays replicas (one bundle each) over Ray nodes: "
        "PACK fills few nodes, SPREAD uses many, STRICT_* make it a hard rule.",
    )
    data_ports: tuple[int, int] = Field(
        (20000, 20999),
        description="Inclusive TCP port range of the ZeroMQ sockets (data edges and the "
        "driver's control socket); open it between the nodes.",
    )
    placement_timeout_s: float = Field(
        120.0,
        gt=0,
        description="How long to wait for the cluster to grant the placement group (resources "
        "busy, autoscaling) before the run fails.",
    )

    @field_validator("data_ports")
    @classmethod
    def _port_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if not 1024 <= low <= high <= 65535:
            raise ValueError(
                f"data_ports {list(value)} must be [low, high] with 1024 ≤ low ≤ high ≤ 65535"
            )
        return value


class Tracking(Spec):
    """Where MLflow records the run."""

    uri: str | None = Field(
        None,
        description="MLflow tracking URI. Default: $MLFLOW_TRACKING_URI, else a SQLite store "
        "in the run folder.",
    )
    experiment: str | None = Field(None, description="MLflow experiment; default the graph name.")
    enabled: bool = Field(True, description="Set false to run without MLflow.")
    log_model: bool = Field(
        True,
        description="Log the final checkpoint as an MLflow model (transformers flavour, "
        "loadable with mlflow.transformers.load_model); false records only its path.",
    )


class Evaluation(Spec):
    """Held-out evaluation of the initial and the final policy when a run completes.

    Unset fields follow the graph: data from the prompt source (its held-out split and
    levels), temperature, max tokens and engine from the generator — so the score is measured
    the way the policy was trained.
    """

    data: DatasetRef | None = Field(
        None,
        description="'arithmetic', 'arithmetic:add1,sub1' or a dataset file; default: the "
        "prompt source's task, held-out split.",
    )
    problems: int = Field(100, ge=1, le=100_000, description="Held-out problems scored.")
    samples: int = Field(4, ge=1, le=256, description="Samples per problem (pass@k needs k).")
    k: int = Field(4, ge=1, le=256, description="k of pass@k.")
    temperature: float | None = Field(
        None, ge=0, description="Sampling temperature; default the generator's."
    )
    max_tokens: int | None = Field(
        None, ge=1, description="Most tokens per answer; default the generator's."
    )
    engine: Literal["vllm", "hf"] | None = Field(
        None, description="Inference engine; default the generator's."
    )
    base: bool = Field(
        True, description="Also score the initial model (cached per model and settings)."
    )
    every: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Also score the policy during training, every N steps (an 'evaluator' "
        "node is added: its own engine, fed the published weights); None: only at the end.",
    )
    every_problems: int = Field(
        32, ge=1, le=100_000, description="Held-out problems per evaluation during training."
    )
    every_samples: int = Field(
        2, ge=1, le=256, description="Samples per problem per evaluation during training."
    )
    every_engine: Literal["vllm", "hf"] | None = Field(
        None,
        description="The evaluator's engine during training; default: 'engine' (the "
        "generator's). 'hf' starts in seconds where vLLM compiles first.",
    )

    @model_validator(mode="after")
    def _k_within_samples(self) -> Evaluation:
        if self.k > self.samples:
            raise ValueError(f"k = {self.k} needs samples ≥ {self.k}, got {self.samples}")
        return self


class NodeSpec(Spec):
    """Fields every node has. Subclasses add ``kind`` and their own settings."""

    inputs: ClassVar[dict[str, Port]] = {}
    outputs: ClassVar[dict[str, Port]] = {}
    #: Stateless kinds are restarted by the driver when a replica dies; stateful ones stop the run.
    stateless: ClassVar[bool] = False
    #: The role's name (drawings, logs). Set only by the role base specs in
    #: ``areal_flow.roles``; the runtime tests the type, never this string.
    role: ClassVar[str] = "transform"
    #: When a replica of this kind finishes, the whole run stops (the trainer's step budget).
    ends_run: ClassVar[bool] = False

    kind: str = Field(description="Node kind; selects the config class and the implementation.")

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        # Roles are types (areal_flow.roles): a hand-set role would let a spec claim a role
        # without the fields the runtime reads for it.
        super().__pydantic_init_subclass__(**kwargs)
        if "role" in cls.__dict__ and cls.__module__ != "areal_flow.roles":
            raise TypeError(
                f"{cls.__name__} sets role = {cls.__dict__['role']!r} by hand; take a role by "
                "subclassing its base spec in areal_flow.roles instead (e.g. TrainerSpec)"
            )

    name: str = Field(
        pattern=NAME_PATTERN,
        max_length=64,
        description="Unique node name, used in edges ('name.port') and logs.",
    )
    replicas: int = Field(1, ge=1, le=256, description="Number of processes running this node.")
    resources: Resources = Field(default_factory=Resources, description="Per replica.")


#: Validates a node given as a dict by the class its ``kind`` selects. The registry installs
#: it when imported (``areal_flow/__init__`` imports the registry), so this module imports
#: nothing that imports it back.
_kind_validator: Callable[[dict[str, Any]], NodeSpec] | None = None


def set_kind_validator(validate: Callable[[dict[str, Any]], NodeSpec]) -> None:
    global _kind_validator
    _kind_validator = validate


def _validate_by_kind(value: Any, handler: Any) -> Any:
    # Dict nodes (YAML/JSON files, --set round trips) are validated by their kind's class;
    # errors raised there keep their path under nodes.<index>.
    if isinstance(value, dict):
        if _kind_validator is None:
            raise RuntimeError("no node registry installed: import areal_flow.registry")
        return _kind_validator(value)
    return handler(value)


TypedNode = Annotated[SerializeAsAny[NodeSpec], WrapValidator(_validate_by_kind)]


class Edge(Spec):
    """A data or weight connection from an output port to an input port.

    Written as a string ``"a -> b"`` (each node's only port) or ``"a.out -> b.in"``, or as an
    object with ``src``, ``dst`` and ``capacity``.
    """

    src: str = Field(description="Producer: 'node' or 'node.port'.")
    dst: str = Field(description="Consumer: 'node' or 'node.port'.")
    capacity: int = Field(
        DEFAULT_CAPACITY,
        ge=1,
        le=4096,
        description="Most batches in flight to each consumer replica (credit-based flow "
        "control); raised to the number of producer replicas when they are more, so each "
        "holds a credit.",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split("->")]
            if len(parts) != 2 or not all(parts):
                raise ValueError(
                    f"edge {value!r} must look like 'a -> b' or 'a.out -> b.in' (one '->')"
                )
            return {"src": parts[0], "dst": parts[1]}
        return value

    @field_validator("src", "dst")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)?", value):
            raise ValueError(f"endpoint {value!r} must be 'node' or 'node.port'")
        return value

    def split(self, side: Literal["src", "dst"]) -> tuple[str, str | None]:
        """(node, port or None) of one end."""
        node, _, port = getattr(self, side).partition(".")
        return node, port or None

    def __str__(self) -> str:
        return f"{self.src} -> {self.dst}"


class Graph(Spec):
    """A whole runnable graph: nodes, edges and run-wide settings."""

    name: str = Field(pattern=NAME_PATTERN, max_length=64, description="Graph name.")
    description: str = Field("", description="What the graph does (shown by validate).")
    nodes: list[TypedNode] = Field(
        min_length=1, description="Node configs; each 'kind' selects its config class."
    )
    edges: list[Edge] = Field(default_factory=list, description="Connections between ports.")
    staleness: Staleness = Field(default_factory=Staleness, description="Staleness bound η.")
    tracking: Tracking = Field(default_factory=Tracking, description="MLflow settings.")
    evaluation: Evaluation | None = Field(
        None, description="Score the initial and final policy on held-out problems at the end."
    )
    launcher: Literal["local", "ray"] = Field(
        "local", description="'local': one OS process per replica; 'ray': Ray actors."
    )
    placement: Literal["disaggregated", "colocated", "lending"] = Field(
        "disaggregated",
        description="'disaggregated': every node on the cores its resources ask for (the "
        "generator and the trainer on cores of their own, so they run at once). "
        "'colocated': the generator and the trainer each get every core and take turns "
        "(generate a batch, then train on it): the synchronous baseline and the one-device "
        "mode; their resources.cpus are then ignored and it needs staleness.max_lag = 0 "
        "(areal_flow/colocation.py). "
        "'lending': as 'disaggregated', and the trainer also computes on a generator's cores "
        "while that generator is idle; where it cannot lend (Ray, a GPU trainer, several "
        "ranks) it places as 'disaggregated' and says why (areal_flow/lending.py).",
    )
    ray: RayOptions = Field(
        default_factory=RayOptions, description="Ray launcher settings (launcher 'ray')."
    )
    run_dir: Path = Field(
        Path("runs"),
        description="Parent folder of run folders (one per run: logs, checkpoints, MLflow).",
    )
    seed: int = Field(0, ge=0, description="Seed for every random choice in the run.")

    def node(self, name: str) -> NodeSpec:
        """The node called ``name``; KeyError names the known nodes."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node named {name!r}; nodes: {', '.join(n.name for n in self.nodes)}")
