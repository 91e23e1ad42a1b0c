"""Test helpers: an engine living in a background event loop, weight files, HF recomputation.

A module-scoped engine (vLLM takes ~30 s to start) must outlive each test's own event loop,
so it runs in a thread with its own loop; tests hand it coroutines with ``run``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file

from areal_flow.engine.base import GenerationRequest, InferenceEngine, Sample
from areal_flow.engine.sampling import processed_logprobs

T = TypeVar("T")


class LoopThread:
    """An asyncio loop in a daemon thread; ``run`` executes a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 300) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)


def start_engine(make: Callable[[], InferenceEngine]) -> tuple[LoopThread, InferenceEngine]:
    """Create and start an engine inside a fresh loop thread."""
    loop = LoopThread()

    async def create() -> InferenceEngine:
        engine = make()
        await engine.start()
        return engine

    return loop, loop.run(create(), timeout=600)


def write_state_dict(model_dir: Path, out_dir: Path, noise: float = 0.0, seed: int = 0) -> Path:
    """Write the model's HF state dict (as a trainer would), optionally with Gaussian noise
    of ``noise`` × each tensor's std added to every matrix."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # named_parameters() lists a tied weight once, so tied copies stay identical.
        for _, param in model.named_parameters():
            if noise and param.dim() == 2:
                param += noise * param.std() * torch.randn(param.shape, generator=generator)
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    # Tied embeddings share storage in state_dict(); safetensors needs separate tensors.
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.clone() for k, v in state.items()}, str(out_dir / "model.safetensors"))
    return out_dir


def write_adapter(model_dir: Path, out_dir: Path, rank: int = 4, seed: int = 0) -> Path:
    """A peft LoRA adapter on the model's attention and MLP layers with random A and B (peft's
    default B = 0 would change nothing), saved as a trainer publishes it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
        init_lora_weights=False,
    )
    get_peft_model(model, config).save_pretrained(out_dir)
    return out_dir


class Reference:
    """Plain transformers forward passes for given weights, to check engine outputs."""

    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def load(self, weights_dir: Path) -> Reference:
        self.model.load_state_dict(load_file(str(weights_dir / "model.safetensors")))
        return self

    def with_adapter(self, adapter_dir: Path) -> Reference:
        """transformers + peft: the base model with the adapter, unmerged."""
        from peft import PeftModel

        self.model = PeftModel.from_pretrained(self.model, adapter_dir).eval()
        return self

    @torch.no_grad()
    def logits(self, sample: Sample) -> torch.Tensor:
        """``[len(response), vocab]`` logits that predicted each response token."""
        ids = torch.tensor([sample.prompt_token_ids + sample.response_token_ids])
        start = len(sample.prompt_token_ids) - 1
        return self.model(ids).logits[0, start:-1].float()

    @torch.no_grad()
    def logprobs_over_old_kv(self, sample: Sample, switch: int, new: Reference) -> torch.Tensor:
        """Log-probs (T = 1) of response tokens ``switch:`` sampled by ``new``'s weights while
        attending to KV these weights computed: an in-flight update before token ``switch``.
        The step sampling token ``switch`` is the first on the new weights, and it computes the
        KV of its input, token ``switch - 1``; the prompt and tokens before that keep old KV."""
        from transformers import DynamicCache

        ids = [*sample.prompt_token_ids, *sample.response_token_ids]
        old_kv = len(sample.prompt_token_ids) + switch - 1
        cache = DynamicCache()
        self.model(torch.tensor([ids[:old_kv]]), cache=cache, use_cache=True)
        tail = torch.tensor([ids[old_kv:-1]])
        logits = new.model(tail, cache=cache, use_cache=True).logits[0].float()
        chosen = torch.tensor(sample.response_token_ids[switch:])[:, None]
        return torch.log_softmax(logits, dim=-1).gather(-1, chosen).squeeze(-1)

    def logprobs(self, sample: Sample, temperature: float, top_k: int = 0, top_p: float = 1.0):
        """The engine-definition log-prob of each response token under these weights."""
        logits = self.logits(sample)
        rows = len(logits)
        lp = processed_logprobs(
            logits,
            torch.full((rows,), temperature),
            torch.full((rows,), top_k),
            torch.full((rows,), top_p),
        )
        return lp.gather(-1, torch.tensor(sample.response_token_ids)[:, None]).squeeze(-1)


async def collect(
    engine: InferenceEngine,
    expected: int,
    timeout: float = 120,
    on_sample: Callable[[Sample], Awaitable[None]] | None = None,
) -> list[Sample]:
    """Read ``expected`` samples from the engine (calling ``on_sample`` after each)."""
    got: list[Sample] = []

    async def read() -> None:
        async for sample in engine.samples():
            got.append(sample)
            if on_sample is not None:
                await on_sample(sample)
            if len(got) == expected:
                return

    await asyncio.wait_for(read(), timeout)
    return got


async def generate(
    engine: InferenceEngine, requests: list[GenerationRequest], timeout: float = 120
) -> dict[tuple[str, int], Sample]:
    """Submit ``requests`` and wait for all their samples, keyed by (request id, index)."""
    for request in requests:
        await engine.submit(request)
    samples = await collect(engine, sum(r.n for r in requests), timeout)
    return {(s.request_id, s.sample_index): s for s in samples}
