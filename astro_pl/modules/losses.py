"""Policy-gradient loss pieces for GRPO, DAPO and Dr. GRPO: pure functions on [N, T] token tensors.

N is the number of sequences in a micro-batch, T the padded response length. `mask` is 1 on response tokens
that count and 0 on padding (and on whole responses that are masked, e.g. truncated ones). The log-probs come
from `astro_pl.modules.logprobs`.

The loss of one token is the PPO clipped surrogate (Schulman et al. 2017, eq. 7) with DAPO's decoupled clip
range (`eps_low`, `eps_high`, "clip-higher"), optionally weighted by a truncated importance-sampling ratio between
the trainer and the rollout engine (Yao et al. 2025: the engine's sampler differs slightly from the trainer's
forward pass, so the samples are off-policy even at step 0), plus `beta` times the k3 KL estimate to a frozen
reference (Schulman 2020, as in GRPO eq. 4). How token losses become one number is `aggregate_loss`'s job.

Knobs beside GRPO's: GSPO's sequence-level ratio (`ratio_level="sequence"`, Zheng et al. 2025), the KL estimators
k1, k2, k3 (`kl_estimate`), an entropy bonus (`entropy_bonus`), and a sequence-level importance correction for the
sampler/trainer gap (`sequence_is_weights`: truncate the whole-sequence ratio, or mask sequences whose ratio leaves
a band, as veRL's rollout correction and IcePop do) beside the token-level cap of `truncated_is_weights`.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

AggregationMode = Literal["seq_mean", "token_mean", "constant"]
AGGREGATIONS = ("seq_mean", "token_mean", "constant")
RATIO_LEVELS = ("token", "sequence")
KL_ESTIMATORS = ("k1", "k2", "k3")
SEQUENCE_IS_MODES = ("off", "truncate", "mask")
SEQUENCE_RATIOS = ("product", "geometric")


class ClippedLoss(NamedTuple):
    """Output of `clipped_ratio_loss`."""

    per_token: torch.Tensor
    """[N, T] loss of each token (not yet masked or aggregated)."""
    ratio: torch.Tensor
    """[N, T] pi_theta / pi_old, detached."""
    clipped_low: torch.Tensor
    """[N, T] bool: the lower clip bound was active (ratio < 1 - eps_low with a negative advantage)."""
    clipped_high: torch.Tensor
    """[N, T] bool: the upper clip bound was active (ratio > 1 + eps_high with a positive advantage)."""


def clipped_ratio_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    is_weights: torch.Tensor | None = None,
    ratio_level: Literal["token", "sequence"] = "token",
) -> ClippedLoss:
    """PPO clipped surrogate per token, with decoupled clip range: -min(r A, clip(r, 1-eps_low, 1+eps_high) A).

    With `ratio_level="sequence"` (GSPO) r is `sequence_ratio`: every token of a sequence shares its
    length-normalised ratio, and so is clipped (or not) with its whole sequence.

    Args:
        logp: [N, T] log-probs under the policy being trained (carries gradient).
        old_logp: [N, T] log-probs under the policy that sampled (the trainer's, at rollout time).
        advantages: [N] one advantage per sequence, or [N, T].
        mask: [N, T] 1 on counted tokens; masked tokens get loss 0 and never count as clipped.
        eps_low: Lower clip range, ratio >= 1 - eps_low.
        eps_high: Upper clip range, ratio <= 1 + eps_high (DAPO raises it to e.g. 0.28).
        is_weights: Optional [N, T] (or [N, 1]) detached importance weights multiplied into the loss.
        ratio_level: "token" (PPO, GRPO) or "sequence" (GSPO).

    Returns:
        `ClippedLoss` with [N, T] tensors.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)  # [N, 1]
    if ratio_level == "sequence":
        ratio = sequence_ratio(logp, old_logp, mask)
    elif ratio_level == "token":
        ratio = torch.exp(logp - old_logp.detach())  # [N, T]
    else:
        raise ValueError(f"ratio_level must be one of {RATIO_LEVELS}, got {ratio_level!r}")
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    unclipped_obj = ratio * advantages
    clipped_obj = clipped * advantages
    per_token = -torch.minimum(unclipped_obj, clipped_obj)  # [N, T]
    if is_weights is not None:
        per_token = per_token * is_weights.detach()
    mask = mask.bool()
    active = clipped_obj < unclipped_obj  # the clipped branch is the min, and differs
    r = ratio.detach()
    clipped_low = active & (r < 1.0 - eps_low) & mask
    clipped_high = active & (r > 1.0 + eps_high) & mask
    return ClippedLoss(per_token * mask, r, clipped_low, clipped_high)


