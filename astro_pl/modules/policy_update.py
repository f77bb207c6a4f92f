"""The RL update of one rollout batch: the policy's log-probs of the response tokens, the loss of one micro-batch,
and the loop of optimiser steps. `RLModule` builds a `PolicyForward` and calls `policy_update`; nothing here knows
about Lightning beyond the `backward` function it is handed.

Log-probs come from the last hidden states and the LM head's weight (`linear_logprobs_and_entropy`, run in place
of the head by `head_output`), at the response positions only: the [tokens x vocabulary] logits never exist, and
prompt positions are never scored. With
`grpo.pack_sequences` a micro-batch's sequences are packed into rows (the SFT packing) instead of right-padded.

The loss of a token: PPO's clipped surrogate (token or GSPO sequence ratio), times token- and sequence-level
importance weights against the engine's log-probs, minus an entropy bonus, plus beta times a KL estimate; the
aggregation's normalisers are counted over the whole mini-batch and all ranks, so any split into micro-batches
(and ranks) gives the same gradient. Every rank runs the same number of micro-batches (FSDP's collectives run in
lockstep), and statistics stay on the device until one transfer at the end.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import NamedTuple

import torch

from astro_pl.datamodules.packing import pack_sequences
from astro_pl.modules.advantages import group_advantages
from astro_pl.modules.collectives import all_reduce_scalar
from astro_pl.modules.experience import Experience, Group, pack_experience, plan_micro_batches
from astro_pl.modules.grpo_args import GRPOArgs
from astro_pl.modules.lm_head import head_output
from astro_pl.modules.logprobs import linear_logprobs_and_entropy
from astro_pl.modules.losses import (
    aggregate_loss,
    clipped_ratio_loss,
    entropy_bonus,
    kl_estimate,
    masked_mean,
    sequence_is_weights,
    truncated_is_weights,
)


class UpdateFailure(RuntimeError):
    """A non-finite loss or gradient norm; raised before the optimiser step that would have applied it."""

    def __init__(self, message: str, optimizer_steps: int) -> None:
        super().__init__(message)
        self.optimizer_steps = optimizer_steps
        """Optimiser steps already taken in this update."""


class UpdateScale(NamedTuple):
    """What turns summed token losses into the batch's loss."""

    constant_normalizer: float
    """Per-sequence constant of "constant" aggregation."""
    world_size: int
    """Ranks whose gradients FSDP/DDP average (the loss is scaled up by it to give the global mean)."""


class MicroBatchStats(NamedTuple):
    """Statistics of one micro-batch, as 0-d device tensors (None where the term is off)."""

    loss: torch.Tensor
    """This micro-batch's part of the mini-batch loss on this rank."""
    clip_low: torch.Tensor
    """Fraction of counted tokens at the lower clip bound."""
    clip_high: torch.Tensor
    """Fraction of counted tokens at the upper clip bound."""
    entropy: torch.Tensor
    """Mean policy entropy at the counted tokens."""
    ratio_mean: torch.Tensor
    """Mean pi / pi_old over counted tokens."""
    ratio_max: torch.Tensor
    """Largest pi / pi_old (0 when nothing is counted)."""
    kl: torch.Tensor | None
    """Mean KL estimate to the reference."""
    is_weight_mean: torch.Tensor | None
    """Mean importance weight (token cap times sequence weight)."""
    engine_logp_gap: torch.Tensor | None
    """Mean |trainer - engine| log-prob before the first optimiser step: the sampler's off-policy gap."""


