"""Trainer throughput: packed (sorted FFD) vs padded micro-batches, fp32 vs bf16 autocast; and
the cost of publishing weights and writing a checkpoint.

Usage: ``python bench/trainer.py [--seqs 16] [--budget 2048] [--rounds 2] [--threads N]``

Model: SmolLM2-135M-Instruct (``prepare_model("smollm2")``, fp32 parameters). Batch: ``--seqs``
trajectories with a long-tailed length mix like RL rollouts (prompts 40–120 tokens; responses
mostly 30–200 tokens, one in eight 400–900 tokens), in arrival order. Each row is one optimizer
step of the decoupled PPO loss over the whole batch (forward, backward, AdamW), best of
``--rounds``; tokens/s counts real (non-pad) tokens.

- packed: the trainer's own path (``Policy.train_step``): sorted first-fit-decreasing bins under
  ``--budget`` tokens, each bin one packed row without padding;
- padded: sequences in arrival order, greedily cut into micro-batches whose padded size
  (rows × longest) stays within the budget (an adaptive padded baseline), right-padded with an
  attention mask. Same loss, same fp32 head on response positions;
- padded-fixed: the common fixed micro-batch size, sized for the worst case so it fits the
  budget: budget // (longest sequence of the batch) rows per micro-batch, arrival order.

Publish: ``publish_weights`` of the model to /dev/shm (serialise, sha256, write, rename: trainer
state → file ready) and the publisher's ``verify_weights``; checkpoint: ``save_checkpoint``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from areal_flow.models import prepare_model
from areal_flow.rl import decoupled_ppo_loss, token_logprobs
from areal_flow.train.batch import Sequence
from areal_flow.train.checkpoint import save_checkpoint
from areal_flow.train.policy import Policy
from areal_flow.train.weights import SHM_ROOT, publish_weights, verify_weights
from nodes.trainer import DecoupledPPO, Optimizer


def length_mix(n: int, seed: int) -> list[tuple[int, int]]:
    """(prompt, response) lengths with a long tail: one in eight responses is 400–900 tokens."""
    gen = torch.Generator().manual_seed(seed)

    def draw(low: int, high: int) -> int:
        return int(torch.randint(low, high, (1,), generator=gen))

    return [(draw(40, 120), draw(400, 900) if i % 8 == 3 else draw(30, 200)) for i in range(n)]


def make_sequences(policy: Policy, n: int, seed: int) -> list[Sequence]:
    gen = torch.Generator().manual_seed(seed)
    raw = []
    for prompt, response in length_mix(n, seed):
        tokens = torch.randint(100, 20000, (prompt + response,), generator=gen)
        zeros = torch.zeros(response)
        raw.append(Sequence(tokens, prompt, zeros, zeros, 0.0, True))
    prox, _ = policy.response_logprobs(raw)  # realistic ratios: π_θ starts at π_prox = π_behav
    return [
        Sequence(s.tokens, s.prompt_len, p, p, (-1.0) ** i, True)
        for i, (s, p) in enumerate(zip(raw, prox, strict=True))
    ]


def padded_micro_batches(seqs: list[Sequence], budget: int) -> list[list[int]]:
    """Arrival order; a micro-batch grows while rows × longest stays within ``budget``."""
    bins: list[list[int]] = [[]]
    longest = 0
    for i, seq in enumerate(seqs):
        length = int(seq.tokens.numel())
        if bins[-1] and (len(bins[-1]) + 1) * max(longest, length) > budget:
            bins.append([])
            longest = 0
        bins[-1].append(i)
        longest = max(longest, length)
    return bins


def fixed_micro_batches(seqs: list[Sequence], budget: int) -> list[list[int]]:
    """Arrival order, budget // longest rows each."""
    rows = max(1, budget // max(int(s.tokens.numel()) for s in seqs))
    return [list(range(i, min(i + rows, len(seqs)))) for i in range(0, len(seqs), rows)]


def padded_train_step(
    policy: Policy, seqs: list[Sequence], algo: DecoupledPPO, bins: list[list[int]]
) -> None:
    """One optimizer step like ``Policy.train_step``, on padded micro-batches ``bins``."""
    device = policy.device
    denominator = float(sum(s.loss_tokens for s in seqs))
    policy.optimizer.zero_grad(set_to_none=True)
    for bin_ in bins:
        group = [seqs[i] for i in bin_]
        width = max(int(s.tokens.numel()) for s in group)
        ids = torch.zeros(len(group), width, dtype=torch.long)
        mask = torch.zeros(len(group), width, dtype=torch.long)
        rows, cols = [], []
        for r, s in enumerate(group):
            ids[r, : s.tokens.numel()] = s.tokens
            mask[r, : s.tokens.numel()] = 1
            positions = torch.arange(s.prompt_len - 1, int(s.tokens.numel()) - 1)
            rows.append(torch.full_like(positions, r))
            cols.append(positions)
        row, col = torch.cat(rows), torch.cat(cols)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=policy.bf16):
            hidden = policy.model.base_model(
                input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False
            ).last_hidden_state
        with torch.autocast(device.type, enabled=False):
            logits = policy.head(hidden[row, col].float())
        logp = token_logprobs(logits, ids[row, col + 1].to(device), policy.temperature)
        lens = torch.tensor([s.response_len for s in group])
        loss, _ = decoupled_ppo_loss(
            logp,
            torch.cat([s.prox for s in group]),
            torch.cat([s.behav for s in group]),
            torch.tensor([s.advantage for s in group]),
            torch.ones_like(logp, dtype=torch.bool),
            segment_ids=torch.repeat_interleave(torch.arange(len(group)), lens),
            denominator=denominator,
        )
        loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.model.parameters(), policy.grad_clip)
    policy.optimizer.step()
    policy.scheduler.step()


