"""Shared fixtures. Area-specific fixtures live in the conftest.py of each test folder."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as an HF folder (converted once into the user cache)."""
    from areal_flow.models import prepare_smollm2

    return prepare_smollm2()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    """A 2-layer random Llama with SmolLM2's tokenizer, built once per test session."""
    from areal_flow.models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", tokenizer_from=smollm2_dir)


@pytest.fixture(scope="session")
def sandbox_isolation() -> str:
    """The sandbox's isolation on this machine; skips where the kernel refuses its namespaces."""
    from areal_flow.tools.sandbox import SandboxUnavailable, check_sandbox

    try:
        return check_sandbox()
    except SandboxUnavailable as e:
        pytest.skip(str(e))
