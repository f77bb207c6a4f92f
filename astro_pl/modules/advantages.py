"""Group-relative advantages and DAPO dynamic sampling: pure functions on reward tensors.

Rewards arrive flat, group after group: `[r(p0,s0), ..., r(p0,s{G-1}), r(p1,s0), ...]`, shape [B*G]. Each sample's
advantage is its reward minus its group's mean, optionally scaled:

- "group_std" (GRPO, Shao et al. 2024 eq. 3): divide by the group's std. Groups with tiny spread get large
  advantages, which Dr. GRPO (Liu et al. 2025) calls a question-difficulty bias.
- "none" (Dr. GRPO): no scaling; the advantage is in reward units.
- "batch_std": divide by the std over the whole batch of advantages (one scale for all groups, as in
  REINFORCE++-style baselines), keeping the relative size of groups.

The std is the unbiased one (torch default), as TRL computes it. A group whose rewards are all equal has
advantage 0 for every sample under every mode; `dynamic_sampling_mask` finds those groups so DAPO can drop them.
"""

from __future__ import annotations

from typing import Literal

import torch

AdvantageScale = Literal["group_std", "none", "batch_std"]
SCALES = ("group_std", "none", "batch_std")


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B*G], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    return rewards.view(-1, group_size)  # [B, G]


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: AdvantageScale = "group_std", eps: float = 1e-4
) -> torch.Tensor:
    """Advantage of each sample relative to the other samples of its prompt.

    Args:
        rewards: [B*G] rewards, the G samples of a prompt next to each other.
        group_size: G, samples per prompt.
        scale: "group_std" (GRPO), "none" (Dr. GRPO) or "batch_std"; see the module docstring.
        eps: Added to the std before dividing, so all-equal groups give 0 rather than NaN.

    Returns:
        [B*G] advantages, float.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    grouped = _grouped(rewards.float(), group_size)  # [B, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # [B, G]
    if scale == "group_std":
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(grouped[:, :1])
        centred = centred / (std + eps)
    elif scale == "batch_std":
        std = centred.std() if centred.numel() > 1 else centred.new_zeros(())
        centred = centred / (std + eps)
    return centred.reshape(-1)


def dynamic_sampling_mask(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Which groups carry a learning signal: those whose rewards are not all equal (DAPO, Yu et al. 2025).

    Args:
        rewards: [B*G] rewards, grouped as in `group_advantages`.
        group_size: G.

    Returns:
        [B] bool, True for groups to keep.
    """
    grouped = _grouped(rewards, group_size)  # [B, G]
    return (grouped != grouped[:, :1]).any(dim=1)


def expand_group_mask(group_mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """[B] group mask -> [B*G] sample mask."""
    return group_mask.repeat_interleave(group_size)
