"""Loss pieces on hand-worked tensors, plus the micro-batch invariance of the aggregations."""

import math

import pytest
import torch

from astro_pl.modules.losses import (
    aggregate_loss,
    clipped_ratio_loss,
    entropy_bonus,
    kl_estimate,
    masked_mean,
    sequence_is_weights,
    sequence_ratio,
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


def test_kl_estimators_hand_values_and_zero_at_equal():
    # logp = log .5, ref = log .25: log r = ref - logp = -log 2
    # k1 = -log r = log 2; k2 = (log 2)^2 / 2 = 0.240227; k3 = r - 1 - log r = 0.5 - 1 + log 2 = 0.193147
    logp, ref = torch.log(torch.tensor([[0.5, 0.3]])), torch.log(torch.tensor([[0.25, 0.3]]))
    log2 = math.log(2.0)
    for estimator, value in (("k1", log2), ("k2", log2**2 / 2), ("k3", 0.5 + log2 - 1.0)):
        torch.testing.assert_close(kl_estimate(logp, ref, estimator), torch.tensor([[value, 0.0]]))
    # the KL's sign flips under k1 only: logp = log .25, ref = log .5 -> k1 = -log 2 < 0, k3 = 2 - 1 - log 2
    torch.testing.assert_close(kl_estimate(ref, logp, "k1"), torch.tensor([[-log2, 0.0]]))
    torch.testing.assert_close(kl_estimate(ref, logp, "k3"), torch.tensor([[1.0 - log2, 0.0]]))
    with pytest.raises(ValueError, match="k1"):
        kl_estimate(logp, ref, "k4")


def test_sequence_ratio_is_the_geometric_mean_with_per_token_gradient():
    # row 0: log-ratios [log 2, log 8] -> mean log 4 -> s = 4 on both tokens; row 1: [log 3, masked] -> s = 3
    logp = torch.log(torch.tensor([[2.0, 8.0], [3.0, 5.0]])).requires_grad_()
    mask = torch.tensor([[1, 1], [1, 0]])
    s = sequence_ratio(logp, torch.zeros(2, 2), mask)
    torch.testing.assert_close(s.detach(), torch.tensor([[4.0, 4.0], [3.0, 3.0]]))
    # mean over row 0's tokens of s: d/dlogp_t = s / 2 = 2 each; row 1 (one token) d/dlogp = 3
    ((s * mask).sum(1) / mask.sum(1)).sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[2.0, 2.0], [3.0, 0.0]]))


def test_gspo_clips_the_whole_sequence_together():
    # token ratios [1.5, 1.0] -> s = exp((log 1.5 + 0) / 2) = sqrt(1.5) = 1.224745 > 1.2: with A = +1 both tokens
    # are clipped at 1.2 (token level would clip only the first); with eps_high 0.3 neither is
    logp = torch.log(torch.tensor([[1.5, 1.0]]))
    mask = torch.ones(1, 2)
    seq = clipped_ratio_loss(logp, torch.zeros(1, 2), torch.ones(1), mask, 0.2, 0.2, ratio_level="sequence")
    torch.testing.assert_close(seq.per_token, torch.tensor([[-1.2, -1.2]]))
    assert seq.clipped_high.tolist() == [[True, True]]
    token = clipped_ratio_loss(logp, torch.zeros(1, 2), torch.ones(1), mask, 0.2, 0.2)
    assert token.clipped_high.tolist() == [[True, False]]
    wide = clipped_ratio_loss(logp, torch.zeros(1, 2), torch.ones(1), mask, 0.2, 0.3, ratio_level="sequence")
    torch.testing.assert_close(wide.per_token, torch.full((1, 2), -math.sqrt(1.5)))


def test_entropy_bonus_subtracts_the_weighted_entropy():
    # loss [1, 2], entropies [0.5, 3], coefficient 0.1 -> [0.95, 1.7]; coefficient 0 leaves the loss alone
    per_token, entropy = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 3.0]])
    torch.testing.assert_close(entropy_bonus(per_token, entropy, 0.1), torch.tensor([[0.95, 1.7]]))
    assert entropy_bonus(per_token, entropy, 0.0) is per_token


def test_sequence_is_weights_truncate_and_mask_whole_sequences():
    # token log-ratios trainer - engine: row 0 [log 2, log 2] (product 4, geometric 2), row 1 [log 0.25, masked]
    # (product = geometric = 0.25), row 2 [0, 0] (1)
    trainer = torch.log(torch.tensor([[2.0, 2.0], [0.25, 7.0], [1.0, 1.0]]))
    mask = torch.tensor([[1, 1], [1, 0], [1, 1]])
    engine = torch.zeros(3, 2)
    truncated = sequence_is_weights(trainer, engine, mask, "truncate", 0.5, 3.0, "product")
    torch.testing.assert_close(truncated, torch.tensor([[3.0], [0.25], [1.0]]))  # 4 capped at 3
    geometric = sequence_is_weights(trainer, engine, mask, "truncate", 0.5, 3.0, "geometric")
    torch.testing.assert_close(geometric, torch.tensor([[2.0], [0.25], [1.0]]))
    # band [0.5, 2]: row 0 (geometric 2) stays, row 1 (0.25) is masked whole, row 2 stays; product 4 leaves it
    masked = sequence_is_weights(trainer, engine, mask, "mask", 0.5, 2.0, "geometric")
    torch.testing.assert_close(masked, torch.tensor([[1.0], [0.0], [1.0]]))
    torch.testing.assert_close(sequence_is_weights(trainer, engine, mask, "mask", 0.5, 2.0, "product"),
                               torch.tensor([[0.0], [0.0], [1.0]]))


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
