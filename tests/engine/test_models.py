"""Model preparation: references, GGUF conversion and caching, the tiny test model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from areal_flow.convert_once import LOCKS
from areal_flow.models import (
    convert_gguf,
    prepare_model,
    prepare_smollm2,
    smollm2_gguf_path,
)


def test_hf_folder_is_returned_as_is(tiny_model_dir: Path) -> None:
    assert prepare_model(tiny_model_dir) == tiny_model_dir
    assert prepare_model(str(tiny_model_dir)) == tiny_model_dir


def test_bad_references_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        prepare_model(tmp_path / "no-such-model")
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        prepare_model(tmp_path)


def test_smollm2_is_a_complete_hf_folder(smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    assert prepare_model("smollm2") == smollm2_dir == prepare_smollm2()
    assert prepare_model(smollm2_gguf_path()) == smollm2_dir  # same content hash, same folder
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    assert (smollm2_dir / "model.safetensors").stat().st_size > 400e6  # fp32, dequantised
    generation = json.loads((smollm2_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text.endswith("<|im_start|>assistant\n")


def test_smollm2_answers_sensibly(smollm2_dir: Path) -> None:
    """The dequantised weights are the real model: greedy 2+2 mentions 4."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True, tokenize=True
    )["input_ids"]
    out = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)
    assert "4" in tokenizer.decode(out[0, len(ids) :])


def test_tiny_model_uses_the_real_tokenizer(tiny_model_dir: Path, smollm2_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert len(tokenizer) == len(AutoTokenizer.from_pretrained(smollm2_dir))
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    assert tokenizer.chat_template is not None
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, len(tokenizer))


def test_failed_conversion_leaves_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file at all")
    cache = tmp_path / "cache"
    with pytest.raises(Exception, match=r"(?i)gguf|magic|file"):
        convert_gguf(bad, cache)
    assert [p.name for p in cache.iterdir()] == [LOCKS]  # the lock file's folder, no model


@pytest.mark.slow
def test_conversion_is_cached_by_content(tmp_path: Path, smollm2_dir: Path) -> None:
    """A fresh cache converts once (same bytes as the shared cache), then returns at once."""
    import time

    from safetensors.torch import load_file

    first = convert_gguf(smollm2_gguf_path(), tmp_path)
    left = [p.name for p in tmp_path.iterdir() if p.name != LOCKS]
    assert left == [first.name]  # no temporary folder left
    begin = time.perf_counter()
    assert convert_gguf(smollm2_gguf_path(), tmp_path) == first
    assert time.perf_counter() - begin < 2
    mine, shared = (
        load_file(first / "model.safetensors"),
        load_file(smollm2_dir / "model.safetensors"),
    )
    assert mine.keys() == shared.keys()
    assert all(mine[k].equal(shared[k]) for k in mine)
