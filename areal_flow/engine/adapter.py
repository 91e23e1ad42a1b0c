"""Serving a LoRA adapter as merged weights: W = W₀ + s·B·A for every adapted layer.

Rules:
- A weight folder is an adapter when it holds ``adapter_config.json`` (peft's layout, with
  ``adapter_model.safetensors``); engines then merge it into the weights of the model they
  were started on (the base), read from the base folder's safetensors files each time, so
  versions never accumulate rounding: every version is base + its own adapter.
- The merge is computed in fp32 (s = lora_alpha / r, or lora_alpha / √r with
  ``use_rslora``), which is what peft's unmerged forward computes up to float rounding.
- Only plain LoRA is served: DoRA, adapter biases, ``fan_in_fan_out`` and per-layer rank or
  alpha patterns are refused with the field named (the trainer never writes them).
- torch and safetensors are imported inside functions (vLLM workers import this module).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."


def is_adapter(folder: str | Path) -> bool:
    """True for a folder holding a peft adapter (a published version or a checkpoint)."""
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def adapter_base(folder: str | Path) -> str:
    """The base model an adapter was trained on (peft's ``base_model_name_or_path``)."""
    config = json.loads((Path(folder) / ADAPTER_CONFIG).read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise ValueError(
            f"{Path(folder) / ADAPTER_CONFIG} names no base_model_name_or_path; give the base "
            "model first and the adapter after it"
        )
    return str(base)


def adapter_deltas(folder: str | Path) -> dict[str, torch.Tensor]:
    """``{base weight name: s·B·A}`` (fp32) of the adapter in ``folder``."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    scale = _scale(config, folder)
    tensors = load_file(str(folder / ADAPTER_FILE))
    deltas = {}
    for name, a in tensors.items():
        if not name.endswith(".lora_A.weight"):
            continue
        module = name[: -len(".lora_A.weight")].removeprefix(PEFT_PREFIX)
        b = tensors[name.replace(".lora_A.", ".lora_B.")]
        deltas[f"{module}.weight"] = (b.float() @ a.float()) * scale
    if not deltas:
        raise ValueError(f"the adapter in {folder} holds no lora_A/lora_B weights")
    return deltas


def merged_tensors(
    base: str | Path, adapter: str | Path, everything: bool = False
) -> Iterator[tuple[str, torch.Tensor]]:
    """The base model's tensors with the adapter merged in: only the adapted ones, or with
    ``everything`` every tensor of the base (for loaders that reload whole layers)."""
    from safetensors import safe_open

    from areal_flow.engine.base import weight_files

    deltas = adapter_deltas(adapter)
    found = set()
    for file in weight_files(base):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                if name in deltas:
                    found.add(name)
                    weight = handle.get_tensor(name)
                    yield name, (weight.float() + deltas[name]).to(weight.dtype)
                elif everything:
                    yield name, handle.get_tensor(name)
    missing = sorted(set(deltas) - found)
    if missing:
        raise ValueError(
            f"the adapter in {adapter} adapts layers the model in {base} does not have: "
            f"{missing[:3]}; serve it on the base model it was trained on"
        )


def _scale(config: dict[str, Any], folder: Path) -> float:
    refused = {
        "use_dora": bool(config.get("use_dora")),
        "bias": config.get("bias", "none") != "none",
        "lora_bias": bool(config.get("lora_bias")),
        "fan_in_fan_out": bool(config.get("fan_in_fan_out")),
        "rank_pattern": bool(config.get("rank_pattern")),
        "alpha_pattern": bool(config.get("alpha_pattern")),
    }
    if any(refused.values()):
        fields = ", ".join(k for k, v in refused.items() if v)
        raise ValueError(
            f"the adapter in {folder} sets {fields}; only plain LoRA can be merged here: "
            "train it with areal-flow's lora setting"
        )
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