@dataclasses.dataclass
class PolicyForward:
    """Log-probs and entropies of a micro-batch's counted response tokens under `model`.

    Args:
        model: A Hugging Face causal LM (also under peft or FSDP2) whose LM head is a plain Linear.
        temperature: The sampling temperature (log-probs match the sampler's distribution); 0 counts as 1.
        autocast_dtype: Compute dtype applied by autocast; None runs in the stored dtype (or FSDP2's policy).
        packed: Pack the micro-batch's sequences into rows instead of right-padding them.
        pad_id: Token id of the padding after the last sequence of a packed row.
    """

    model: torch.nn.Module
    temperature: float = 1.0
    autocast_dtype: torch.dtype | None = None
    packed: bool = False
    pad_id: int = 0

    def __call__(self, mb: Experience) -> tuple[torch.Tensor, torch.Tensor]:
        """[n, L-1] log-probs and entropies at the counted positions of `mb.response_mask`, 0 elsewhere.

        Right-padded rows need no attention mask: causal attention keeps real tokens from seeing padding, and a
        mask would force SDPA off its causal kernel. Packed rows get position ids that restart per sequence.
        """
        device = mb.input_ids.device
        rows, cols = mb.response_mask.nonzero(as_tuple=True)  # [M] counted shifted positions
        labels = mb.input_ids[rows, cols + 1]
        if self.packed:
            lengths, ids = mb.attention_mask.sum(1).tolist(), mb.input_ids.cpu()  # one transfer
            batch, where = pack_sequences([ids[i, :n] for i, n in enumerate(lengths)], self.pad_id)
            inputs = {"input_ids": batch["input_ids"].to(device), "position_ids": batch["position_ids"].to(device)}
            where = where.to(device)
            hidden_rows, hidden_cols = where[rows, 0], where[rows, 1] + cols
        else:
            inputs = {"input_ids": mb.input_ids}
            hidden_rows, hidden_cols = rows, cols
        temperature = self.temperature if self.temperature > 0 else 1.0

        def logprobs(hidden, weight, bias):
            return torch.stack(linear_logprobs_and_entropy(hidden, weight, labels, temperature, bias))  # [2, M]

        # nullcontext, not autocast(enabled=False), which would switch off a Trainer's bf16-mixed autocast
        cast = torch.autocast(device.type, dtype=self.autocast_dtype) if self.autocast_dtype else nullcontext()
        with cast:
            logp, entropy = head_output(self.model, logprobs, hidden_rows, hidden_cols, **inputs)
        zeros = torch.zeros(mb.response_mask.shape, dtype=torch.float32, device=device)
        return zeros.index_put((rows, cols), logp), zeros.index_put((rows, cols), entropy)


def build_experience(groups: Sequence[Group], grpo: GRPOArgs, pad_id: int, device: torch.device) -> Experience:
    """The kept groups' sequences, advantages and engine log-probs as device tensors."""
    rewards = torch.tensor([r for group in groups for r in group.rewards])
    advantages = group_advantages(rewards, grpo.group_size, grpo.advantage_scale, grpo.advantage_eps)
    exp = pack_experience(groups, advantages, pad_id, grpo.mask_truncated)
    return Experience(*[None if t is None else t.to(device) for t in exp])


def plan_rows(exp: Experience, rows: torch.Tensor, computed: torch.Tensor, grpo: GRPOArgs) -> list[torch.Tensor]:
    """The `computed` ones of `rows` split into length-sorted micro-batches, as many on every rank (FSDP runs
    them in lockstep), at least one.

    Rows not computed (gradient 0) fill in, shortest first, when this rank has too few rows for the count the
    other ranks need, or none: the optimiser then sees zero gradients, as it would without skipping.
    """
    lengths = exp.attention_mask.sum(1).cpu()  # planned on the host: one transfer, not one per sequence
    run, fillers = rows[computed[rows]], rows[~computed[rows]]
    plan = plan_micro_batches(lengths[run], grpo.micro_batch_size, grpo.micro_batch_tokens)
    count = int(all_reduce_scalar(max(len(plan), 1), "max"))
    if len(run) < count:
        shortest = fillers[torch.argsort(lengths[fillers], stable=True)]
        run = torch.cat([run, shortest[: count - len(run)]])
    if count != len(plan):
        plan = plan_micro_batches(lengths[run], grpo.micro_batch_size, grpo.micro_batch_tokens, count)
    return [run[p] for p in plan]


@torch.no_grad()
def score(policy: PolicyForward, exp: Experience, computed: torch.Tensor, grpo: GRPOArgs) -> torch.Tensor:
    """Log-probs under `policy` of the rows marked `computed` (0 elsewhere), e.g. old or reference log-probs."""
    out = torch.zeros_like(exp.engine_logp)
    for rows in plan_rows(exp, torch.arange(exp.num_sequences), computed, grpo):
        logp, _ = policy(exp.select(rows))
        out[rows, : logp.shape[1]] = logp
    return out


