"""The RL update's pieces on a real tiny Llama: log-probs from hidden states, packed = padded, the micro-batch loss's
knobs (sequence masks, entropy bonus, GSPO), and the GRPOArgs flags that switch them."""

from __future__ import annotations

import pytest
import torch

from astro_pl.datamodules.packing import pack_sequences
from astro_pl.loading import load_causal_lm
from astro_pl.modules.experience import Group, pack_experience
from astro_pl.modules.grpo_args import GRPOArgs
from astro_pl.modules.lm_head import output_projection
from astro_pl.modules.lora import LoraArgs, add_lora
from astro_pl.modules.policy_update import PolicyForward, UpdateScale, micro_batch_loss
from astro_pl.rollout.base import Completion

GROUPS = [
    Group([1, 5, 6, 7, 8], [Completion("", [9, 10], [-1.0, -2.0], "stop"), Completion("", [11], [-1.5], "stop")],
          [1.0, -1.0], "x"),
    Group([1, 5, 6], [Completion("", list(range(12, 22)), [-0.5] * 10, "stop"),
                      Completion("", [9], [-3.0], "stop")], [1.0, -1.0], "y"),
]
ADVANTAGES = torch.tensor([0.7, -0.7, 1.1, -1.1])


@pytest.fixture(scope="module")
def policy_model(tiny_model_dir):
    torch.manual_seed(0)
    return load_causal_lm(str(tiny_model_dir), "float32")


def experience():
    return pack_experience(GROUPS, ADVANTAGES, pad_id=0)


def test_pack_sequences_puts_sequences_side_by_side_with_restarting_positions():
    # lengths 5, 2, 3 with capacity 5: best fit gives rows [0] and [1, 2]; sequence 2 starts at offset 2 of row 1
    sequences = [torch.arange(10, 15), torch.tensor([20, 21]), torch.tensor([30, 31, 32])]
    batch, where = pack_sequences(sequences, pad_id=0)
    assert where.tolist() == [[0, 0], [1, 0], [1, 2]]
    assert batch["input_ids"][1, :5].tolist() == [20, 21, 30, 31, 32]
    assert batch["position_ids"][1, :5].tolist() == [0, 1, 0, 1, 2]


@pytest.mark.parametrize("packed", [False, True])
def test_policy_forward_equals_log_softmax_of_the_full_logits_at_counted_positions(policy_model, packed):
    exp = experience()
    forward = PolicyForward(policy_model, temperature=0.7, packed=packed)
    with torch.no_grad():
        logp, entropy = forward(exp)
        full = policy_model(input_ids=exp.input_ids, attention_mask=exp.attention_mask).logits[:, :-1] / 0.7
    log_probs = torch.log_softmax(full, -1)
    expected = log_probs.gather(-1, exp.input_ids[:, 1:, None]).squeeze(-1)
    counted = exp.response_mask.bool()
    assert logp.shape == expected.shape and counted.sum() == 14
    torch.testing.assert_close(logp[counted], expected[counted], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy[counted], -(log_probs.exp() * log_probs).sum(-1)[counted], rtol=1e-5,
                               atol=1e-5)
    assert (logp[~counted] == 0).all() and (entropy[~counted] == 0).all()  # prompts and padding are never scored


def loss_and_grads(model, exp, grpo: GRPOArgs, packed: bool = False):
    model.zero_grad(set_to_none=True)
    logp, entropy = PolicyForward(model, packed=packed)(exp)
    loss, stats = micro_batch_loss(logp, entropy, exp, grpo, UpdateScale(16.0, 1), float(exp.response_mask.sum()),
                                   float(exp.num_sequences), before_update=True)
    loss.backward()
    return loss.detach(), stats, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("aggregation", ["seq_mean", "token_mean"])
def test_packed_update_gives_the_padded_loss_and_gradient(policy_model, aggregation):
    grpo = GRPOArgs(aggregation=aggregation, entropy_coef=0.01)
    padded, _, padded_grads = loss_and_grads(policy_model, experience(), grpo)
    packed, _, packed_grads = loss_and_grads(policy_model, experience(), grpo, packed=True)
    assert abs(packed.item() - padded.item()) < 1e-5 and padded.item() != 0
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6)


