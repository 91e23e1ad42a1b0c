"""The transformers engine on the tiny random model (SmolLM2 log-probs in a slow test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from areal_flow.engine.hf_engine import HFEngine, HFEngineConfig
from tests.engine import engine_cases as cases
from tests.engine.engine_harness import (
    LoopThread,
    Reference,
    start_engine,
    write_adapter,
    write_state_dict,
)

# Batched (left-padded) decoding vs one unpadded forward pass: fp32 summation order only.
HF_TOL = 1e-4


@pytest.fixture(scope="module")
def weights(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("hf_weights")
    base = write_state_dict(tiny_model_dir, root / "base")
    perturbed = write_state_dict(tiny_model_dir, root / "perturbed", noise=1.0)
    return base, perturbed


@pytest.fixture(scope="module")
def hf(tiny_model_dir: Path) -> Iterator[tuple[LoopThread, HFEngine]]:
    # max_batch below the number of samples most cases submit: the running set must refill.
    loop, engine = start_engine(
        lambda: HFEngine(HFEngineConfig(model=str(tiny_model_dir), max_batch=5))
    )
    assert isinstance(engine, HFEngine)
    yield loop, engine
    loop.run(engine.close())
    loop.stop()


def test_logprobs_match_reference(hf: tuple[LoopThread, HFEngine], tiny_model_dir: Path) -> None:
    loop, engine = hf
    ref = Reference(tiny_model_dir)
    loop.run(cases.case_logprobs_match_reference(engine, ref, temperature=0.7, tol=HF_TOL))
    loop.run(
        cases.case_logprobs_match_reference(engine, ref, temperature=1.0, tol=HF_TOL, top_k=20)
    )


def test_greedy_follows_argmax(hf: tuple[LoopThread, HFEngine], tiny_model_dir: Path) -> None:
    loop, engine = hf
    loop.run(cases.case_greedy_follows_argmax(engine, Reference(tiny_model_dir), tol=0.0))


def test_interrupt_keeps_versions(
    hf: tuple[LoopThread, HFEngine], tiny_model_dir: Path, weights: tuple[Path, Path]
) -> None:
    loop, engine = hf
    loop.run(cases.case_interrupt_keeps_versions(engine, tiny_model_dir, *weights, tol=HF_TOL))


def test_update_changes_output(hf: tuple[LoopThread, HFEngine], weights: tuple[Path, Path]) -> None:
    loop, engine = hf
    loop.run(cases.case_update_changes_output(engine, *weights))


def test_lora_adapter_matches_peft(
    hf: tuple[LoopThread, HFEngine],
    tiny_model_dir: Path,
    weights: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    loop, engine = hf
    adapter = write_adapter(tiny_model_dir, tmp_path / "adapter")
    loop.run(cases.case_adapter_matches_peft(engine, tiny_model_dir, adapter, weights[0], HF_TOL))
    second = write_adapter(tiny_model_dir, tmp_path / "second", seed=1)
    loop.run(cases.case_adapter_interrupts(engine, tiny_model_dir, (adapter, second), HF_TOL))
    loop.run(engine.update_weights(engine.version + 1, weights[0]))  # back to the base


def test_many_interrupts_lose_nothing(
    hf: tuple[LoopThread, HFEngine], weights: tuple[Path, Path]
) -> None:
    loop, engine = hf
    loop.run(cases.case_many_interrupts(engine, *weights, interrupts=20))


def test_abort_returns_partial(hf: tuple[LoopThread, HFEngine]) -> None:
    loop, engine = hf
    loop.run(cases.case_abort_returns_partial(engine))


def test_stop_string(hf: tuple[LoopThread, HFEngine]) -> None:
    loop, engine = hf
    loop.run(cases.case_stop_string(engine))


def test_bad_weights_are_rejected(hf: tuple[LoopThread, HFEngine], tmp_path: Path) -> None:
    loop, engine = hf
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        loop.run(engine.update_weights(engine.version + 1, tmp_path))


@pytest.mark.slow
def test_smollm2_logprobs_match_reference(smollm2_dir: Path) -> None:
    loop, engine = start_engine(
        lambda: HFEngine(HFEngineConfig(model=str(smollm2_dir), max_batch=8))
    )
    try:
        ref = Reference(smollm2_dir)
        loop.run(cases.case_logprobs_match_reference(engine, ref, temperature=0.8, tol=HF_TOL))
    finally:
        loop.run(engine.close())
        loop.stop()


def test_create_engine_by_kind(tiny_model_dir: Path) -> None:
    from areal_flow.engine import VLLMEngine, create_engine

    assert isinstance(create_engine("hf", model=str(tiny_model_dir)), HFEngine)
    assert isinstance(create_engine("vllm", model=str(tiny_model_dir)), VLLMEngine)
    with pytest.raises(ValueError, match="choose one of"):
        create_engine("tgi", model=str(tiny_model_dir))
