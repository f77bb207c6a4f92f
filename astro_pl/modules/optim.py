"""AdamW with linear warmup and cosine decay, shared by the SFT and RL modules.

ASTRO-SFT (reported): AdamW, lr 3e-6, cosine decay, 1 epoch. The schedule is stepped every optimizer step and its
length is the trainer's estimate of the total steps, so it follows max_epochs / max_steps / accumulation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass
class OptimArgs:
    """Optimizer and learning-rate schedule."""

    lr: float = 3e-6
    """Peak learning rate (ASTRO-SFT: 3e-6)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay, applied to matrices only (not to norms and biases)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    warmup_ratio: float = 0.03
    """Fraction of all optimizer steps spent warming up linearly from 0 to lr."""
    min_lr_ratio: float = 0.0
    """Cosine decay ends at lr * min_lr_ratio."""
    fused: bool | None = None
    """Fused AdamW kernel; None picks it on CUDA."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"--model.optim.lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"--model.optim.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"--model.optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Learning-rate multiplier at `step`: linear 0 -> 1 over warmup_steps, then cosine 1 -> min_lr_ratio."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(named_params: Iterable[tuple[str, torch.nn.Parameter]], args: OptimArgs) -> torch.optim.AdamW:
    """AdamW over trainable parameters; weight decay on parameters with 2+ dims only."""
    decay, no_decay = [], []
    for _, p in named_params:
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = torch.cuda.is_available() if args.fused is None else args.fused
    return torch.optim.AdamW(groups, lr=args.lr, betas=args.betas, eps=args.eps, fused=fused)


def configure_adamw_cosine(named_params, args: OptimArgs, total_steps: int) -> dict:
    """What `LightningModule.configure_optimizers` returns: AdamW plus a per-step warmup + cosine schedule."""
    optimizer = build_optimizer(named_params, args)
    total_steps = max(1, int(total_steps))
    warmup_steps = math.ceil(args.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total_steps, warmup_steps, args.min_lr_ratio)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
