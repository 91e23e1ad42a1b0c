"""Trainer throughput: packed (sorted FFD) vs padded micro-batches, fp32 vs bf16 autocast; and
the cost of publishing weights and writing a checkpoint.

Usage: ``python bench/trainer.py [--seqs 32] [--group 8] [--mix longtail|arithmetic]
[--budget 4096] [--rounds 3] [--threads 1] [--modes shared packed padded] [--dtypes fp32 bf16]``

Model: SmolLM2-135M-Instruct (``prepare_model("smollm2")``, fp32 parameters). Batch: ``--seqs``
trajectories in groups of ``--group`` that share a prompt (40–120 tokens), with long-tailed
responses like RL rollouts (mostly 30–200 tokens, one in eight 400–900), in arrival order (whole
groups, as the generator emits them); ``--mix arithmetic`` uses graphs/math_rl.py's shapes
instead (prompts 50–65 tokens, responses 15–96). The defaults are the trainer's: a 4096-token
micro-batch budget, and B = 4 groups × 8 as in graphs/math_rl.py. Each timed step is one
optimizer step of the decoupled PPO loss over the whole batch (forward, backward, AdamW);
tokens/s counts the batch's real tokens (every sequence whole, unpadded) in every mode.

Modes (all with the same loss, the same fp32 head on response positions, the same budget):

- shared: the trainer's default path (``Policy.train_step``, ``share_prompts``): packed, and
  each group's prompt enters the row once, shared by its responses (a prompt tree);
- packed: the same with every sequence packed whole (``share_prompts=False``): sorted
  first-fit-decreasing bins under the budget, each bin one row without padding, varlen attention;
- padded: what a padded trainer does: sequences in arrival order, a micro-batch grows while its
  padded size (rows × its longest sequence) stays within the budget, right-padded, plain
  ``sdpa`` with the attention mask (the goal's baseline);
- padded-sorted: the same after sorting by length (a length-grouping sampler): little padding,
  i.e. what packing adds beyond sorting;
- padded-fixed: a fixed micro-batch size sized for the worst case, budget // longest rows.

Measurement: one ``Policy`` (``bf16`` only switches autocast), a warm-up step per mode first,
then ``--rounds`` rounds that run every (dtype, mode) once in an order rotated each round, so
slow phases of a shared machine hit every row alike. Per step both the process CPU time and the
wall time are taken; with ``--threads 1`` CPU time is the time on one core, immune to other
processes taking the core away, and is the primary figure. Ratios are medians over rounds of
the per-round ratios.

Publish: ``publish_weights`` of the model to /dev/shm, synchronously (write, blake3, rename:
trainer state → file ready; the trainer itself publishes in the background, see
bench/weights.py) and the publisher's ``verify_weights``; checkpoint: ``save_checkpoint``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from areal_flow.models import prepare_model
from areal_flow.rl import decoupled_ppo_loss, token_logprobs
from areal_flow.train.algo import DecoupledPPO, Optimizer
from areal_flow.train.batch import Sequence
from areal_flow.train.checkpoint import save_checkpoint
from areal_flow.train.policy import Policy
from areal_flow.train.weights import SHM_ROOT, publish_weights, verify_weights

MODES = ("shared", "packed", "padded", "padded-sorted", "padded-fixed")


def length_mix(n: int, group: int, seed: int, kind: str = "longtail") -> list[tuple[int, int]]:
    """(prompt, response) lengths, a prompt per group. ``longtail``: prompts 40–120, responses
    30–200 and one in eight 400–900; ``arithmetic``: graphs/math_rl.py's shapes, prompts 50–65
    and responses 15–96 (its max_tokens)."""
    gen = torch.Generator().manual_seed(seed)

    def draw(low: int, high: int) -> int:
        return int(torch.randint(low, high, (1,), generator=gen))

    arithmetic = kind == "arithmetic"
    mix = []
    prompt = 0
    for i in range(n):
        if i % group == 0:
            prompt = draw(50, 66) if arithmetic else draw(40, 120)
        if arithmetic:
            mix.append((prompt, draw(15, 97)))
        else:
            mix.append((prompt, draw(400, 900) if i % 8 == 3 else draw(30, 200)))
    return mix


def make_sequences(
    policy: Policy, mix: list[tuple[int, int]], group: int, seed: int
) -> list[Sequence]:
    """Random tokens in the ``mix`` lengths; the ``group`` responses of a prompt share it."""
    gen = torch.Generator().manual_seed(seed)
    raw = []
    prompt_ids = torch.zeros(0, dtype=torch.long)
    for i, (prompt, response) in enumerate(mix):
        if i % group == 0:
            prompt_ids = torch.randint(100, 20000, (prompt,), generator=gen)
        answer = torch.randint(100, 20000, (response,), generator=gen)
        tokens = torch.cat([prompt_ids, answer])
        zeros = torch.zeros(response)
        sampled = torch.ones(response, dtype=torch.bool)
        raw.append(Sequence(tokens, prompt, zeros, zeros, 0.0, True, sampled))
    prox, _ = policy.response_logprobs(raw)  # realistic ratios: π_θ starts at π_prox = π_behav
    return [
        Sequence(s.tokens, s.prompt_len, p, p, (-1.0) ** i, True, s.sampled)
        for i, (s, p) in enumerate(zip(raw, prox, strict=True))
    ]


def padded_micro_batches(lengths: list[int], budget: int, order: list[int]) -> list[list[int]]:
    """In ``order``; a micro-batch grows while rows × longest stays within ``budget``."""
    bins: list[list[int]] = [[]]
    longest = 0
    for i in order:
        if bins[-1] and (len(bins[-1]) + 1) * max(longest, lengths[i]) > budget:
            bins.append([])
            longest = 0
        bins[-1].append(i)
        longest = max(longest, lengths[i])
    return bins


def micro_batches(policy: Policy, seqs: list[Sequence], mode: str, budget: int) -> list[list[int]]:
    lengths = [int(s.tokens.numel()) for s in seqs]
    arrival = list(range(len(seqs)))
    if mode in ("packed", "shared"):
        policy.share_prompts = mode == "shared"
        return policy.micro_batches(seqs)
    if mode == "padded":
        return padded_micro_batches(lengths, budget, arrival)
    if mode == "padded-sorted":
        return padded_micro_batches(lengths, budget, sorted(arrival, key=lambda i: -lengths[i]))
    rows = max(1, budget // max(lengths))
    return [arrival[i : i + rows] for i in range(0, len(seqs), rows)]


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


def one_step(policy: Policy, seqs: list[Sequence], mode: str, budget: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one optimizer step in ``mode``."""
    algo = DecoupledPPO()
    cpu, wall = time.process_time(), time.perf_counter()
    if mode in ("packed", "shared"):
        policy.share_prompts = mode == "shared"
        policy.train_step(seqs, algo)
    else:
        padded_train_step(policy, seqs, algo, micro_batches(policy, seqs, mode, budget))
    return time.process_time() - cpu, time.perf_counter() - wall


