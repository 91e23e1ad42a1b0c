"""The policy being trained: model, AdamW, learning-rate schedule, forward passes and one step.

Rules:
- LoRA (``lora``): peft adapters are injected into the model in place and only they are
  trained (optimizer and gradient clipping see trainable parameters only); ``state_dict``,
  what a version publishes, is then the adapter alone (``areal_flow.train.lora``).
- Parameters and optimizer state stay fp32. With ``bf16`` the decoder runs under bf16 autocast
  (CPU and GPU); the LM head always runs in fp32 on the response positions only: importance
  ratios are differences of log-probs, and bf16 logits (3 significant digits) would put ~5 %
  noise on every ratio. Prompt positions never reach the head.
- Sequences are packed without padding into micro-batches (``ffd_micro_batches`` under
  ``micro_batch_tokens``) and run as one row with restarting ``position_ids`` (see
  ``areal_flow.rl.packing``) under varlen attention (``areal_flow.train.attention``: each
  sequence attends to itself only, at Σ Lᵢ² cost instead of a masked N²). π_prox and the
  update use the same micro-batches, so with unchanged weights the two forward passes agree
  bit for bit (u = 1 exactly).
- ``share_prompts``: responses with the same prompt in one micro-batch share a single copy of
  it (``areal_flow.rl.prompt_tree``); a group of n then costs p + Σ rᵢ positions, not n·p + Σ rᵢ.
  The model function is unchanged; only the work is.
- Gradient accumulation: every micro-batch loss is divided by the whole minibatch's count (loss
  tokens for ``token`` aggregation, sequences with a loss token for ``sequence``), so the summed
  gradient is that of the minibatch loss, whatever the packing.
- One ``train_step`` is one optimizer step: clip the global gradient norm, AdamW, scheduler.
  A non-finite gradient (NaN/inf norm) never reaches the weights: the AdamW update is skipped
  (the scheduler still advances, so the learning rate stays tied to the step number), the step
  reports ``skipped = 1``, and ``optimizer.max_bad_steps`` skipped steps in a row raise
  ``NonFiniteGradients`` — a run whose gradients stay broken stops with that message.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from areal_flow.train.batch import Sequence
from areal_flow.train.lora import adapter_state

if TYPE_CHECKING:
    from areal_flow.train.algo import DecoupledPPO, Optimizer
    from areal_flow.train.lora import LoraConfig

PPO_MEAN_METRICS = ("clip_frac", "ratio_mean", "iw_mean", "iw_capped_frac", "kl_behav_k3")
OPTIM_DIR = "optim"  # a checkpoint's sharded optimizer state (torch.distributed.checkpoint)


class NonFiniteGradients(RuntimeError):
    """Too many optimizer steps in a row had a NaN or infinite gradient."""


def lr_factor(warmup: int, schedule: str, total: int) -> Callable[[int], float]:
    """Multiplier of the peak learning rate at optimizer step ``s`` (0-based)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class Policy:
    """An HF causal LM with its optimizer; forward passes on packed sequences."""

    def __init__(
        self,
        model_dir: Path,
        *,
        optimizer: Optimizer,
        total_steps: int,
        device: str = "cpu",
        bf16: bool = True,
        temperature: float = 1.0,
        micro_batch_tokens: int = 4096,
        share_prompts: bool = True,
        lora: LoraConfig | None = None,
    ) -> None:
        import torch

        from areal_flow.models import load_causal_lm
        from areal_flow.train.attention import register
        from areal_flow.train.lora import attach as attach_lora

        self.device = torch.device(device)
        self.temperature = temperature
        self.micro_batch_tokens = micro_batch_tokens
        self.share_prompts = share_prompts
        self.grad_clip = optimizer.grad_clip
        self.max_bad_steps = optimizer.max_bad_steps
        self.bad_in_a_row = 0  # consecutive steps skipped for a non-finite gradient
        self.skipped_steps = 0
        self.model = load_causal_lm(model_dir, dtype=torch.float32, attn_implementation=register())
        # LoRA: adapters injected into ``model`` in place; ``peft`` wraps it for saving.
        self.peft = attach_lora(self.model, lora) if lora is not None else None
        self.model.to(self.device)
        self.model.train()
        self.head = self.model.get_output_embeddings()
        if self.head is None:
            raise ValueError(f"model in {model_dir} has no output embeddings (not a causal LM)")
        self.scorer = Scorer(self.model, bf16)
        self._shard()  # a sharded policy wraps the model here, before the optimizer sees it
        # fused: one kernel over all tensors; on CPU the default per-tensor loop took 420 ms a
        # step for SmolLM2-135M on one thread, fused 91 ms (bench/optimizer.py), the same
        # AdamW update
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=optimizer.lr,
            betas=optimizer.betas,
            weight_decay=optimizer.weight_decay,
            fused=True,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(optimizer.warmup_steps, optimizer.schedule, total_steps)
        )

    @property
    def bf16(self) -> bool:
        """bf16 autocast of the decoder: the scorer's switch, so that setting it here (as
        bench/trainer.py does between rows) changes what the next step computes."""
        return bool(self.scorer.bf16)

    @bf16.setter
    def bf16(self, on: bool) -> None:
        self.scorer.bf16 = on

    def _shard(self) -> None:
        """Wrap the model for several ranks (``ShardedPolicy``); one process keeps it whole."""

    # -- forward ----------------------------------------------------------------------------

    def micro_batches(self, seqs: list[Sequence]) -> list[list[int]]:
        from areal_flow.rl import ffd_micro_batches, prompt_tree_micro_batches

        if not self.share_prompts:
            lengths = [int(s.tokens.numel()) for s in seqs]
            return ffd_micro_batches(lengths, self.micro_batch_tokens)
        return prompt_tree_micro_batches(
            [tuple(s.tokens[: s.prompt_len].tolist()) for s in seqs],
            [s.prompt_len for s in seqs],
            [s.response_len for s in seqs],
            self.micro_batch_tokens,
        )

    def response_logits(self, seqs: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 logits [M, V] at the positions scoring each response token, and those tokens."""
        import torch

        from areal_flow.rl import pack_prompt_tree, pack_sequences

        if self.share_prompts:
            tree = pack_prompt_tree(
                [(s.tokens[: s.prompt_len], s.tokens[s.prompt_len :]) for s in seqs]
            )
            ids, positions = tree.input_ids, tree.position_ids
            index = torch.cat(tree.scoring)
            targets = torch.cat([s.tokens[s.prompt_len :] for s in seqs])
        else:
            packed = pack_sequences([s.tokens for s in seqs])
            ids, positions = packed.input_ids, packed.position_ids
            starts = packed.cu_seqlens[:-1].tolist()
            index = torch.cat(
                [
                    torch.arange(start + s.prompt_len - 1, start + int(s.tokens.numel()) - 1)
                    for start, s in zip(starts, seqs, strict=True)
                ]
            )
            targets = ids[0, index + 1]
        logits = self.scorer(ids.to(self.device), positions.to(self.device), index.to(self.device))
        return logits, targets.to(self.device)

    def response_logprobs(self, seqs: list[Sequence]) -> tuple[list[torch.Tensor], list[float]]:
        """Per sequence: log π(response tokens) [R] (fp32, CPU) and mean entropy; no gradient."""
        import torch

        from areal_flow.rl import token_entropy, token_logprobs

        logprobs: list[torch.Tensor] = [torch.zeros(0)] * len(seqs)
        entropy: list[float] = [0.0] * len(seqs)
        bins = self._nonempty_bins(seqs)
        passes = self._agree_passes(len(bins))
        with torch.no_grad():
            for bin_ in bins:
                group = [seqs[i] for i in bin_]
                logits, targets = self.response_logits(group)
                logp = token_logprobs(logits, targets, self.temperature).cpu()
                ent = token_entropy(logits, self.temperature).cpu()
                lens = [s.response_len for s in group]
                for i, lp, en in zip(
                    bin_, torch.split(logp, lens), torch.split(ent, lens), strict=True
                ):
                    logprobs[i] = lp
                    sampled = en[seqs[i].sampled]  # inserted tokens were not drawn from π
                    entropy[i] = float(sampled.mean()) if sampled.numel() else 0.0
            self._pad_passes(passes - len(bins), backward=False)
        return logprobs, entropy

    def _nonempty_bins(self, seqs: list[Sequence]) -> list[list[int]]:
        """The micro-batches, each without its empty responses; empty ones dropped."""
        bins = [[i for i in b if seqs[i].response_len > 0] for b in self.micro_batches(seqs)]
        return [b for b in bins if b]

    def _agree_passes(self, passes: int) -> int:
        """How many forward passes this step runs: its own (a sharded policy: the most of
        any rank's, agreed before the first pass)."""
        return passes

    def _pad_passes(self, count: int, backward: bool) -> None:
        """A sharded policy runs ``count`` empty passes here, so every rank runs as many; one
        process never has any."""

    # -- update -----------------------------------------------------------------------------

    def train_step(
        self, seqs: list[Sequence], algo: DecoupledPPO, prox_from_forward: bool = False
    ) -> dict[str, float]:
        """One optimizer step on a minibatch with gradient accumulation; returns its metrics.

        ``prox_from_forward``: π_prox is the policy before this update, i.e. this forward pass
        detached — exact when the batch has a single minibatch (K = 1), and it saves the
        separate π_prox pass. Entropy is then measured here too.
        """
        began = time.perf_counter()
        totals = self._accumulate(seqs, algo, loss_denominator(seqs, algo), prox_from_forward)
        return self._optimizer_step(totals, batch_counts(seqs), began)

    def _accumulate(
        self, seqs: list[Sequence], algo: DecoupledPPO, denominator: float, prox: bool
    ) -> _MetricSum:
        """Zero the gradients, then add every micro-batch's (the minibatch loss's) gradient."""
        self.optimizer.zero_grad(set_to_none=True)
        totals = _MetricSum()
        bins = self._nonempty_bins(seqs)
        passes = self._agree_passes(len(bins))
        for bin_ in bins:
            loss, metrics = self._micro_loss([seqs[i] for i in bin_], algo, denominator, prox)
            self._backward(loss)
            totals.add(float(loss.detach()), metrics)
        self._pad_passes(passes - len(bins), backward=True)
        return totals

    def _backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def _grad_norm(self) -> float:
        import torch

        trainable = [p for p in self.model.parameters() if p.requires_grad]  # LoRA: adapters
        return float(torch.nn.utils.clip_grad_norm_(trainable, self.grad_clip))

    def _optimizer_step(
        self, totals: _MetricSum, counts: dict[str, float], began: float
    ) -> dict[str, float]:
        """Clip, AdamW (unless the gradient is not finite), scheduler; the step's metrics."""
        grad_norm = self._grad_norm()
        lr = float(self.scheduler.get_last_lr()[0])
        finite = math.isfinite(grad_norm)
        self._count_bad(finite, grad_norm)
        if finite:
            self.optimizer.step()
            self.scheduler.step()
        else:  # nothing of this step may reach the weights (the gradients are kept otherwise)
            self.optimizer.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # "scheduler before optimizer": skipped on purpose
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()
        elapsed = time.perf_counter() - began
        return {
            **totals.result(),
            "grad_norm": grad_norm,
            "skipped": float(not finite),
            "skipped_steps": float(self.skipped_steps),
            "lr": lr,
            "step_s": elapsed,
            **counts,
            "tokens_per_s": counts["tokens"] / elapsed,
        }

    def _count_bad(self, finite: bool, grad_norm: float) -> None:
        if finite:
            self.bad_in_a_row = 0
            return
        self.bad_in_a_row += 1
        self.skipped_steps += 1
        if self.bad_in_a_row >= self.max_bad_steps:
            raise NonFiniteGradients(
                f"the gradient norm was {grad_norm} (not finite) in {self.bad_in_a_row} optimizer "
                "steps in a row, so each was skipped; stopping. Lower optimizer.lr, check the "
                "rewards and advantages for NaN/inf, or raise optimizer.max_bad_steps."
            )

    def _micro_loss(
        self, group: list[Sequence], algo: DecoupledPPO, denominator: float, prox_from_forward: bool
    ) -> tuple[torch.Tensor, dict[str, float]]:
        import torch

        from areal_flow.rl import decoupled_ppo_loss, token_entropy, token_logprobs

        logits, targets = self.response_logits(group)
        logp = token_logprobs(logits, targets, self.temperature)
        lens = torch.tensor([s.response_len for s in group])
        mask = torch.cat([s.loss_mask for s in group])
        if prox_from_forward:
            prox = logp.detach()
            sampled = torch.cat([s.sampled for s in group]).to(self.device)
            with torch.no_grad():
                token_ent = token_entropy(logits.detach(), self.temperature)[sampled]
                entropy = float(token_ent.mean()) if token_ent.numel() else 0.0
        else:
            prox = torch.cat([s.prox for s in group]).to(self.device)
        loss, metrics = decoupled_ppo_loss(
            logp,
            prox,
            torch.cat([s.behav for s in group]).to(self.device),
            torch.tensor([s.advantage for s in group], device=self.device),
            mask.to(self.device),
            eps_low=algo.eps_low,
            eps_high=algo.eps_high,
            iw_cap=algo.iw_cap,
            iw_cap_mode=algo.iw_cap_mode,
            aggregation=algo.aggregation,
            segment_ids=torch.repeat_interleave(torch.arange(len(group)), lens).to(self.device),
            denominator=denominator,
        )
        if prox_from_forward:
            metrics["entropy"] = entropy
        return loss, metrics

    # -- state ------------------------------------------------------------------------------

    sharded = False  # one process: the checkpoint holds the model and optimizer whole

    def close(self) -> None:
        """Release what the policy holds beyond memory (a sharded policy: its ranks)."""

    def abort(self) -> None:
        """Stop at once after a failure (a sharded policy: kill its ranks); any thread."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What a version publishes: the model's HF state dict (parameter names as
        ``model.state_dict()``), or with LoRA the adapter only (peft's names)."""
        if self.peft is not None:
            return adapter_state(self.peft)
        return dict(self.model.state_dict())

    def train_state(self) -> dict[str, Any]:
        """Optimizer and scheduler state (tensors + plain values) for checkpoints."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "skipped_steps": self.skipped_steps,
            "bad_in_a_row": self.bad_in_a_row,
        }

    def load_train_state(self, state: dict[str, Any], folder: Path | None = None) -> None:
        """Restore ``train_state()``; the optimizer from ``state`` or, for a checkpoint of
        several ranks, from its sharded ``optim`` folder (resharded to this one process)."""
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        elif folder is not None and (folder / OPTIM_DIR).is_dir():
            load_sharded_optimizer(self.model, self.optimizer, folder / OPTIM_DIR)
        else:
            raise ValueError(f"checkpoint {folder} holds no optimizer state")
        self.scheduler.load_state_dict(state["scheduler"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.bad_in_a_row = int(state.get("bad_in_a_row", 0))


def loss_denominator(seqs: list[Sequence], algo: DecoupledPPO) -> float:
    """What every micro-batch loss is divided by: the minibatch's loss tokens (``token``
    aggregation) or sequences with a loss token (``sequence``), at least 1."""
    loss_tokens = sum(s.loss_tokens for s in seqs)
    with_loss = sum(1 for s in seqs if s.loss_tokens > 0)
    return float(max(1, loss_tokens if algo.aggregation == "token" else with_loss))


def batch_counts(seqs: list[Sequence]) -> dict[str, float]:
    return {
        "sequences": float(len(seqs)),
        "tokens": float(sum(int(s.tokens.numel()) for s in seqs)),
        "loss_tokens": float(sum(s.loss_tokens for s in seqs)),
    }


def load_sharded_optimizer(
    model: Any, optimizer: Any, path: Path, process_group: Any | None = None
) -> None:
    """Load optimizer state written by ``torch.distributed.checkpoint`` (any rank count) into
    ``optimizer``: every rank of ``process_group`` together, or one process alone (None)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": yes
        warnings.simplefilter("ignore", UserWarning)
        no_dist = process_group is None
        dcp.load(state, checkpoint_id=str(path), process_group=process_group, no_dist=no_dist)
    set_optimizer_state_dict(model, optimizer, state["optimizer"])


class Scorer(torch.nn.Module):
    """The decoder under bf16 autocast, then the LM head in fp32 on the scoring positions only:
    one module, so a sharded model gathers and frees its parameters around one call."""

    def __init__(self, model: Any, bf16: bool) -> None:
        super().__init__()
        self.model = model
        self.bf16 = bf16

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, index: torch.Tensor) -> Any:
        device = ids.device.type
        with torch.autocast(device, dtype=torch.bfloat16, enabled=self.bf16):
            hidden = self.model.base_model(
                input_ids=ids, position_ids=positions, use_cache=False
            ).last_hidden_state
        with torch.autocast(device, enabled=False):
            return self.model.get_output_embeddings()(hidden[0, index].float())


class _MetricSum:
    """Token-weighted means of the loss metrics over micro-batches; max of the max."""

    def __init__(self) -> None:
        self.loss = 0.0
        self.tokens = 0.0
        self.sums = dict.fromkeys(PPO_MEAN_METRICS, 0.0)
        self.iw_max = 0.0

    def add(self, loss: float, metrics: dict[str, float]) -> None:
        self.loss += loss
        n = metrics["tokens"]
        self.tokens += n
        for name in (*PPO_MEAN_METRICS, "entropy"):
            if name in metrics:
                self.sums[name] = self.sums.get(name, 0.0) + metrics[name] * n
        self.iw_max = max(self.iw_max, metrics["iw_max"])

    def result(self) -> dict[str, float]:
        means = {name: total / max(self.tokens, 1.0) for name, total in self.sums.items()}
        return {"loss": self.loss, **means, "iw_max": self.iw_max}
