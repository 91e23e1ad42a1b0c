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

from areal_flow.train.batch import Sequence
from areal_flow.train.lora import adapter_state

if TYPE_CHECKING:
    import torch

    from areal_flow.train.algo import DecoupledPPO, Optimizer
    from areal_flow.train.lora import LoraConfig

PPO_MEAN_METRICS = ("clip_frac", "ratio_mean", "iw_mean", "iw_capped_frac", "kl_behav_k3")


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
        self.bf16 = bf16
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
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=optimizer.lr,
            betas=optimizer.betas,
            weight_decay=optimizer.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(optimizer.warmup_steps, optimizer.schedule, total_steps)
        )

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
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            hidden = self.model.base_model(
                input_ids=ids.to(self.device),
                position_ids=positions.to(self.device),
                use_cache=False,
            ).last_hidden_state
        with torch.autocast(self.device.type, enabled=False):
            logits = self.head(hidden[0, index.to(self.device)].float())
        return logits, targets.to(self.device)

    def response_logprobs(self, seqs: list[Sequence]) -> tuple[list[torch.Tensor], list[float]]:
        """Per sequence: log π(response tokens) [R] (fp32, CPU) and mean entropy; no gradient."""
        import torch

        from areal_flow.rl import token_entropy, token_logprobs

        logprobs: list[torch.Tensor] = [torch.zeros(0)] * len(seqs)
        entropy: list[float] = [0.0] * len(seqs)
        with torch.no_grad():
            for bin_ in self.micro_batches(seqs):
                group = [seqs[i] for i in bin_ if seqs[i].response_len > 0]
                if not group:
                    continue
                logits, targets = self.response_logits(group)
                logp = token_logprobs(logits, targets, self.temperature).cpu()
                ent = token_entropy(logits, self.temperature).cpu()
                lens = [s.response_len for s in group]
                for i, lp, en in zip(
                    (i for i in bin_ if seqs[i].response_len > 0),
                    torch.split(logp, lens),
                    torch.split(ent, lens),
                    strict=True,
                ):
                    logprobs[i] = lp
                    entropy[i] = float(en.mean())
        return logprobs, entropy

    # -- update -----------------------------------------------------------------------------

    def train_step(
        self, seqs: list[Sequence], algo: DecoupledPPO, prox_from_forward: bool = False
    ) -> dict[str, float]:
        """One optimizer step on a minibatch with gradient accumulation; returns its metrics.

        ``prox_from_forward``: π_prox is the policy before this update, i.e. this forward pass
        detached — exact when the batch has a single minibatch (K = 1), and it saves the
        separate π_prox pass. Entropy is then measured here too.
        """
        import torch

        began = time.perf_counter()
        loss_tokens = sum(s.loss_tokens for s in seqs)
        with_loss = sum(1 for s in seqs if s.loss_tokens > 0)
        denominator = float(max(1, loss_tokens if algo.aggregation == "token" else with_loss))
        self.optimizer.zero_grad(set_to_none=True)
        totals = _MetricSum()
        for bin_ in self.micro_batches(seqs):
            group = [seqs[i] for i in bin_ if seqs[i].response_len > 0]
            if group:
                loss, metrics = self._micro_loss(group, algo, denominator, prox_from_forward)
                loss.backward()
                totals.add(float(loss.detach()), metrics)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.model.parameters() if p.requires_grad], self.grad_clip
        )
        lr = float(self.scheduler.get_last_lr()[0])
        finite = bool(torch.isfinite(grad_norm))
        self._count_bad(finite, float(grad_norm))
        if finite:
            self.optimizer.step()
            self.scheduler.step()
        else:  # nothing of this step may reach the weights (the gradients are kept otherwise)
            self.optimizer.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # "scheduler before optimizer": skipped on purpose
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()
        elapsed = time.perf_counter() - began
        tokens = sum(int(s.tokens.numel()) for s in seqs)
        return {
            **totals.result(),
            "grad_norm": float(grad_norm),
            "skipped": float(not finite),
            "skipped_steps": float(self.skipped_steps),
            "lr": lr,
            "step_s": elapsed,
            "sequences": float(len(seqs)),
            "tokens": float(tokens),
            "loss_tokens": float(loss_tokens),
            "tokens_per_s": tokens / elapsed,
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
        mask = torch.cat([torch.full((s.response_len,), s.trainable) for s in group])
        if prox_from_forward:
            prox = logp.detach()
            with torch.no_grad():
                entropy = float(token_entropy(logits.detach(), self.temperature).mean())
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

    def load_train_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.bad_in_a_row = int(state.get("bad_in_a_row", 0))


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