def sequence_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO's ratio s = exp(mean over the sequence's counted tokens of (logp - old_logp)), on every token.

    The value is the sequence's length-normalised (geometric-mean) ratio; the gradient at token t is s times
    d logp_t (GSPO-token form: value sg[s] * pi_t / sg[pi_t]), so averaging the tokens' losses over the sequence
    gives exactly the gradient of the sequence-level objective, and "token_mean" aggregation still works.

    Args:
        logp: [N, T] policy log-probs (carry gradient).
        old_logp: [N, T] sampling-policy log-probs.
        mask: [N, T] 1 on counted tokens.

    Returns:
        [N, T] ratios (equal along each row where counted).
    """
    mask = mask.to(logp.dtype)
    log_ratio = ((logp.detach() - old_logp.detach()) * mask).sum(1) / mask.sum(1).clamp(min=1)  # [N]
    return torch.exp(log_ratio[:, None] + logp - logp.detach())


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: Literal["k1", "k2", "k3"] = "k3"
                ) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from the sampled tokens (Schulman 2020), with r = pi_ref / pi:

    - "k1": -log r = logp - ref_logp. Unbiased, high variance, can be negative; as a loss its gradient is the
      policy-gradient of the KL only in expectation over the policy's own samples.
    - "k2": (log r)^2 / 2. Biased, low variance, >= 0; its gradient is that of the true KL to first order.
    - "k3": r - 1 - log r. Unbiased, low variance, >= 0 (GRPO eq. 4's choice).

    Args:
        logp: [N, T] policy log-probs of the sampled tokens.
        ref_logp: [N, T] reference-model log-probs of the same tokens.
        estimator: "k1", "k2" or "k3".

    Returns:
        [N, T] per-token KL estimates.
    """
    delta = ref_logp - logp  # log r
    if estimator == "k1":
        return -delta
    if estimator == "k2":
        return 0.5 * delta**2
    if estimator == "k3":
        return torch.exp(delta) - delta - 1.0
    raise ValueError(f"estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def entropy_bonus(per_token: torch.Tensor, entropy: torch.Tensor, coefficient: float) -> torch.Tensor:
    """Token losses minus `coefficient` times each position's entropy (keeps the policy from collapsing early).

    Args:
        per_token: [N, T] loss per token.
        entropy: [N, T] entropy of the policy at each position (carries gradient).
        coefficient: Weight of the bonus; 0 returns `per_token` unchanged.

    Returns:
        [N, T] token losses.
    """
    return per_token - coefficient * entropy if coefficient else per_token


def sequence_is_weights(trainer_logp: torch.Tensor, engine_logp: torch.Tensor, mask: torch.Tensor,
                        mode: Literal["truncate", "mask"], low: float, high: float,
                        ratio: Literal["product", "geometric"] = "geometric") -> torch.Tensor:
    """Whole-sequence importance weights for the gap between the rollout engine and the trainer, detached.

    The sequence ratio rho = pi_trainer(y) / pi_engine(y) is the product of the token ratios ("product", the exact
    sequence-level importance ratio) or their geometric mean ("geometric", length-normalised: a long response's
    product drifts far from 1 even when every token agrees well). Then:

    - "truncate": weight min(rho, high) (sequence-level truncated IS);
    - "mask": weight 1 when low <= rho <= high, else 0: the whole sequence leaves the loss (rejection, as
      veRL's sequence/geometric rollout masks and IcePop's band do).

    Args:
        trainer_logp: [N, T] trainer log-probs at rollout time.
        engine_logp: [N, T] engine log-probs of the same tokens.
        mask: [N, T] 1 on counted tokens.
        mode: "truncate" or "mask".
        low: Lower end of the band ("mask").
        high: Cap ("truncate") or upper end of the band ("mask").
        ratio: "product" or "geometric".

    Returns:
        [N, 1] weights, to multiply into [N, T] token losses.
    """
    mask = mask.to(torch.float32)
    log_ratios = ((trainer_logp.detach() - engine_logp.detach()).float() * mask).sum(1)  # [N]
    if ratio == "geometric":
        log_ratios = log_ratios / mask.sum(1).clamp(min=1)
    elif ratio != "product":
        raise ValueError(f"ratio must be one of {SEQUENCE_RATIOS}, got {ratio!r}")
    rho = torch.exp(log_ratios)
    if mode == "truncate":
        return rho.clamp(max=high)[:, None]
    if mode == "mask":
        return ((rho >= low) & (rho <= high)).float()[:, None]
    raise ValueError(f"mode must be 'truncate' or 'mask', got {mode!r}")


def truncated_is_weights(trainer_logp: torch.Tensor, engine_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance weights min(pi_trainer / pi_engine, cap) per token, detached.

    Args:
        trainer_logp: [N, T] log-probs of the sampled tokens under the trainer at rollout time.
        engine_logp: [N, T] log-probs the rollout engine reported for the same tokens.
        cap: Upper bound C on the weight (Yao et al. use 2).

    Returns:
        [N, T] weights in (0, cap].
    """
    if cap <= 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    return torch.exp(trainer_logp.detach() - engine_logp.detach()).clamp(max=cap)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask` is set; 0 when nothing is set."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def aggregate_loss(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: AggregationMode = "token_mean",
    constant_normalizer: float | None = None,
    num_tokens: float | None = None,
    num_sequences: float | None = None,
) -> torch.Tensor:
    """Reduces [N, T] token losses to one scalar; which length bias each mode has:

    - "seq_mean" (GRPO): mean over each sequence's tokens, then over sequences. A token of a short response
      weighs more than a token of a long one, so long wrong answers are penalised less per token.
    - "token_mean" (DAPO): sum over all tokens / number of tokens in the whole batch. Every token weighs the same.
    - "constant" (Dr. GRPO): sum over all tokens / (number of sequences * a constant, e.g. max_tokens). Like
      token_mean without the dependence of the scale on the batch's lengths.

    To split a batch into micro-batches and accumulate gradients with the same result, pass the counts of the
    whole batch: `num_tokens` (token_mean) and `num_sequences` (seq_mean, constant). Left out, they are this
    micro-batch's own counts.

    Args:
        per_token: [N, T] loss per token.
        mask: [N, T] 1 on counted tokens.
        mode: "seq_mean", "token_mean" or "constant".
        constant_normalizer: Per-sequence constant for "constant" (required there).
        num_tokens: Counted tokens in the whole batch (token_mean).
        num_sequences: Sequences in the whole batch (seq_mean, constant).

    Returns:
        Scalar loss.
    """
    mask = mask.to(per_token.dtype)
    masked = per_token * mask
    if mode == "token_mean":
        denom = mask.sum().clamp(min=1) if num_tokens is None else num_tokens
        return masked.sum() / denom
    n_seq = per_token.shape[0] if num_sequences is None else num_sequences
    if mode == "seq_mean":
        seq_means = masked.sum(1) / mask.sum(1).clamp(min=1)  # [N]
        return seq_means.sum() / n_seq
    if mode == "constant":
        if not constant_normalizer or constant_normalizer <= 0:
            raise ValueError("aggregation 'constant' needs constant_normalizer > 0 (e.g. max_tokens)")
        return masked.sum() / (n_seq * constant_normalizer)
    raise ValueError(f"mode must be one of {AGGREGATIONS}, got {mode!r}")
