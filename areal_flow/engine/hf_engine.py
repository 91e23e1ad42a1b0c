"""hf engine: the engine interface on plain transformers, with continuous batching.

Rules:
- A running set of at most ``max_batch`` sequences decodes one token per step with a shared KV
  cache (``hf_batch.RunningBatch``); finished sequences leave and waiting ones join between
  steps, so the batch is refilled continuously.
- Each step runs in a worker thread (``asyncio.to_thread``) so the event loop stays free; every
  state change (admit, abort, weight load) happens between steps under ``_step_lock``.
- Weight updates load the tensors in place (``load_state_dict``), drop the KV cache and put the
  live sequences back at the head of the queue: they continue from their prefix, recomputed
  under the new weights (the semantics of the vLLM engine's ``recompute`` mode). Tokens keep
  the version of the step that sampled them. A LoRA version (an adapter folder) loads as merged
  weights: the base's adapted tensors plus the adapter's update (``engine.adapter``).
- Log-probs follow ``engine.sampling.processed_logprobs`` (the ``engine.base`` definition).
- The portable fallback where vLLM is missing, and the reference engine in tests.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from areal_flow.engine.adapter import is_adapter
from areal_flow.engine.base import (
    GenerationRequest,
    InferenceEngine,
    Sample,
    SampleStream,
    weight_files,
)
from areal_flow.engine.hf_batch import RunningBatch, Sequence


class HFEngineConfig(BaseModel):
    """Settings of one transformers engine."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(description="HF model folder (see areal_flow.models.prepare_model)")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="compute dtype")
    max_batch: int = Field(32, ge=1, description="sequences decoded together")
    max_model_len: int = Field(2048, ge=2, description="prompt + response tokens per sequence")
    seed: int = Field(0, description="seed of the sampling generator")
    cpus: tuple[int, ...] | None = Field(
        None, description="cores for torch's thread pool (sets its size; None = torch default)"
    )
    initial_version: int = Field(0, ge=0, description="policy version of the initial weights")


