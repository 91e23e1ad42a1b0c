"""vLLM worker extension: in-place weight loading from a safetensors folder.

Rules:
- vLLM imports this class by name inside its worker processes (``worker_extension_cls``) and
  mixes it into the worker; methods run there via ``AsyncLLM.collective_rpc``.
- Weights are loaded through the model runner's ``reload_weights``, which wraps
  ``model.load_weights`` in vLLM's layerwise-reload helpers. A bare ``load_weights`` is wrong on
  CPU, where linear weights are repacked into kernel layouts after loading.
- Tensors are read in the worker from the file, never shipped through the RPC.
- A LoRA version (a peft adapter folder) is served as merged weights: every tensor of the base
  model the engine started on, the adapted ones plus s·B·A (``engine.adapter``), so the
  layerwise reload sees whole layers (unless the engine serves adapters with vLLM's own LoRA,
  ``VLLMEngineConfig.max_lora_rank``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

WORKER_EXTENSION = "areal_flow.engine.vllm_worker.WeightLoaderExtension"


class WeightLoaderExtension:
    """Mixed into vLLM's worker; ``self`` is the worker (``model_runner``, ``vllm_config``)."""

    model_runner: Any
    vllm_config: Any

    def areal_load_weights(self, path: str) -> int:
        """Load every tensor of the safetensors folder ``path``; returns how many were read."""
        import torch
        from vllm.config import set_current_vllm_config

        from areal_flow.engine.adapter import is_adapter, merged_tensors
        from areal_flow.engine.base import weight_files

        count = 0

        def tensors() -> Iterator[tuple[str, torch.Tensor]]:
            nonlocal count
            from safetensors import safe_open

            if is_adapter(path):  # every base tensor, the adapted ones merged
                base = self.vllm_config.model_config.model
                for name, tensor in merged_tensors(base, path, everything=True):
                    count += 1
                    yield name, tensor
                return
            for file in weight_files(path):
                with safe_open(str(file), framework="pt") as handle:
                    for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                        count += 1
                        yield name, handle.get_tensor(name)

        with set_current_vllm_config(self.vllm_config):
            self.model_runner.reload_weights(weights_iterator=tensors(), is_checkpoint_format=True)
        return count
