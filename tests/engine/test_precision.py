"""``dtype: auto``: bfloat16 only where the hardware computes it natively."""

from __future__ import annotations

from pathlib import Path

import pytest

from areal_flow import precision
from areal_flow.nodes.generator import GeneratorConfig
from areal_flow.nodes.trainer import TrainerConfig, _weights_dtype
from areal_flow.nodes.weight_publisher import WeightPublisherConfig
from areal_flow.precision import native_bf16, resolve_dtype
from areal_flow.spec import Graph, Resources

CPUINFO = Path("/proc/cpuinfo")


@pytest.mark.skipif(not CPUINFO.exists(), reason="reads the CPU's flags from /proc/cpuinfo")
def test_native_bf16_on_cpu_matches_the_cpu_flags() -> None:
    flags = next(
        set(line.split(":", 1)[1].split())
        for line in CPUINFO.read_text().splitlines()
        if line.startswith(("flags", "Features"))
    )
    assert native_bf16("cpu") == bool({"avx512_bf16", "amx_tile"} & flags)


@pytest.mark.parametrize(("capability", "native"), [((7, 5), False), ((8, 0), True)])
def test_native_bf16_on_cuda_needs_ampere(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], native: bool
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulation too
    native_bf16.cache_clear()
    try:
        assert native_bf16("cuda") is native
    finally:
        native_bf16.cache_clear()


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_only_where_native(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    asked: list[str] = []

    def fake(device: str) -> bool:
        asked.append(device)
        return native

    monkeypatch.setattr(precision, "native_bf16", fake)
    want = "bfloat16" if native else "float32"
    assert resolve_dtype("auto", "cpu") == want
    assert resolve_dtype("float32", "cpu") == "float32"  # explicit dtypes are kept as given
    assert resolve_dtype("bfloat16", "cpu") == "bfloat16"

    cpu = GeneratorConfig(name="gen", dtype="auto")
    assert cpu.engine_settings()["dtype"] == want == cpu.weights_dtype()
    hf = GeneratorConfig(name="gen", dtype="auto", engine="hf")
    assert hf.engine_settings()["dtype"] == want
    asked.clear()
    GeneratorConfig(name="gen", dtype="auto", resources=Resources(cpus=1, gpus=1)).weights_dtype()
    assert asked == ["cuda"]  # a vLLM replica with a GPU asks about the GPU
    asked.clear()
    on_gpu_hf = GeneratorConfig(
        name="gen", dtype="auto", engine="hf", resources=Resources(cpus=1, gpus=1)
    )
    on_gpu_hf.weights_dtype()
    assert asked == ["cpu"]  # the hf engine computes on the CPU wherever it runs


@pytest.mark.parametrize("native", [True, False])
def test_trainer_publishes_bf16_only_to_auto_generators_that_resolve_to_it(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path, native: bool
) -> None:
    monkeypatch.setattr(precision, "native_bf16", lambda device: native)
    graph = Graph(
        name="g",
        nodes=[
            TrainerConfig(name="trainer", model=str(tiny_model_dir)),
            WeightPublisherConfig(name="publisher"),
            GeneratorConfig(name="gen", model=str(tiny_model_dir), dtype="auto"),
        ],
        edges=["trainer -> publisher", "publisher -> gen.weights"],
    )
    assert _weights_dtype("trainer", graph) == ("bfloat16" if native else None)
