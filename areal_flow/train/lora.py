"""LoRA for the trainer: ``TrainerConfig(lora=LoraConfig(...))`` trains adapters with peft.

Rules:
- The base model's weights are frozen; only the adapter (A, B of each targeted linear layer)
  has gradients and AdamW state. peft injects the adapter layers into the loaded model in
  place, so the policy's forward passes run on the same module tree (base weights + B·A·s,
  s = alpha / rank, or alpha / √rank with ``rslora``).
- A published version holds the adapter only, in peft's layout (``adapter_model.safetensors``
  + ``adapter_config.json``; see ``areal_flow.train.weights``), always in fp32: it is small,
  and engines merge it into their base weights (``areal_flow.engine.adapter``).
- Checkpoints hold the adapter in the same layout (``PeftModel.save_pretrained``): they load
  in plain transformers with peft installed (``AutoModelForCausalLM.from_pretrained(ckpt)``)
  or with ``PeftModel.from_pretrained(base, ckpt)``. The base is the trainer's ``model``
  (recorded as ``base_model_name_or_path``); a resumed trainer loads the base and then the
  adapter.
- This module imports peft and torch inside functions: graph validation never loads them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from areal_flow.engine.adapter import ADAPTER_CONFIG, ADAPTER_FILE

if TYPE_CHECKING:
    import torch

LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoraConfig(BaseModel):
    """Low-rank adapters trained instead of the full weights (peft's ``LoraConfig``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rank: int = Field(16, ge=1, le=1024, description="Rank r of each adapter (peft's r).")
    alpha: int = Field(32, ge=1, description="Scale numerator: the update is B·A·alpha/r.")
    dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Dropout on the adapter's input while training. Keep 0 for RL: dropout "
        "makes the trainer's log-probs differ from the generator's.",
    )
    target_modules: tuple[str, ...] | Literal["all-linear"] = Field(
        LLAMA_LINEAR,
        description="Linear layers to adapt, by module name suffix (Llama-style names by "
        "default), or 'all-linear' (every linear layer but the output head).",
    )
    rslora: bool = Field(False, description="Rank-stabilised scale alpha/√r instead of alpha/r.")

    def peft(self) -> Any:
        """The equivalent ``peft.LoraConfig``."""
        from peft import LoraConfig as PeftLoraConfig

        targets = self.target_modules
        return PeftLoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=targets if isinstance(targets, str) else list(targets),
            use_rslora=self.rslora,
            bias="none",
            task_type="CAUSAL_LM",
        )


def attach(model: Any, config: LoraConfig) -> Any:
    """Inject adapters into ``model`` in place and freeze its base weights; returns the
    ``PeftModel`` wrapping it (for saving). ``model`` itself keeps its HF interface."""
    from peft import get_peft_model

    try:
        wrapped = get_peft_model(model, config.peft())
    except ValueError as error:  # peft: "Target modules {...} not found in the base model"
        raise ValueError(
            f"lora.target_modules {config.target_modules!r} do not match this model's layers "
            f"({error}); name linear layers of the model, or use 'all-linear'"
        ) from error
    return wrapped


def adapter_state(wrapped: Any) -> dict[str, torch.Tensor]:
    """The adapter's tensors under the names peft saves them with (what engines load)."""
    from peft import get_peft_model_state_dict

    return dict(get_peft_model_state_dict(wrapped))


def adapter_config_json(wrapped: Any) -> bytes:
    """``adapter_config.json`` of ``wrapped``, written by peft itself."""
    with tempfile.TemporaryDirectory(prefix="areal-lora-") as tmp:
        wrapped.peft_config["default"].save_pretrained(tmp)
        return (Path(tmp) / ADAPTER_CONFIG).read_bytes()


def load_adapter(wrapped: Any, folder: Path) -> None:
    """Load the adapter saved in ``folder`` (a checkpoint) into ``wrapped``."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    file = Path(folder) / ADAPTER_FILE
    if not file.is_file():
        raise FileNotFoundError(
            f"{folder} holds no LoRA adapter ({ADAPTER_FILE}): it was written without "
            "lora; resume it with the trainer's lora setting it was trained with (null)"
        )
    result = set_peft_model_state_dict(wrapped, load_file(str(file)))
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(
            f"the adapter in {folder} does not fit this lora setting: unexpected "
            f"{sorted(unexpected)[:3]}; resume with the rank and target_modules it was saved with"
        )