def test_packed_rows_are_shared_and_their_position_ids_matter(policy_model):
    # lengths 7, 6, 13, 4 packed at capacity 13: sequences 0 and 1 share a row; without restarting positions (and
    # the segment mask they imply) sequence 1 would see sequence 0: the equality above could fail
    exp = experience()
    lengths = exp.attention_mask.sum(1).tolist()
    batch, where = pack_sequences([exp.input_ids[i, :n] for i, n in enumerate(lengths)], 0)
    assert where[0].tolist() == [where[1, 0].item(), 0] and where[1, 1] == 7
    with torch.no_grad():
        straight = policy_model(input_ids=batch["input_ids"]).logits
        segmented = policy_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    row, offset = where[1].tolist()
    second = slice(offset, offset + lengths[1])
    assert not torch.allclose(straight[row, second], segmented[row, second], atol=1e-3)


def test_sequence_mask_drops_the_whole_sequence_that_left_the_band(policy_model):
    exp = experience()
    with torch.no_grad():
        trainer_logp, _ = PolicyForward(policy_model)(exp)
    # the engine agrees with the trainer except on sequence 2, which it found 10x likelier per token
    engine = trainer_logp.clone()
    engine[2] += 2.3 * exp.response_mask[2]
    exp = exp._replace(engine_logp=engine)
    masked, stats, _ = loss_and_grads(policy_model, exp, GRPOArgs(seq_is="mask", seq_is_low=0.5, seq_is_high=2.0))
    dropped = exp._replace(advantages=exp.advantages * torch.tensor([1.0, 1.0, 0.0, 1.0]))
    expected, _, _ = loss_and_grads(policy_model, dropped, GRPOArgs())
    assert abs(masked.item() - expected.item()) < 1e-6
    assert stats.is_weight_mean.item() == pytest.approx(4 / 14)  # 10 of the 14 counted tokens are sequence 2's


def test_entropy_bonus_lowers_the_loss_by_the_mean_entropy(policy_model):
    # seq_mean with A = 0 everywhere: the surrogate is 0, so the loss is -coef * mean over sequences of the
    # per-sequence mean entropy
    exp = experience()._replace(advantages=torch.zeros(4))
    loss, stats, grads = loss_and_grads(policy_model, exp, GRPOArgs(entropy_coef=0.5))
    with torch.no_grad():
        _, entropy = PolicyForward(policy_model)(exp)
    mask = exp.response_mask
    expected = -0.5 * ((entropy * mask).sum(1) / mask.sum(1)).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert any(g.abs().sum() > 0 for g in grads.values())  # the bonus alone moves the policy
    _, _, no_bonus = loss_and_grads(policy_model, exp, GRPOArgs())
    assert all((g == 0).all() for g in no_bonus.values())


def test_gspo_on_policy_matches_grpo_seq_mean(policy_model):
    # on-policy (old = logp) every ratio is 1 in both forms; with seq_mean the gradients agree: sum_t A/|y| dlogp_t
    _, gspo_stats, gspo = loss_and_grads(policy_model, experience(), GRPOArgs(ratio_level="sequence"))
    _, _, grpo = loss_and_grads(policy_model, experience(), GRPOArgs())
    assert gspo_stats.ratio_mean.item() == pytest.approx(1.0)
    for name, grad in grpo.items():
        torch.testing.assert_close(gspo[name], grad, rtol=1e-5, atol=1e-7)


def test_a_lora_wrapped_lm_head_is_refused(tiny_model_dir):
    model = add_lora(load_causal_lm(str(tiny_model_dir), "float32"),
                     LoraArgs(r=2, alpha=4, target_modules=["q_proj", "lm_head"]))
    with pytest.raises(ValueError, match="leave lm_head out of --model.lora.target_modules"):
        output_projection(model)


@pytest.mark.parametrize("field, value", [("ratio_level", "sentence"), ("kl_estimator", "k4"),
                                          ("entropy_coef", -0.1), ("seq_is", "clip"), ("seq_is_ratio", "sum"),
                                          ("seq_is_low", 3.0)])
def test_new_grpo_args_name_their_flag(field, value):
    with pytest.raises(ValueError, match=f"--model.grpo.{field}"):
        GRPOArgs(**{field: value})


def test_skipping_zero_advantages_refuses_an_entropy_bonus():
    with pytest.raises(ValueError, match="--model.grpo.entropy_coef 0"):
        GRPOArgs(skip_zero_advantage=True, entropy_coef=0.01)
