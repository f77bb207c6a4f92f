"""Loss pieces on hand-worked tensors, plus the micro-batch invariance of the aggregations."""

import math

import pytest
import torch

from astro_pl.modules.losses import (
    aggregate_loss,
    clipped_ratio_loss,
    kl_k3,
    masked_mean,
    truncated_is_weights,
)


def test_clipped_ratio_loss_four_cases():
    # ratios [1.5, 1.5, 0.5, 0.5] with advantages [+1, -1, -1, +1], eps_low = eps_high = 0.2:
    #  r=1.5 A=+1: min(1.5, 1.2) = 1.2 -> loss -1.2, upper clip active
    #  r=1.5 A=-1: min(-1.5, -1.2) = -1.5 -> loss 1.5, not clipped
    #  r=0.5 A=-1: min(-0.5, -0.8) = -0.8 -> loss 0.8, lower clip active
    #  r=0.5 A=+1: min(0.5, 0.8) = 0.5 -> loss -0.5, not clipped
    logp = torch.log(torch.tensor([[1.5], [1.5], [0.5], [0.5]])).requires_grad_()
    old = torch.zeros(4, 1)
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0])
    out = clipped_ratio_loss(logp, old, adv, torch.ones(4, 1), eps_low=0.2, eps_high=0.2)
    torch.testing.assert_close(out.per_token, torch.tensor([[-1.2], [1.5], [0.8], [-0.5]]))
    assert out.clipped_high.squeeze(1).tolist() == [True, False, False, False]
    assert out.clipped_low.squeeze(1).tolist() == [False, False, True, False]
    out.per_token.sum().backward()
    # d(-r A)/dlogp = -r A where unclipped: [0, 1.5, 0, -0.5]; clipped tokens carry no gradient
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0], [1.5], [0.0], [-0.5]]))


def test_clip_higher_widens_upper_bound_only():
    # r = 1.25, A = +1: with eps_high 0.28 it is inside (loss -1.25); with 0.2 it is clipped to 1.2
    logp = torch.log(torch.tensor([[1.25]]))
    wide = clipped_ratio_loss(logp, torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1), 0.2, 0.28)
    narrow = clipped_ratio_loss(logp, torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1), 0.2, 0.2)
    torch.testing.assert_close(wide.per_token, torch.tensor([[-1.25]]))
    torch.testing.assert_close(narrow.per_token, torch.tensor([[-1.2]]))


def test_mask_and_is_weights_apply_per_token():
    # r = 1 everywhere, A = 2: loss -2 per token; IS weights [0.5, 2]; second token masked out -> [-1, 0]
    out = clipped_ratio_loss(
        torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([2.0]), torch.tensor([[1, 0]]),
        is_weights=torch.tensor([[0.5, 2.0]]),
    )
    torch.testing.assert_close(out.per_token, torch.tensor([[-1.0, 0.0]]))


def test_kl_k3_hand_value_and_zero_at_equal():
    # logp = log .5, ref = log .25: delta = log .5; exp(delta) - delta - 1 = 0.5 + 0.693147 - 1 = 0.193147
    kl = kl_k3(torch.log(torch.tensor([[0.5, 0.3]])), torch.log(torch.tensor([[0.25, 0.3]])))
    torch.testing.assert_close(kl, torch.tensor([[0.5 + math.log(2.0) - 1.0, 0.0]]))


def test_truncated_is_weights_cap():
    # exp(0.6 - 0.2)... use log-ratios log 3 (capped to 2) and log 0.5
    trainer = torch.tensor([[math.log(3.0), math.log(0.5)]])
    w = truncated_is_weights(trainer, torch.zeros(1, 2), cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[2.0, 0.5]]))
    with pytest.raises(ValueError, match="cap"):
        truncated_is_weights(trainer, trainer, cap=0)


PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])


def test_aggregations_hand_values():
    # masked sum = 1 + 2 + 3 + 4 = 10 over 4 tokens
    assert aggregate_loss(PER_TOKEN, MASK, "token_mean").item() == pytest.approx(2.5)
    # sequence means 2 and 4 -> 3
    assert aggregate_loss(PER_TOKEN, MASK, "seq_mean").item() == pytest.approx(3.0)
    # 10 / (2 sequences * 4)
    assert aggregate_loss(PER_TOKEN, MASK, "constant", constant_normalizer=4).item() == pytest.approx(1.25)
    assert masked_mean(PER_TOKEN, MASK).item() == pytest.approx(2.5)
    with pytest.raises(ValueError, match="constant_normalizer"):
        aggregate_loss(PER_TOKEN, MASK, "constant")
    with pytest.raises(ValueError, match="mode must be one of"):
        aggregate_loss(PER_TOKEN, MASK, "sum")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean", "constant"])
def test_micro_batch_invariance_1x8_vs_8x1(mode):
    """The gradient of the whole batch equals the sum over 8 micro-batches of 1 given global counts."""
    torch.manual_seed(0)
    lengths = torch.tensor([1, 7, 3, 8, 2, 5, 6, 4])
    mask = (torch.arange(8)[None, :] < lengths[:, None]).long()  # [8, 8], ragged lengths
    logp0 = torch.randn(8, 8) * 0.1
    old = logp0 + torch.randn(8, 8) * 0.05
    adv = torch.randn(8)
    counts = dict(num_tokens=float(mask.sum()), num_sequences=8.0, constant_normalizer=8.0)

    def loss_of(logp, rows):
        out = clipped_ratio_loss(logp[rows], old[rows], adv[rows], mask[rows], 0.2, 0.28)
        return aggregate_loss(out.per_token, mask[rows], mode, **counts)

    full = logp0.clone().requires_grad_()
    whole = loss_of(full, slice(0, 8))
    whole.backward()
    split = logp0.clone().requires_grad_()
    total = sum(loss_of(split, slice(i, i + 1)) for i in range(8))
    total.backward()
    torch.testing.assert_close(total, whole)
    torch.testing.assert_close(split.grad, full.grad)
    # without global counts token_mean is NOT invariant (8 per-sequence means summed != one batch mean)
    if mode == "token_mean":
        local = sum(aggregate_loss(clipped_ratio_loss(logp0[i:i + 1], old[i:i + 1], adv[i:i + 1],
                                                      mask[i:i + 1]).per_token, mask[i:i + 1], mode) for i in range(8))
        assert not torch.allclose(local, whole)