def micro_batches(policy: Policy, seqs: list[Sequence], mode: str, budget: int) -> list[list[int]]:
    if mode == "packed":
        return policy.micro_batches(seqs)
    if mode == "padded":
        return padded_micro_batches(seqs, budget)
    return fixed_micro_batches(seqs, budget)


def time_steps(policy: Policy, seqs: list[Sequence], mode: str, budget: int, rounds: int) -> float:
    algo = DecoupledPPO()
    best = float("inf")
    for _ in range(rounds):
        began = time.perf_counter()
        if mode == "packed":
            policy.train_step(seqs, algo)
        else:
            padded_train_step(policy, seqs, algo, micro_batches(policy, seqs, mode, budget))
        best = min(best, time.perf_counter() - began)
    return best


def bench_steps(model: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for bf16 in (False, True):
        policy = Policy(
            model,
            optimizer=Optimizer(lr=1e-7),
            total_steps=100,
            bf16=bf16,
            micro_batch_tokens=args.budget,
        )
        seqs = make_sequences(policy, args.seqs, seed=1)
        tokens = sum(int(s.tokens.numel()) for s in seqs)
        for mode in ("padded-fixed", "padded", "packed"):
            bins = micro_batches(policy, seqs, mode, args.budget)
            padded = sum(len(b) * max(int(seqs[i].tokens.numel()) for i in b) for b in bins)
            seconds = time_steps(policy, seqs, mode, args.budget, args.rounds)
            row = {"mode": mode, "bf16": bf16, "micro": len(bins), "s": seconds}
            row["pad"] = 0.0 if mode == "packed" else padded / tokens - 1
            row["tok_s"] = tokens / seconds
            print(f"[bench] {mode:12} bf16={bf16!s:5} {tokens} tokens {seconds:.2f} s", flush=True)
            rows.append(row)
        del policy
    return rows


def bench_publish(model: Path, rounds: int) -> dict[str, float]:
    policy = Policy(model, optimizer=Optimizer(), total_steps=1, bf16=False)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    root = SHM_ROOT / f"bench-trainer-{os.getpid()}"
    ckpt_root = Path(tempfile.mkdtemp(prefix="bench-trainer-ckpt-"))
    try:
        publish, verify, ckpt = [], [], []
        for version in range(rounds):
            began = time.perf_counter()
            ref = publish_weights(policy.state_dict(), root, version)
            publish.append(time.perf_counter() - began)
            began = time.perf_counter()
            verify_weights(ref.path, ref.checksum)
            verify.append(time.perf_counter() - began)
            began = time.perf_counter()
            save_checkpoint(
                ckpt_root,
                version,
                model=policy.model,
                tokenizer=tokenizer,
                train_state=policy.train_state(),
                meta={"version": version, "trained_ids": [], "next_minibatch": 0},
                tables={},
                keep=1,
            )
            ckpt.append(time.perf_counter() - began)
        size = (Path(ref.path) / "model.safetensors").stat().st_size
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(ckpt_root, ignore_errors=True)
    return {"mb": size / 2**20, "publish": min(publish), "verify": min(verify), "ckpt": min(ckpt)}


def print_tables(rows: list[dict[str, Any]], pub: dict[str, float], tokens: int) -> None:
    base = {(r["mode"], r["bf16"]): r["tok_s"] for r in rows}
    print(f"\ntraining step, {tokens} real tokens, best of rounds")
    print(f"{'mode':13} {'dtype':10} {'micro':>5} {'pad':>5} {'s/step':>7} {'tok/s':>7} "
          f"{'vs padded':>9} {'vs fixed':>8} {'vs fp32':>7}")  # fmt: skip
    for r in rows:
        vs_pad = r["tok_s"] / base[("padded", r["bf16"])]
        vs_fixed = r["tok_s"] / base[("padded-fixed", r["bf16"])]
        vs_fp32 = r["tok_s"] / base[(r["mode"], False)]
        dtype = "bf16-auto" if r["bf16"] else "fp32"
        print(
            f"{r['mode']:13} {dtype:10} {r['micro']:>5} {r['pad']:>5.0%} {r['s']:>7.2f} "
            f"{r['tok_s']:>7.0f} {vs_pad:>8.2f}x {vs_fixed:>7.2f}x {vs_fp32:>6.2f}x"
        )
    print(
        f"\nweights ({pub['mb']:.0f} MiB fp32): publish to /dev/shm {pub['publish'] * 1000:.0f} ms"
        f" (state → file ready, incl. sha256), verify {pub['verify'] * 1000:.0f} ms, "
        f"checkpoint (HF + optimizer) {pub['ckpt']:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seqs", type=int, default=16, help="trajectories per step")
    parser.add_argument("--budget", type=int, default=2048, help="micro-batch token budget")
    parser.add_argument("--rounds", type=int, default=2, help="timed steps per row (best)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = prepare_model("smollm2")
    rows = bench_steps(model, args)
    tokens = sum(p + r for p, r in length_mix(args.seqs, seed=1))
    print_tables(rows, bench_publish(model, args.rounds), tokens)


if __name__ == "__main__":
    main()
