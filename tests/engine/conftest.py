"""Model fixtures for engine tests (and for any test that needs a real model).

``smollm2_dir`` converts SmolLM2-135M-Instruct once into the user cache (about 30 s the first
time, instant afterwards); ``tiny_model_dir`` is a 2-layer random Llama with SmolLM2's
tokenizer, built once per test session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from areal_flow.models import make_tiny_model, prepare_smollm2


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    return prepare_smollm2()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", tokenizer_from=smollm2_dir)