def micro_batch_loss(logp: torch.Tensor, entropy: torch.Tensor, mb: Experience, grpo: GRPOArgs,
                     scale: UpdateScale, num_tokens: float, num_sequences: float, before_update: bool
                     ) -> tuple[torch.Tensor, MicroBatchStats]:
    """The loss to backpropagate for one micro-batch and its statistics.

    Args:
        logp: [n, L-1] policy log-probs (carry gradient).
        entropy: [n, L-1] policy entropies (carry gradient for the entropy bonus).
        mb: The micro-batch (old_logp None: the policy still is the sampling one, so old = logp detached).
        grpo: The algorithm's knobs.
        scale: Normaliser constant and world size.
        num_tokens: Counted tokens in the mini-batch over all ranks.
        num_sequences: Sequences in the mini-batch over all ranks.
        before_update: No optimiser step happened on this batch yet (the engine gap is then measured).

    Returns:
        (loss, already scaled by the world size for gradient averaging; `MicroBatchStats`).
    """
    mask = mb.response_mask
    old = mb.old_logp if mb.old_logp is not None else logp.detach()
    weights = truncated_is_weights(old, mb.engine_logp, grpo.tis_cap) if grpo.tis_cap else None
    if grpo.seq_is != "off":
        sequence_weights = sequence_is_weights(old, mb.engine_logp, mask, grpo.seq_is, grpo.seq_is_low,
                                               grpo.seq_is_high, grpo.seq_is_ratio)
        weights = sequence_weights if weights is None else weights * sequence_weights
    out = clipped_ratio_loss(logp, old, mb.advantages, mask, grpo.eps_low, grpo.eps_high, weights, grpo.ratio_level)
    per_token = entropy_bonus(out.per_token, entropy * mask, grpo.entropy_coef)
    kl = None
    if grpo.beta > 0:
        kl = kl_estimate(logp, mb.ref_logp, grpo.kl_estimator) * mask
        per_token = per_token + grpo.beta * kl
    loss = aggregate_loss(per_token, mask, grpo.aggregation, scale.constant_normalizer, num_tokens,
                          num_sequences) * scale.world_size
    counted = mask.bool()
    stats = MicroBatchStats(
        loss=loss.detach() / scale.world_size,
        clip_low=masked_mean(out.clipped_low.float(), counted),
        clip_high=masked_mean(out.clipped_high.float(), counted),
        entropy=masked_mean(entropy.detach(), counted),
        ratio_mean=masked_mean(out.ratio, counted),
        ratio_max=torch.where(counted, out.ratio, 0.0).amax(),  # ratios are > 0
        kl=None if kl is None else masked_mean(kl.detach(), counted),
        is_weight_mean=None if weights is None else masked_mean(weights.expand_as(mask), counted),
        engine_logp_gap=masked_mean((logp.detach() - mb.engine_logp).abs(), counted) if before_update else None,
    )
    return loss, stats


