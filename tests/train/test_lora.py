"""LoRA: the trainer trains adapters (peft), publishes only them, the generator serves base +
adapter with the log-probs transformers + peft give, checkpoints load in plain transformers."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import torch

from areal_flow import Graph, Staleness, Tracking
from areal_flow.engine.base import GenerationRequest, SamplingConfig
from areal_flow.evaluate import evaluate
from areal_flow.node import NodeContext
from areal_flow.nodes import PromptSourceConfig, RewardFnConfig, Sampling, TrainerConfig
from areal_flow.nodes.generator import Generator, GeneratorConfig
from areal_flow.nodes.weight_publisher import WeightPublisher, WeightPublisherConfig
from areal_flow.testing import run_in_process
from areal_flow.train.algo import Optimizer
from areal_flow.train.lora import LoraConfig, adapter_state
from areal_flow.train.session import TrainingSession
from areal_flow.train.steplog import read_steps
from tests.train.scored import behaviour_logprobs, load_model
from tests.train.test_trainer_step import config, groups

LORA = LoraConfig(rank=4, alpha=8)


def lora_session(model_dir: Path, run_dir: Path, resume: Path | None = None) -> TrainingSession:
    cfg = config(model_dir, lora=LORA, optimizer=Optimizer(lr=5e-2, grad_clip=1e9))
    return TrainingSession(
        cfg, temperature=1.0, run_dir=run_dir, store="run_dir", resume_from=resume
    )


def peft_model(base: Path, adapter: Path) -> torch.nn.Module:
    from peft import PeftModel

    return PeftModel.from_pretrained(load_model(base), adapter).eval()


async def generate(generator: Generator, prompt: list[int]) -> list[tuple[list[int], list[float]]]:
    engine = generator.engine
    sampling = SamplingConfig(temperature=1.0, max_tokens=8)
    await engine.submit(GenerationRequest("r", prompt, n=3, sampling=sampling))
    out = []
    async for sample in engine.samples():
        out.append((sample.response_token_ids, sample.logprobs))
        if len(out) == 3:
            return out
    raise AssertionError("the engine stopped early")


def test_an_adapter_update_serves_what_transformers_and_peft_compute(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    session = lora_session(tiny_model_dir, tmp_path)
    frozen = {n: p.detach().clone() for n, p in session.policy.model.named_parameters()}
    session.prepare(groups(tiny_model_dir))
    future, _ = session.train_next()
    ref = future.result(timeout=60).ref
    session.close()
    folder = Path(ref.path)
    # The version is the adapter alone, in peft's layout, a small fraction of the model.
    assert sorted(os.listdir(folder)) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "adapter_model.safetensors.checksum",
    ]
    base_bytes = (tiny_model_dir / "model.safetensors").stat().st_size
    assert (folder / "adapter_model.safetensors").stat().st_size < base_bytes / 10
    # Only adapter weights trained (B first: it starts at 0, so A's first gradient is 0).
    for name, p in session.policy.model.named_parameters():
        assert torch.equal(p, frozen[name]) != ("lora_B" in name), name

    pub_cfg = WeightPublisherConfig(name="publisher", store="run_dir")
    publisher = WeightPublisher(pub_cfg)
    publisher.setup(NodeContext(config=pub_cfg, replica=0, replicas=1, run_dir=tmp_path, seed=0))
    forwarded = publisher.process(ref.batch())  # verifies the adapter's checksum
    assert forwarded is not None and not isinstance(forwarded, dict)
    row = forwarded.to_pylist()[0]
    gen_cfg = GeneratorConfig(name="gen", model=str(tiny_model_dir), engine="hf", max_running=4)
    generator = Generator(gen_cfg)
    prompt = list(range(200, 212))

    async def main() -> list[tuple[list[int], list[float]]]:
        await generator.setup(
            NodeContext(config=gen_cfg, replica=0, replicas=1, run_dir=tmp_path, seed=0)
        )
        try:
            await generator.on_weights(row["version"], row)
            assert generator.engine.version == 1
            return await generate(generator, prompt)
        finally:
            await generator.teardown()

    samples = asyncio.run(main())
    reference = peft_model(tiny_model_dir, folder)
    base = load_model(tiny_model_dir)
    moved = 0.0
    for response, logprobs in samples:
        expected = behaviour_logprobs(reference, prompt, response)
        got, want = torch.tensor(logprobs), torch.tensor(expected)
        torch.testing.assert_close(got, want, atol=2e-4, rtol=0)
        before = behaviour_logprobs(base, prompt, response)
        moved = max(moved, max(abs(a - b) for a, b in zip(expected, before, strict=True)))
    assert moved > 1e-2  # the adapter changed the policy: serving the base would fail above


def test_a_lora_checkpoint_loads_in_transformers_and_peft_and_resumes(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    session = lora_session(tiny_model_dir, tmp_path)
    session.prepare(groups(tiny_model_dir))
    session.train_next()
    checkpoint = session.checkpoint(session.snapshot())
    session.close()
    assert (checkpoint / "adapter_model.safetensors").is_file()
    assert not (checkpoint / "model.safetensors").exists()  # the adapter, not the model

    ids = torch.tensor([list(range(300, 316))])
    with torch.no_grad():
        trained = session.policy.model(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(checkpoint)(input_ids=ids).logits
        with_peft = peft_model(tiny_model_dir, checkpoint)(input_ids=ids).logits
        base = load_model(tiny_model_dir)(input_ids=ids).logits
    torch.testing.assert_close(plain, trained, atol=1e-5, rtol=0)
    torch.testing.assert_close(with_peft, trained, atol=1e-5, rtol=0)
    assert (trained - base).abs().max() > 1e-2

    # Held-out evaluation scores an adapter checkpoint on its base (the final scoring of a run).
    scored = evaluate(
        checkpoint, "arithmetic:add1", problems=2, samples=1, k=1, max_tokens=4, engine="hf"
    )
    assert scored.problems == {"all": 2, "add1": 2}

    resumed = lora_session(tiny_model_dir, tmp_path / "resumed", checkpoint)
    assert resumed.step == 1 and resumed.version == 1
    for name, tensor in adapter_state(resumed.policy.peft).items():
        assert torch.equal(tensor, adapter_state(session.policy.peft)[name]), name
    resumed.close()


def odd_length(prompt: str, response: str, answer: str, **row: object) -> float:
    """A reward a random model earns unevenly inside a group (so advantages are not 0)."""
    return float(len(response) % 2)


@pytest.mark.slow
def test_a_short_run_trains_adapters_and_the_generator_serves_them(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Synchronous (η = 0, no interrupt, K = 1): every batch is sampled by the version the
    # trainer holds, so π_θ/π_behav is 1 up to float rounding exactly when the generator
    # serves base + the current adapter (the base alone would be off after step 1).
    model = str(tiny_model_dir)
    graph = Graph(
        name="lora",
        nodes=[
            PromptSourceConfig(name="prompts", model=model, group_size=4, epochs=1, size=12),
            GeneratorConfig(name="gen", model=model, engine="hf", sampling=Sampling(max_tokens=12)),
            RewardFnConfig(name="reward", fn=odd_length, workers=1),
            TrainerConfig(
                name="trainer",
                model=model,
                batch_groups=4,
                steps=3,
                bf16=False,
                optimizer=Optimizer(lr=0.05),
                lora=LoraConfig(rank=4, alpha=8),
            ),
            WeightPublisherConfig(name="publisher", store="run_dir"),
        ],
        edges=[
            "prompts -> gen",
            "gen -> reward",
            "reward -> trainer",
            "trainer.weights -> publisher",
            "publisher -> gen.weights",
        ],
        staleness=Staleness(max_lag=0, interrupt=False),
        tracking=Tracking(enabled=False),
    )
    result = run_in_process(graph, run_dir=tmp_path)
    assert result.ok, result.failure
    steps = read_steps(tmp_path)
    assert [int(s["step"]) for s in steps] == [1, 2, 3]
    for step in steps:
        assert step["grad_norm"] > 0, step
        assert step["iw_mean"] == pytest.approx(1.0, abs=1e-4), step
        assert abs(step["kl_behav_k3"]) < 1e-6, step
    # Steps 2 and 3 trained on samples of adapters 1 and 2 (the run may end before 3 loads).
    assert result.metrics["gen/0"]["policy_version"] >= 2
    final = tmp_path / "checkpoints" / "step_3"
    assert (final / "adapter_config.json").is_file()
    lora_b = [t for n, t in _adapter_file(final).items() if "lora_B" in n]
    assert lora_b and all(t.abs().max() > 0 for t in lora_b)  # B starts at 0: it trained


def _adapter_file(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_a_vllm_lora_generator_takes_the_trainers_rank_and_needs_vllm(tiny_model_dir: Path) -> None:
    from pydantic import ValidationError

    from areal_flow.nodes.generator import lora_rank

    model = str(tiny_model_dir)
    nodes = [
        GeneratorConfig(name="gen", model=model, lora="vllm"),
        TrainerConfig(name="trainer", model=model, lora=LoraConfig(rank=12)),
    ]
    assert lora_rank(Graph(name="g", nodes=nodes, edges=["gen -> trainer"])) == 12
    assert lora_rank(Graph(name="g", nodes=[nodes[0]])) is None
    with pytest.raises(ValidationError, match="set engine to 'vllm'"):
        GeneratorConfig(name="gen", model=model, engine="hf", lora="vllm")
