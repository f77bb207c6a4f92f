"""The RL algorithm's settings (`--model.grpo.*`): GRPO by default, DAPO and Dr. GRPO by config.

Each field's docstring is its help text in `astro fit --help`; `__post_init__` rejects bad values naming the flag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from astro_pl.modules.advantages import SCALES
from astro_pl.modules.losses import AGGREGATIONS, KL_ESTIMATORS, RATIO_LEVELS, SEQUENCE_IS_MODES, SEQUENCE_RATIOS


@dataclass
class GRPOArgs:
    """The RL algorithm's knobs (GRPO by default; DAPO and Dr. GRPO by config)."""

    group_size: int = 4
    """G: samples per prompt (the paper's reviewer answer: 4)."""
    advantage_scale: Literal["group_std", "none", "batch_std"] = "group_std"
    """"group_std" (GRPO), "none" (Dr. GRPO: no difficulty bias) or "batch_std"."""
    advantage_eps: float = 1e-4
    """Added to the std before dividing."""
    aggregation: Literal["seq_mean", "token_mean", "constant"] = "seq_mean"
    """Token losses -> one loss: "seq_mean" (GRPO), "token_mean" (DAPO), "constant" (Dr. GRPO); see
    `astro_pl.modules.losses.aggregate_loss` for the length bias of each."""
    constant_normalizer: float | None = None
    """Per-sequence constant for "constant" aggregation; None uses sampling.max_tokens."""
    eps_low: float = 0.2
    """Lower clip range of the ratio."""
    eps_high: float = 0.2
    """Upper clip range of the ratio (DAPO's clip-higher: 0.28)."""
    ratio_level: Literal["token", "sequence"] = "token"
    """"token": PPO's per-token ratio (GRPO, DAPO). "sequence": GSPO's length-normalised sequence ratio
    exp(mean log(pi / pi_old)), clipped per sequence; GSPO uses far narrower clip ranges (e.g. eps_low 3e-4,
    eps_high 4e-4) and "seq_mean" aggregation."""
    beta: float = 0.0
    """Weight of the KL to the frozen initial policy; 0 loads no reference model."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """Per-token KL estimate (`astro_pl.modules.losses.kl_estimate`): "k3" (GRPO), "k2" or "k1"."""
    entropy_coef: float = 0.0
    """Entropy bonus: the loss minus this times the policy's mean entropy at the response tokens (against entropy
    collapse on long chains of thought); 0 turns it off."""
    dynamic_sampling: bool = False
    """Drop groups whose rewards are all equal and draw more prompts (DAPO)."""
    max_extra_draws: int = 4
    """Most extra prompt batches drawn per step by dynamic sampling; then train on what was kept."""
    max_idle_steps: int | None = 20
    """Stop with an error after this many rollout steps in a row that kept no group (every sample of every prompt
    scored alike: the prompts are too easy or too hard for this policy). Such steps update nothing, so a run bounded
    by `trainer.max_steps` would never end. None: never stop (bound the run by `trainer.limit_train_batches`)."""
    mask_truncated: bool = False
    """Leave completions cut off at max_tokens out of the loss (DAPO's overlong filtering)."""
    tis_cap: float | None = None
    """Cap C of truncated importance weights min(pi_trainer / pi_engine, C) per token; None turns it off."""
    seq_is: Literal["off", "truncate", "mask"] = "off"
    """Sequence-level correction of the engine/trainer gap (beside or instead of tis_cap): "truncate" weighs each
    sequence by min(rho, seq_is_high), "mask" leaves out whole sequences whose rho is outside
    [seq_is_low, seq_is_high] (veRL's rollout rejection, IcePop's band); rho = pi_trainer(y) / pi_engine(y)."""
    seq_is_ratio: Literal["product", "geometric"] = "geometric"
    """rho of seq_is: "product" of the token ratios (exact) or their "geometric" mean (length-normalised)."""
    seq_is_low: float = 0.5
    """Lower end of the seq_is "mask" band."""
    seq_is_high: float = 2.0
    """Cap of seq_is "truncate", upper end of its "mask" band."""
    epochs: int = 1
    """Passes over each rollout batch."""
    mini_batches: int = 1
    """Optimiser steps per pass (the batch is split into this many shuffled mini-batches)."""
    micro_batch_size: int = 8
    """Most sequences per forward/backward (sequences are sorted by length first, so each pads little)."""
    micro_batch_tokens: int | None = None
    """Most padded tokens per forward/backward (veRL's dynamic batch size): short responses share a pass, long
    ones get fewer companions. None: only micro_batch_size limits."""
    pack_sequences: bool = False
    """Pack each micro-batch's sequences into rows (best fit, position ids restarting per sequence) instead of
    right-padding them, so no padding is computed; same loss. Attention then needs a block-diagonal mask
    (flash-attention varlen on GPUs; sdpa builds it from the position ids)."""
    skip_zero_advantage: bool = False
    """Leave sequences with advantage 0 (groups whose rewards are all equal) out of the forward/backward: their
    loss and gradient are exactly 0, and the normalisers still count them, so the update is the same at a
    fraction of the compute (with G = 4 and accuracy 0.2, 41% of groups). Useful without dynamic sampling (which
    drops such groups already). Needs beta = 0 and entropy_coef = 0 (those terms have a gradient). The train/
    statistics then cover the computed sequences only; see train/computed_frac."""
    max_grad_norm: float | None = 1.0
    """Gradient clipping; None turns it off."""

    def __post_init__(self) -> None:
        checks = [
            (self.group_size >= 2, f"--model.grpo.group_size must be >= 2, got {self.group_size}"),
            (self.advantage_scale in SCALES, f"--model.grpo.advantage_scale must be one of {SCALES}"),
            (self.aggregation in AGGREGATIONS, f"--model.grpo.aggregation must be one of {AGGREGATIONS}"),
            (self.constant_normalizer is None or self.constant_normalizer > 0,
             "--model.grpo.constant_normalizer must be > 0"),
            (0 <= self.eps_low < 1, f"--model.grpo.eps_low must be in [0, 1), got {self.eps_low}"),
            (self.eps_high >= 0, f"--model.grpo.eps_high must be >= 0, got {self.eps_high}"),
            (self.ratio_level in RATIO_LEVELS, f"--model.grpo.ratio_level must be one of {RATIO_LEVELS}"),
            (self.beta >= 0, f"--model.grpo.beta must be >= 0, got {self.beta}"),
            (self.kl_estimator in KL_ESTIMATORS, f"--model.grpo.kl_estimator must be one of {KL_ESTIMATORS}"),
            (self.entropy_coef >= 0, f"--model.grpo.entropy_coef must be >= 0, got {self.entropy_coef}"),
            (self.seq_is in SEQUENCE_IS_MODES, f"--model.grpo.seq_is must be one of {SEQUENCE_IS_MODES}"),
            (self.seq_is_ratio in SEQUENCE_RATIOS, f"--model.grpo.seq_is_ratio must be one of {SEQUENCE_RATIOS}"),
            (0 <= self.seq_is_low < self.seq_is_high,
             "--model.grpo.seq_is_low must be >= 0 and below --model.grpo.seq_is_high"),
            (self.max_extra_draws >= 0, "--model.grpo.max_extra_draws must be >= 0"),
            (self.max_idle_steps is None or self.max_idle_steps >= 1, "--model.grpo.max_idle_steps must be >= 1"),
            (self.tis_cap is None or self.tis_cap > 0, "--model.grpo.tis_cap must be > 0 (or null)"),
            (self.epochs >= 1, "--model.grpo.epochs must be >= 1"),
            (self.mini_batches >= 1, "--model.grpo.mini_batches must be >= 1"),
            (self.micro_batch_size >= 1, "--model.grpo.micro_batch_size must be >= 1"),
            (self.micro_batch_tokens is None or self.micro_batch_tokens >= 1,
             "--model.grpo.micro_batch_tokens must be >= 1 (or null)"),
            (not (self.skip_zero_advantage and self.beta > 0),
             "--model.grpo.skip_zero_advantage needs --model.grpo.beta 0 (the KL term has a gradient)"),
            (not (self.skip_zero_advantage and self.entropy_coef > 0),
             "--model.grpo.skip_zero_advantage needs --model.grpo.entropy_coef 0 (the bonus has a gradient)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
