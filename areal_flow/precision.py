"""What an engine's ``dtype: auto`` means on the hardware it runs on.

Rule: ``auto`` is bfloat16 where the device computes bfloat16 natively, float32 elsewhere.

- CUDA: bfloat16 on compute capability 8.0 and newer (Ampere on); older GPUs emulate it, and
  vLLM refuses bf16 there.
- CPU: bfloat16 on x86 with AVX-512 BF16 or AMX tiles; float32 on every other CPU (ARM is not
  checked). On AVX2-only x86 such as AMD Zen 3 vLLM-CPU cannot build its oneDNN bf16 matmul
  and falls back to torch's emulated one: on one AMD Zen 3 core SmolLM2 decoded 6.7 tokens/s
  in bf16 against 44.5 in float32 (bench/generation.py; docs/benchmarks.md, "Generation").

Each process resolves ``auto`` on the machine it runs on; nodes log what they chose. A trainer
publishes bfloat16 weights only when, as it sees them, every generator it feeds resolves to
bfloat16 (``nodes/trainer.py``). Where its view differs from a generator's (a CPU trainer does
not see the GPUs; machines of different CPUs under Ray) the cost is precision or bytes, not
correctness: a generator loads whatever dtype arrives into its own, and the trainer's
importance weights use the log-probs the generator actually sampled with.
"""

from __future__ import annotations

from functools import cache
from typing import Literal

EngineDtype = Literal["auto", "float32", "bfloat16"]
Device = Literal["cpu", "cuda"]


def device_kind(device: str) -> Device:
    """'cuda' for a torch device string naming a CUDA device ('cuda', 'cuda:1'), else 'cpu'."""
    return "cuda" if device.startswith("cuda") else "cpu"


@cache
def native_bf16(device: Device) -> bool:
    """Whether ``device`` computes bfloat16 matmuls in hardware (module docstring)."""
    import torch

    if device == "cuda":
        # not is_bf16_supported(): by default it also counts emulation on older GPUs
        return bool(torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0))
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_dtype(dtype: EngineDtype, device: Device) -> Literal["float32", "bfloat16"]:
    """``dtype`` itself, or for ``auto`` bfloat16 where ``device`` has it natively, else
    float32."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if native_bf16(device) else "float32"


def resolve_autocast(bf16: bool | Literal["auto"], device: Device) -> bool:
    """A trainer's ``bf16`` setting: as given, or for ``auto`` whether ``device`` has bfloat16
    natively (emulated bf16 autocast made a training step of graphs/math_rl.py's shapes 10x
    slower than float32 on one AMD Zen 3 core, bench/trainer.py)."""
    return native_bf16(device) if bf16 == "auto" else bf16
