"""Generator: streams rollouts from an inference engine; new weights interrupt generation.

Rules: never waits for the trainer; emits one batch per finished prompt group (all n samples);
every response token carries the policy version that sampled it.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from areal_flow.spec import NodeSpec, Port, Spec


class Sampling(Spec):
    """Sampling parameters shared by every request of the generator."""

    temperature: float = Field(1.0, gt=0, le=10, description="Softmax temperature (> 0).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass; 1 = off.")
    top_k: int = Field(0, ge=0, description="Top-k cut; 0 = off.")
    max_tokens: int = Field(256, ge=1, le=131072, description="Most response tokens.")
    stop: list[str] = Field(default_factory=list, description="Extra stop strings.")


class GeneratorConfig(NodeSpec):
    """LLM rollouts on vLLM (default) or plain transformers (``hf``)."""

    inputs: ClassVar[dict[str, Port]] = {
        "prompts": Port(record="prompt"),
        "weights": Port(record="weights", required=False, weights=True),
    }
    outputs: ClassVar[dict[str, Port]] = {"rollouts": Port(record="rollout")}
    role: ClassVar[str] = "generator"

    kind: Literal["generator"] = "generator"
    model: str = Field(
        "smollm2",
        min_length=1,
        description="HF model folder, a .gguf file, or 'smollm2' (SmolLM2-135M-Instruct).",
    )
    engine: Literal["vllm", "hf"] = Field(
        "vllm", description="'vllm' (CPU or CUDA) or 'hf' (plain transformers fallback)."
    )
    sampling: Sampling = Field(default_factory=Sampling, description="Sampling parameters.")
    max_running: int = Field(
        64, ge=1, le=4096, description="Most sequences decoding at once in this replica."
    )
    interrupt_mode: Literal["abort", "keep"] = Field(
        "keep",
        description="On new weights: 'keep' pauses sequences in place; 'abort' aborts and "
        "resubmits each prefix.",
    )
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="Engine weight dtype.")
    kv_cache_gib: float = Field(1.0, gt=0, le=1024, description="KV cache size (vLLM CPU).")
