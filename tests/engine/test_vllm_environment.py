"""The environment vLLM's processes are spawned with: preloaded libraries, restored afterwards."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from areal_flow.engine.vllm_engine import (
    VLLMEngineConfig,
    _engine_process_environment,
    preload_paths,
)


def test_preload_lists_only_installed_libraries() -> None:
    found = preload_paths(("tcmalloc", "iomp"))
    assert all(Path(p).is_file() for p in found)
    assert len(found) <= 2
    assert preload_paths(()) == []


def test_spawn_environment_is_set_then_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LD_PRELOAD", "/opt/mine.so")
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    affinity = os.sched_getaffinity(0)
    config = VLLMEngineConfig(model="m", preload=("tcmalloc", "iomp"), kv_cache_gib=3, cpus=(0,))
    wanted = preload_paths(config.preload)
    with _engine_process_environment(config):
        assert os.environ["LD_PRELOAD"].split(":") == [*wanted, "/opt/mine.so"]
        assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "3"
        assert os.sched_getaffinity(0) == {0}
    assert os.environ["LD_PRELOAD"] == "/opt/mine.so"
    assert "VLLM_CPU_KVCACHE_SPACE" not in os.environ
    assert os.sched_getaffinity(0) == affinity


def test_cpu_engines_compile_without_the_aot_artifact_unless_the_user_chose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """vLLM-CPU's AOT artifact does not load back (every start compiled again); the per-graph
    cache does (bench/startup.py: warm start 68.6 s → 35.5 s)."""
    config = VLLMEngineConfig(model="m")
    monkeypatch.delenv("VLLM_USE_AOT_COMPILE", raising=False)
    with _engine_process_environment(config):
        assert os.environ["VLLM_USE_AOT_COMPILE"] == "0"
    assert "VLLM_USE_AOT_COMPILE" not in os.environ
    monkeypatch.setenv("VLLM_USE_AOT_COMPILE", "1")
    with _engine_process_environment(config):
        assert os.environ["VLLM_USE_AOT_COMPILE"] == "1"
