"""Inference engines behind one interface (``base.InferenceEngine``): vLLM (default) and hf.

Rules: importing this package imports neither torch nor vllm; engines load them in ``start``.
"""

from __future__ import annotations

from typing import Any

from areal_flow.engine.base import (
    GenerationRequest,
    InferenceEngine,
    Sample,
    SamplingConfig,
)
from areal_flow.engine.hf_engine import HFEngine, HFEngineConfig
from areal_flow.engine.vllm_engine import VLLMEngine, VLLMEngineConfig

ENGINES = {"vllm": (VLLMEngine, VLLMEngineConfig), "hf": (HFEngine, HFEngineConfig)}


def create_engine(kind: str, **settings: Any) -> InferenceEngine:
    """An unstarted engine of ``kind`` (``vllm`` or ``hf``) from its config fields."""
    if kind not in ENGINES:
        raise ValueError(f"unknown engine {kind!r}; choose one of {sorted(ENGINES)}")
    engine_cls, config_cls = ENGINES[kind]
    return engine_cls(config_cls(**settings))


__all__ = [
    "ENGINES",
    "GenerationRequest",
    "HFEngine",
    "HFEngineConfig",
    "InferenceEngine",
    "Sample",
    "SamplingConfig",
    "VLLMEngine",
    "VLLMEngineConfig",
    "create_engine",
]
