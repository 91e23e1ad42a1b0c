"""The GPU path on a CUDA device (marked ``gpu``: deselected by default; run by
``scripts/gpu_check.sh``): a trainer step on CUDA in bf16, and the weights it publishes from
CUDA memory becoming the policy of a vLLM CUDA engine."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from areal_flow.train.algo import DecoupledPPO, Optimizer
from areal_flow.train.session import TrainingSession
from areal_flow.train.weights import load_weights
from tests.train.test_trainer_step import config, groups

pytestmark = pytest.mark.gpu
TEMPERATURE = 0.7


def cuda_session(model_dir: Path, run_dir: Path, lr: float = 1e-3) -> TrainingSession:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    algo = DecoupledPPO(updates_per_batch=2)
    cfg = config(
        model_dir, bf16=True, temperature=TEMPERATURE, algo=algo, optimizer=Optimizer(lr=lr)
    )
    return TrainingSession(
        cfg, temperature=TEMPERATURE, run_dir=run_dir, device="cuda", store="run_dir"
    )


def test_a_trainer_step_on_cuda_in_bf16(tiny_model_dir: Path, tmp_path: Path) -> None:
    session = cuda_session(tiny_model_dir, tmp_path)
    params = dict(session.policy.model.named_parameters())
    assert all(p.is_cuda and p.dtype == torch.float32 for p in params.values())  # fp32 master
    before = {name: p.detach().clone() for name, p in params.items()}
    session.prepare(groups(tiny_model_dir, temperature=TEMPERATURE))
    assert session.batch is not None
    prox = session.batch.column("prox_logprobs").to_pylist()
    behav = session.batch.column("logprobs").to_pylist()
    for p, b in zip(prox, behav, strict=True):  # CUDA bf16 autocast vs a CPU fp32 sampler
        torch.testing.assert_close(torch.tensor(p), torch.tensor(b), atol=0.05, rtol=0)
    published, metrics = session.train_next()
    assert metrics["ratio_mean"] == 1.0 and math.isfinite(metrics["loss"])
    assert metrics["iw_mean"] == pytest.approx(1.0, abs=0.1)
    assert any(not torch.equal(before[n], p) for n, p in params.items()), "nothing was updated"
    ref = published.result().ref
    state = load_weights(ref.path, ref.checksum)
    current = session.policy.state_dict()
    for name, tensor in state.items():  # the file holds the CUDA parameters after the step
        assert torch.equal(tensor, current[name].detach().cpu()), name
    session.close()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_weights_published_from_cuda_become_the_vllm_cuda_policy(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from areal_flow.engine.vllm_engine import VLLMEngine, VLLMEngineConfig
    from tests.engine import engine_cases as cases
    from tests.engine.engine_harness import Reference, start_engine

    session = cuda_session(tiny_model_dir, tmp_path, lr=3e-2)  # a step that moves log-probs
    session.prepare(groups(tiny_model_dir, temperature=TEMPERATURE))
    published, _ = session.train_next()
    ref = published.result().ref
    session.close()
    config = VLLMEngineConfig(
        model=str(tiny_model_dir), gpu_memory_utilization=0.3, kv_cache_gib=1, max_model_len=1024
    )
    loop, engine = start_engine(lambda: VLLMEngine(config))
    try:
        loop.run(engine.update_weights(ref.version, ref.path))
        reference = Reference(tiny_model_dir)
        missing, unexpected = reference.model.load_state_dict(load_weights(ref.path), strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied: written once
        # fp32 GPU kernels may reduce in another order than the CPU reference.
        loop.run(cases.case_logprobs_match_reference(engine, reference, TEMPERATURE, tol=5e-3))
        loop.run(cases.case_greedy_follows_argmax(engine, reference, tol=5e-3))  # and versions
    finally:
        loop.run(engine.close())
        loop.stop()
