"""Packing rollouts into tensors and planning micro-batches, on hand-built groups and lengths."""

import pytest
import torch

from astro_pl.modules.experience import Group, pack_experience, plan_micro_batches
from astro_pl.rollout.base import Completion


def test_pack_aligns_response_mask_and_engine_logprobs_with_shifted_positions():
    groups = [Group([1, 2, 3], [Completion("", [7, 8], [-0.5, -0.25], "stop"),
                                Completion("", [9, 9, 9], [-1.0, -2.0, -3.0], "length")], [1.0, -1.0], "x")]
    exp = pack_experience(groups, torch.tensor([1.0, -1.0]), pad_id=0, mask_truncated=True)
    assert exp.input_ids.tolist() == [[1, 2, 3, 7, 8, 0], [1, 2, 3, 9, 9, 9]]
    assert exp.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]
    # column t scores token t+1: the response starts at token 3, so at column 2; the truncated row counts nothing
    assert exp.response_mask.tolist() == [[0, 0, 1, 1, 0], [0, 0, 0, 0, 0]]
    assert exp.engine_logp[0].tolist() == [0, 0, -0.5, -0.25, 0]


def test_step_rewards_add_to_the_sequence_advantage_on_their_tokens_only():
    groups = [Group([1, 2], [Completion("", [7, 8, 9], [-0.5] * 3, "stop"), Completion("", [9], [-1.0], "stop")],
                    [1.0, -1.0], "x", [[0.0, -2.0, 0.0], [0.0]]),
              Group([1], [Completion("", [5, 6], [-0.1] * 2, "stop"), Completion("", [6], [-0.1], "stop")],
                    [1.0, 1.0], "y")]
    exp = pack_experience(groups, torch.tensor([0.5, -0.5, 0.0, 0.0]), pad_id=0)
    # [N, L-1]: the response of row 0 is scored at columns 1..3; its second token carries 0.5 - 2
    assert exp.advantages.tolist() == [[0, 0.5, -1.5, 0.5], [0, -0.5, 0, 0], [0.0, 0, 0, 0], [0.0, 0, 0, 0]]
    assert exp.advantages.shape == exp.response_mask.shape
    assert exp.select(torch.tensor([1])).advantages.tolist() == [[0, -0.5]]   # trimmed with the rows
    plain = pack_experience(groups[1:], torch.tensor([0.5, -0.5]), pad_id=0)
    assert plain.advantages.tolist() == [0.5, -0.5]   # no step rewards: one advantage per sequence, as before
    with pytest.raises(ValueError, match="completion 1 has 1 tokens but 2 step rewards"):
        pack_experience([groups[0]._replace(step_rewards=[[0.0] * 3, [0.0, 0.0]])], torch.zeros(2), pad_id=0)


def test_plan_sorts_longest_first_and_caps_sequences():
    lengths = torch.tensor([3, 9, 5, 9, 1])
    plan = plan_micro_batches(lengths, max_sequences=2)
    assert [p.tolist() for p in plan] == [[1, 3], [2, 0], [4]]


def test_plan_caps_padded_tokens_and_gives_a_long_sequence_its_own_batch():
    lengths = torch.tensor([4, 4, 12, 2, 2, 2, 4])
    plan = plan_micro_batches(lengths, max_sequences=8, max_tokens=10)
    # 12 alone (over the cap); then 4, 4 (a third 4 would make 12 > 10); then 4 with a 2 (padded: 8); two 2s
    assert [p.tolist() for p in plan] == [[2], [0, 1], [6, 3], [4, 5]]
    for p in plan[1:]:
        assert len(p) * int(lengths[p].max()) <= 10


@pytest.mark.parametrize("count", [3, 4, 6])
def test_plan_to_a_count_splits_the_biggest_batches_and_keeps_every_sequence_once(count):
    lengths = torch.tensor([8, 7, 6, 5, 4, 3])
    plan = plan_micro_batches(lengths, max_sequences=4, count=count)
    assert len(plan) == count
    assert sorted(torch.cat(plan).tolist()) == list(range(6))
    assert all(len(p) >= 1 for p in plan)


def test_plan_to_an_impossible_count_says_why():
    with pytest.raises(ValueError, match="cannot split 3 sequences into 4"):
        plan_micro_batches(torch.tensor([1, 2, 3]), max_sequences=1, count=4)
    with pytest.raises(ValueError, match="at least 2 needed"):
        plan_micro_batches(torch.tensor([1, 2, 3]), max_sequences=2, count=1)
