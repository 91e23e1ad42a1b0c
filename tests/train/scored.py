"""Real ``scored`` Arrow batches for trainer tests, with behaviour log-probs from a real model.

Behaviour log-probs are computed one sequence at a time, unpacked, in fp32, with
``log_softmax(logits / T)`` — independently of the trainer's packed path, so comparing the two
checks the packing, the position bookkeeping and the temperature.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import torch

from areal_flow.schema import SCHEMAS


@torch.no_grad()
def behaviour_logprobs(
    model: Any, prompt: list[int], response: list[int], temperature: float = 1.0
) -> list[float]:
    ids = torch.tensor([prompt + response])
    logits = model(input_ids=ids).logits[0].float() / temperature
    logp = logits.log_softmax(-1)[len(prompt) - 1 : -1]
    return logp.gather(-1, torch.tensor(response)[:, None])[:, 0].tolist()


def scored_group(
    model: Any,
    group_id: str,
    rewards: Sequence[float],
    *,
    seed: int,
    prompt_len: int = 6,
    response_lens: Sequence[int] | None = None,
    finish_reasons: Sequence[str] | None = None,
    temperature: float = 1.0,
    version: int = 0,
) -> pa.RecordBatch:
    """One prompt group: a random prompt, random responses, rewards as given."""
    gen = torch.Generator().manual_seed(seed)
    n = len(rewards)
    lens = list(response_lens or [5 + (3 * i) % 11 for i in range(n)])
    prompt = torch.randint(100, 1000, (prompt_len,), generator=gen).tolist()
    rows = []
    for i in range(n):
        response = torch.randint(100, 1000, (lens[i],), generator=gen).tolist()
        rows.append(
            {
                "prompt_id": group_id.split(":")[-1],
                "group_id": group_id,
                "group_size": n,
                "epoch": 0,
                "level": "test",
                "prompt": "p",
                "prompt_token_ids": prompt,
                "answer": "1",
                "sample_index": i,
                "response": "r",
                "response_token_ids": response,
                "logprobs": behaviour_logprobs(model, prompt, response, temperature),
                "versions": [version] * len(response),
                "finish_reason": (finish_reasons or ["stop"] * n)[i],
                "loss_mask": [1] * len(response),
                "episode_metrics": [],
                "reward": float(rewards[i]),
                "verdict": "correct" if rewards[i] > 0 else "wrong",
                "metrics": [("correct", float(rewards[i] > 0)), ("format_ok", 1.0)],
            }
        )
    return pa.RecordBatch.from_pylist(rows, schema=SCHEMAS["scored"])


def load_model(model_dir: Any) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