class HFEngine(InferenceEngine):
    """Continuous-batching generation with transformers; see module docstring."""

    def __init__(self, config: HFEngineConfig) -> None:
        self.config = config
        self._version = config.initial_version
        self._stream = SampleStream()
        self._waiting: deque[Sequence] = deque()
        self._batch: RunningBatch | None = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._generator: Any = None
        self._eos: set[int] = set()
        self._step_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._paused = False
        self._closing = False
        self._loop_task: asyncio.Task[None] | None = None
        self._pending: dict[str, int] = {}  # request id -> samples not yet delivered

    @property
    def version(self) -> int:
        return self._version

    def num_unfinished(self) -> int:
        running = len(self._batch) if self._batch is not None else 0
        return len(self._waiting) + running

    async def start(self) -> None:
        self._model, self._tokenizer = await asyncio.to_thread(self._load)
        self._batch = RunningBatch(self._model, pad_id=self._pad_id())
        self._loop_task = asyncio.create_task(self._loop())

    def _load(self) -> tuple[Any, Any]:
        import torch
        from transformers import AutoTokenizer

        from areal_flow.models import load_causal_lm

        cfg = self.config
        if cfg.cpus is not None:
            torch.set_num_threads(len(cfg.cpus))
        tokenizer = AutoTokenizer.from_pretrained(cfg.model)
        model = load_causal_lm(cfg.model, dtype=getattr(torch, cfg.dtype))
        model.eval()
        eos = model.generation_config.eos_token_id
        eos = eos if eos is not None else tokenizer.eos_token_id
        self._eos = set(eos) if isinstance(eos, list) else {int(eos)}
        self._generator = torch.Generator().manual_seed(cfg.seed)
        return model, tokenizer

    def _pad_id(self) -> int:
        pad = self._tokenizer.pad_token_id
        return int(pad if pad is not None else next(iter(self._eos)))

    async def submit(self, request: GenerationRequest) -> None:
        if self._batch is None or self._closing:
            raise RuntimeError("HFEngine.submit: call start() first (and not after close())")
        if request.request_id in self._pending:
            raise ValueError(f"request id {request.request_id!r} is already in flight")
        if len(request.prompt_token_ids) >= self.config.max_model_len:
            raise ValueError(
                f"request {request.request_id}: prompt of {len(request.prompt_token_ids)} "
                f"tokens leaves no room under max_model_len={self.config.max_model_len}"
            )
        self._pending[request.request_id] = request.n
        self._waiting.extend(Sequence(request, i) for i in range(request.n))
        self._wake.set()

    def samples(self) -> AsyncIterator[Sample]:
        return self._stream.__aiter__()

    async def pause(self) -> None:
        self._paused = True
        async with self._step_lock:  # returns once the step in progress has ended
            pass

    async def resume(self) -> None:
        self._paused = False
        self._wake.set()

    async def update_weights(self, version: int, path: str | Path) -> None:
        adapter = is_adapter(path)  # a LoRA version: merged into the base (engine.adapter)
        files = [] if adapter else weight_files(path)
        assert self._batch is not None
        async with self._step_lock:
            if adapter:
                await asyncio.to_thread(self._load_adapter, Path(path))
            else:
                await asyncio.to_thread(self._load_weights, files)
            self._version = version
            # The cache holds keys/values of the old weights: recompute every live prefix.
            self._waiting.extendleft(reversed(self._batch.clear()))
        self._wake.set()

    def _load_weights(self, files: list[Path]) -> None:
        import torch
        from safetensors.torch import load_file

        state: dict[str, torch.Tensor] = {}
        for file in files:
            state.update(load_file(str(file)))
        with torch.no_grad():
            result = self._model.load_state_dict(state, strict=False)
        tied = {"lm_head.weight"} if self._model.config.tie_word_embeddings else set()
        missing = set(result.missing_keys) - tied
        if missing or result.unexpected_keys:
            raise ValueError(
                f"weights in {files[0].parent} do not match the model: missing "
                f"{sorted(missing)[:5]}, unexpected {sorted(result.unexpected_keys)[:5]}; "
                "save model.state_dict() of the same architecture"
            )

    def _load_adapter(self, folder: Path) -> None:
        import torch

        from areal_flow.engine.adapter import merged_tensors

        state = dict(merged_tensors(self.config.model, folder))
        with torch.no_grad():
            result = self._model.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise ValueError(
                f"the adapter in {folder} adapts weights this model does not have: "
                f"{sorted(result.unexpected_keys)[:5]}; serve it on its own base model"
            )

    async def abort(self, request_id: str) -> None:
        assert self._batch is not None
        async with self._step_lock:
            for seq in [s for s in self._waiting if s.request.request_id == request_id]:
                self._waiting.remove(seq)
                self._finish(seq, "abort")
            rows = {i for i, s in enumerate(self._batch.seqs) if s.request.request_id == request_id}
            for i in sorted(rows):
                self._finish(self._batch.seqs[i], "abort")
            self._batch.remove(rows)

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
        self._stream.close()

    async def _loop(self) -> None:
        try:
            while not self._closing:
                if self._paused or not self.num_unfinished():
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                async with self._step_lock:
                    # An abort or pause may have run while this loop waited for the lock.
                    if self._paused or not self.num_unfinished():
                        continue
                    finished = await asyncio.to_thread(self._step, self._admit())
                for seq in finished:
                    self._deliver(seq)
        except Exception as error:
            # Raise in the reader of samples(); the loop cannot continue safely.
            self._stream.fail(error)
            raise

    def _admit(self) -> list[Sequence]:
        assert self._batch is not None
        room = self.config.max_batch - len(self._batch)
        return [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]

    def _step(self, joining: list[Sequence]) -> list[Sequence]:
        """Admit ``joining``, decode one token for every live row; returns finished ones."""
        import torch

        from areal_flow.engine.sampling import sample_tokens

        batch = self._batch
        assert batch is not None
        with torch.inference_mode():
            batch.add(joining)
            logits = batch.decode()
            sampling = [s.request.sampling for s in batch.seqs]
            tokens, logprobs = sample_tokens(
                logits,
                torch.tensor([p.temperature for p in sampling]),
                torch.tensor([p.top_k for p in sampling]),
                torch.tensor([p.top_p for p in sampling]),
                self._generator,
            )
            batch.advance(tokens)
        done: set[int] = set()
        for row, (seq, token, logprob) in enumerate(
            zip(batch.seqs, tokens.tolist(), logprobs.tolist(), strict=True)
        ):
            seq.tokens.append(int(token))
            seq.logprobs.append(float(logprob))
            seq.versions.append(self._version)
            seq.finish = self._finish_reason(seq)
            if seq.finish is not None:
                done.add(row)
        finished = [batch.seqs[i] for i in sorted(done)]
        batch.remove(done)
        return finished

    def _finish_reason(self, seq: Sequence) -> str | None:
        sampling = seq.request.sampling
        if seq.tokens[-1] in self._eos:
            return "stop"
        if sampling.stop and any(s in self._text(seq.tokens) for s in sampling.stop):
            return "stop"
        full_len = len(seq.request.prompt_token_ids) + len(seq.tokens)
        if len(seq.tokens) >= sampling.max_tokens or full_len >= self.config.max_model_len:
            return "length"
        return None

    def _text(self, tokens: list[int]) -> str:
        return str(self._tokenizer.decode(tokens, skip_special_tokens=True))

    def _finish(self, seq: Sequence, reason: str) -> None:
        seq.finish = reason
        self._deliver(seq)

    def _deliver(self, seq: Sequence) -> None:
        assert seq.finish is not None
        rid = seq.request.request_id
        self._pending[rid] -= 1
        if self._pending[rid] == 0:
            del self._pending[rid]
        self._stream.put(
            Sample(
                request_id=rid,
                sample_index=seq.index,
                prompt_token_ids=list(seq.request.prompt_token_ids),
                response_token_ids=seq.tokens,
                logprobs=seq.logprobs,
                versions=seq.versions,
                finish_reason=seq.finish,  # type: ignore[arg-type]
                text=self._text(seq.tokens),
            )
        )