def clip_and_step(model: torch.nn.Module, optimizer, scheduler, max_grad_norm: float | None,
                  optimizer_steps: int) -> torch.Tensor:
    """Clips the gradient norm (the full norm under FSDP2), steps optimiser and schedule; returns the norm."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm or math.inf)
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    if not torch.isfinite(norm):
        raise UpdateFailure("non-finite gradient norm", optimizer_steps)
    optimizer.step()
    scheduler.step()
    return norm.detach()


class UpdateResult(NamedTuple):
    """What one `policy_update` did."""

    metrics: dict[str, float]
    """train/* statistics (means over micro-batches, ratio_max a max)."""
    optimizer_steps: int
    """Optimiser steps taken."""


def policy_update(policy: PolicyForward, reference: PolicyForward | None, exp: Experience, grpo: GRPOArgs,
                  optimizer, scheduler, backward: Callable[[torch.Tensor], None], scale: UpdateScale,
                  generator: torch.Generator) -> UpdateResult:
    """`grpo.epochs` passes over the batch in `grpo.mini_batches` shuffled optimiser steps each.

    Args:
        policy: The trained policy's forward.
        reference: The frozen reference's forward (needed when grpo.beta > 0).
        exp: The rollout batch on the policy's device.
        grpo: The algorithm's knobs.
        optimizer: Steps the policy's parameters (a Lightning-wrapped optimiser is fine).
        scheduler: Learning-rate schedule, stepped with the optimiser.
        backward: Backpropagates a loss (Lightning's `manual_backward`).
        scale: Normaliser constant and world size.
        generator: Shuffles the mini-batches (seeded by the caller, so resumes repeat).

    Returns:
        `UpdateResult`.

    Raises:
        UpdateFailure: a loss on any rank, or the gradient norm, was not finite; no optimiser step applied it.
    """
    policy.model.train()
    computed = torch.ones(exp.num_sequences, dtype=torch.bool)  # the rows that run forward/backward
    if grpo.skip_zero_advantage:
        advantages = exp.advantages.cpu()
        computed = advantages != 0 if advantages.dim() == 1 else (advantages != 0).any(1)
    if grpo.epochs * grpo.mini_batches > 1:
        exp = exp._replace(old_logp=score(policy, exp, computed, grpo))
    if grpo.beta > 0:
        exp = exp._replace(ref_logp=score(reference, exp, computed, grpo))
    records: list[MicroBatchStats] = []
    losses, norms, steps = [], [], 0
    for epoch in range(grpo.epochs):
        order = torch.randperm(exp.num_sequences, generator=generator)
        for index, rows in enumerate(order.chunk(grpo.mini_batches)):
            num_tokens = all_reduce_scalar(float(exp.response_mask[rows].sum()))
            num_sequences = all_reduce_scalar(float(len(rows)))
            optimizer.zero_grad(set_to_none=True)
            total = torch.zeros((), device=exp.input_ids.device)
            finite = torch.ones((), dtype=torch.bool, device=exp.input_ids.device)
            for micro_rows in plan_rows(exp, rows, computed, grpo):
                mb = exp.select(micro_rows)
                logp, entropy = policy(mb)
                loss, stats = micro_batch_loss(logp, entropy, mb, grpo, scale, num_tokens, num_sequences,
                                               before_update=epoch == 0 and index == 0)
                finite &= torch.isfinite(loss.detach())
                backward(loss)
                total += stats.loss
                records.append(stats)
            # checked before the optimiser step, so a bad loss never reaches the weights (its NaN gradients are
            # dropped with the rest of this mini-batch's)
            if all_reduce_scalar(0.0 if finite.item() else 1.0, "max") > 0:
                raise UpdateFailure("non-finite loss", steps)
            norms.append(clip_and_step(policy.model, optimizer, scheduler, grpo.max_grad_norm, steps))
            steps += 1
            losses.append(total)
    metrics = summarize(records, losses, norms)
    metrics["train/lr"] = scheduler.get_last_lr()[0]
    metrics["train/computed_frac"] = computed.float().mean().item()
    return UpdateResult(metrics, steps)


def summarize(records: list[MicroBatchStats], losses: list[torch.Tensor], norms: list[torch.Tensor]
              ) -> dict[str, float]:
    """train/* metrics from the micro-batch records in one device-to-host transfer."""
    columns = {name: [v for v in values if v is not None] for name, values in zip(
        MicroBatchStats._fields, zip(*records, strict=True), strict=True)} if records else {}
    columns.update(loss=losses, grad_norm=norms)
    names = [name for name, values in columns.items() if values]
    values = torch.stack([(torch.amax if name == "ratio_max" else torch.mean)(torch.stack(columns[name]).float())
                          for name in names]).tolist()
    metrics = {f"train/{name}": value for name, value in zip(names, values, strict=True)}
    metrics["train/ratio_max"] = metrics.get("train/ratio_max") or 1.0  # 1.0 when no token was counted
    metrics["train/clip_frac"] = metrics.get("train/clip_low", 0.0) + metrics.get("train/clip_high", 0.0)
    return metrics