def bench_steps(model: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    policy = Policy(
        model,
        optimizer=Optimizer(lr=1e-7),
        total_steps=1000,
        bf16=False,
        micro_batch_tokens=args.budget,
    )
    seqs = make_sequences(
        policy, length_mix(args.seqs, args.group, 1, args.mix), args.group, seed=1
    )
    tokens = sum(int(s.tokens.numel()) for s in seqs)
    cases = [(dtype, mode) for dtype in args.dtypes for mode in args.modes]
    for dtype, mode in cases[: len(args.modes)]:  # warm-up: optimizer state, allocator
        policy.bf16 = dtype == "bf16"
        one_step(policy, seqs, mode, args.budget)
    times: dict[tuple[str, str], list[tuple[float, float]]] = {case: [] for case in cases}
    for r in range(args.rounds):
        shift = r % len(cases)
        for dtype, mode in cases[shift:] + cases[:shift]:
            policy.bf16 = dtype == "bf16"
            times[(dtype, mode)].append(one_step(policy, seqs, mode, args.budget))
            cpu, wall = times[(dtype, mode)][-1]
            print(f"[bench] round {r} {mode:13} {dtype}: cpu {cpu:.1f} s, wall {wall:.1f} s",
                  flush=True)  # fmt: skip
    rows = []
    for dtype, mode in cases:
        bins = micro_batches(policy, seqs, mode, args.budget)
        padded = sum(len(b) * max(int(seqs[i].tokens.numel()) for i in b) for b in bins)
        rows.append(
            {
                "mode": mode,
                "dtype": dtype,
                "micro": len(bins),
                "pad": 0.0 if mode in ("packed", "shared") else padded / tokens - 1,
                "times": times[(dtype, mode)],
                "tokens": tokens,
            }
        )
    return rows


def paired_ratio(slow: list[tuple[float, float]], fast: list[tuple[float, float]], k: int) -> float:
    """Median over rounds of slow/fast time (clock ``k``: 0 = CPU, 1 = wall)."""
    return statistics.median(s[k] / f[k] for s, f in zip(slow, fast, strict=True))


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


def print_tables(rows: list[dict[str, Any]], pub: dict[str, float] | None) -> None:
    by_case = {(r["dtype"], r["mode"]): r["times"] for r in rows}
    tokens, rounds = rows[0]["tokens"], len(rows[0]["times"])
    print(f"\ntraining step, {tokens} real tokens, median of {rounds} interleaved rounds")
    print(f"{'mode':13} {'dtype':9} {'micro':>5} {'pad':>5} {'cpu s':>6} {'tok/s':>6} "
          f"{'wall s':>6} {'vs padded':>9} {'(wall)':>6} {'vs packed':>9} "
          f"{'vs fp32':>7}")  # fmt: skip
    for r in rows:
        times = r["times"]
        cpu = statistics.median(t[0] for t in times)
        wall = statistics.median(t[1] for t in times)
        cells = []
        padded = by_case.get((r["dtype"], "padded"))
        for k in (0, 1):
            cells.append(f"{paired_ratio(padded, times, k):.2f}x" if padded else "-")
        packed = by_case.get((r["dtype"], "packed"))
        cells.append(f"{paired_ratio(packed, times, 0):.2f}x" if packed else "-")
        fp32 = by_case.get(("fp32", r["mode"]))
        cells.append(f"{paired_ratio(fp32, times, 0):.2f}x" if fp32 else "-")
        print(
            f"{r['mode']:13} {r['dtype']:9} {r['micro']:>5} {r['pad']:>5.0%} {cpu:>6.1f} "
            f"{tokens / cpu:>6.0f} {wall:>6.1f} {cells[0]:>9} {cells[1]:>6} {cells[2]:>9} "
            f"{cells[3]:>7}"
        )
    if pub is not None:
        print(
            f"\nweights ({pub['mb']:.0f} MiB fp32): publish to /dev/shm "
            f"{pub['publish'] * 1000:.0f} ms (state → file ready, incl. blake3), verify "
            f"{pub['verify'] * 1000:.0f} ms, checkpoint (HF + optimizer) {pub['ckpt']:.2f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seqs", type=int, default=32, help="trajectories per step")
    parser.add_argument("--group", type=int, default=8, help="trajectories per prompt")
    parser.add_argument("--mix", choices=("longtail", "arithmetic"), default="longtail",
                        help="sequence lengths: long-tailed RL rollouts or math_rl's")  # fmt: skip
    parser.add_argument("--budget", type=int, default=4096, help="micro-batch token budget")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU clock)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES[:3]))
    parser.add_argument("--dtypes", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    parser.add_argument("--skip-publish", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = prepare_model("smollm2")
    rows = bench_steps(model, args)
    pub = None if args.skip_publish else bench_publish(model, args.rounds)
    print_tables(rows, pub)


if __name__ == "__main__":
    main()
