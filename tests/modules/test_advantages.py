"""Group advantages and dynamic sampling on hand-worked rewards."""

import math

import pytest
import torch

from astro_pl.modules.advantages import dynamic_sampling_mask, expand_group_mask, group_advantages

# two groups of G=4: one correct answer out of four, then four correct answers
REWARDS = torch.tensor([1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0])


def test_group_std_matches_hand_computation():
    # group 0: mean -0.5, centred [1.5, -0.5, -0.5, -0.5]; unbiased var = (2.25 + 3 * 0.25) / 3 = 1 -> std 1
    # group 1: all equal -> centred 0, std 0 -> 0 / (0 + eps) = 0
    adv = group_advantages(REWARDS, 4, "group_std", eps=0.0 + 1e-12)
    torch.testing.assert_close(adv, torch.tensor([1.5, -0.5, -0.5, -0.5, 0.0, 0.0, 0.0, 0.0]))


def test_group_std_eps_shrinks_towards_zero():
    # std 1, eps 1 -> 1.5 / 2 = 0.75
    adv = group_advantages(REWARDS[:4], 4, "group_std", eps=1.0)
    torch.testing.assert_close(adv, torch.tensor([0.75, -0.25, -0.25, -0.25]))


def test_none_is_mean_centred_rewards():
    adv = group_advantages(torch.tensor([1.0, 1.0, -1.0, 0.0, 3.0, 5.0]), 2, "none")
    # groups (1,1), (-1,0), (3,5): means 1, -0.5, 4
    torch.testing.assert_close(adv, torch.tensor([0.0, 0.0, -0.5, 0.5, -1.0, 1.0]))


def test_batch_std_uses_one_scale_for_all_groups():
    # centred [1.5, -.5, -.5, -.5, 0, 0, 0, 0]: mean 0, sum of squares 3, unbiased var 3/7
    adv = group_advantages(REWARDS, 4, "batch_std", eps=0.0)
    expected = torch.tensor([1.5, -0.5, -0.5, -0.5, 0, 0, 0, 0]) / math.sqrt(3 / 7)
    torch.testing.assert_close(adv, expected)


def test_advantages_sum_to_zero_per_group():
    torch.manual_seed(0)
    rewards = torch.randn(5 * 6)
    for scale in ("group_std", "none", "batch_std"):
        adv = group_advantages(rewards, 6, scale)
        torch.testing.assert_close(adv.view(5, 6).sum(1), torch.zeros(5), atol=1e-5, rtol=0)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(REWARDS, 3)
    with pytest.raises(ValueError, match="scale must be one of"):
        group_advantages(REWARDS, 4, "std")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(REWARDS.view(2, 4), 4)


def test_dynamic_sampling_drops_all_equal_groups():
    # groups: (1,-1) mixed, (1,1) all right, (-1,-1) all wrong, (0.5, 1) mixed
    rewards = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0, -1.0, 0.5, 1.0])
    keep = dynamic_sampling_mask(rewards, 2)
    assert keep.tolist() == [True, False, False, True]
    assert expand_group_mask(keep, 2).tolist() == [True, True, False, False, False, False, True, True]
