"""Chunked log-probs and entropies (from logits, and fused with the LM head from hidden states) against the direct
computation: values, gradients, temperature, bf16."""

import math

import pytest
import torch

from astro_pl.modules.logprobs import linear_logprobs_and_entropy, token_logprobs_and_entropy


def direct(logits, labels, temperature=1.0):
    logp_all = torch.log_softmax(logits.double() / temperature, dim=-1)
    picked = logp_all.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return picked, -(logp_all.exp() * logp_all).sum(-1)


def test_hand_worked_values():
    # logits [0, log 3] -> probs [1/4, 3/4]; uniform over 4 -> entropy log 4
    logits = torch.tensor([[[0.0, math.log(3.0), -1e4, -1e4], [0.0, 0.0, 0.0, 0.0]]])
    logp, entropy = token_logprobs_and_entropy(logits, torch.tensor([[1, 2]]))
    torch.testing.assert_close(logp, torch.tensor([[math.log(0.75), math.log(0.25)]]))
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    torch.testing.assert_close(entropy, torch.tensor([[h, math.log(4.0)]]))


@pytest.mark.parametrize("temperature, chunk", [(1.0, 1 << 20), (0.7, 33), (1.3, 1)])
def test_matches_direct_values_and_gradients(temperature, chunk):
    torch.manual_seed(0)
    base = torch.randn(3, 7, 11) * 3
    labels = torch.randint(0, 11, (3, 7))
    weights = torch.randn(3, 7)
    ours = base.clone().requires_grad_()
    logp, entropy = token_logprobs_and_entropy(ours, labels, temperature, chunk)
    (logp * weights).sum().backward()
    ref = base.double().requires_grad_()
    ref_logp, ref_entropy = direct(ref, labels, temperature)
    (ref_logp * weights.double()).sum().backward()
    assert logp.dtype == torch.float32 and not entropy.requires_grad
    torch.testing.assert_close(logp.double(), ref_logp.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy.double(), ref_entropy.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.grad.double(), ref.grad, rtol=1e-5, atol=1e-6)


def test_bf16_logits_of_a_sliced_view_give_bf16_gradients():
    torch.manual_seed(2)
    full = torch.randn(2, 9, 50).to(torch.bfloat16).requires_grad_()
    view = full[:, :-1]  # as `model(...).logits[:, :-1]`: not contiguous
    labels = torch.randint(0, 50, (2, 8))
    logp, entropy = token_logprobs_and_entropy(view, labels, chunk_elements=200)
    logp.sum().backward()
    ref_logp, ref_entropy = direct(full.detach()[:, :-1].float(), labels)
    torch.testing.assert_close(logp.double(), ref_logp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy.double(), ref_entropy, rtol=1e-5, atol=1e-5)
    assert full.grad.dtype == torch.bfloat16 and (full.grad[:, -1] == 0).all()


def test_temperature_must_be_positive():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        token_logprobs_and_entropy(torch.zeros(1, 1, 2), torch.zeros(1, 1, dtype=torch.long), 0.0)


@pytest.mark.parametrize("temperature, chunk, with_bias", [(1.0, None, False), (0.7, 3 * 13, True), (1.3, 1, False)])
def test_fused_linear_matches_plain_values_and_gradients(temperature, chunk, with_bias):
    torch.manual_seed(1)
    hidden, weight = torch.randn(10, 6), torch.randn(13, 6)
    bias = torch.randn(13) if with_bias else None
    labels = torch.randint(0, 13, (10,))
    logp_weights, entropy_weights = torch.randn(10), torch.randn(10)  # an entropy bonus needs its gradient too
    ours = [t.clone().requires_grad_() for t in (hidden, weight) + ((bias,) if with_bias else ())]
    logp, entropy = linear_logprobs_and_entropy(ours[0], ours[1], labels, temperature,
                                                ours[2] if with_bias else None, chunk)
    ((logp * logp_weights).sum() + (entropy * entropy_weights).sum()).backward()
    plain = [t.double().requires_grad_() for t in (hidden, weight) + ((bias,) if with_bias else ())]
    logits = plain[0] @ plain[1].T + (plain[2] if with_bias else 0.0)
    ref_logp, ref_entropy = direct(logits.unsqueeze(0), labels.unsqueeze(0), temperature)
    ((ref_logp[0] * logp_weights.double()).sum() + (ref_entropy[0] * entropy_weights.double()).sum()).backward()
    torch.testing.assert_close(logp.double(), ref_logp[0].detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy.double(), ref_entropy[0].detach(), rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(ours, plain, strict=True):
        torch.testing.assert_close(mine.grad.double(), theirs.grad, rtol=1e-4, atol=1e-5)


def test_fused_linear_log_prob_alone_has_the_hand_worked_value():
    # hidden [1, 0] against weight rows [0, 0], [log 3, 0] -> logits [0, log 3] -> probs [1/4, 3/4]
    weight = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    logp, entropy = linear_logprobs_and_entropy(torch.tensor([[1.0, 0.0]]), weight, torch.tensor([1]))
    torch.testing.assert_close(logp, torch.tensor([math.log(0.75)]))
    torch.testing.assert_close(entropy, torch.tensor([-(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]))


@pytest.mark.parametrize("hidden_dtype", [torch.bfloat16, torch.float32])
def test_fused_linear_under_autocast_multiplies_in_bf16_and_keeps_gradient_dtypes(hidden_dtype):
    torch.manual_seed(3)
    hidden = torch.randn(7, 8).to(hidden_dtype).requires_grad_()
    weight = torch.randn(40, 8).requires_grad_()  # fp32 master weight, as under autocast
    labels = torch.randint(0, 40, (7,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logp, _ = linear_logprobs_and_entropy(hidden, weight, labels, chunk_elements=80)
    logp.sum().backward()
    logits = (hidden.detach().to(torch.bfloat16) @ weight.detach().to(torch.bfloat16).T).float()
    ref_logp, _ = direct(logits.unsqueeze(0), labels.unsqueeze(0))
    torch.testing.assert_close(logp.double(), ref_logp[0], rtol=1e-5, atol=1e-5)
    assert hidden.grad.dtype == hidden_dtype and weight.grad.dtype == torch.float32
