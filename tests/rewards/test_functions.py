"""Reward functions as plugins: TRL's signature, the cut-off rule, DAPO's overlong ramp, and how rewards combine."""

from __future__ import annotations

import pytest

from astro_pl.rewards.functions import (
    OverlongPenalty,
    TaskCorrectness,
    VerdictPenalty,
    call_rewards,
    combine_rewards,
    overlong_penalty,
    reward_name,
)
from astro_pl.tasks import GraphTask, MathTask

TASK = MathTask(train=[], test=[])


def test_a_cut_off_completion_has_no_final_answer_even_with_a_correct_earlier_box():
    texts = ["x = \\boxed{5}.", "First \\boxed{5}. But wait, are we solving the problem correctly", "\\boxed{4}"]
    reasons = ["stop", "length", "stop"]
    reward = TaskCorrectness()
    assert reward(completions=texts, answer=["5"] * 3, finish_reason=reasons, task=TASK) == [1.0, -1.0, -1.0]
    # the old rule, named for what it does, scores the cut-off trace by its last complete box
    old = TaskCorrectness(score_truncated=True)
    assert old(completions=texts, answer=["5"] * 3, finish_reason=reasons, task=TASK) == [1.0, 1.0, -1.0]
    with pytest.raises(ValueError, match="correct .* must be > incorrect"):
        TaskCorrectness(correct=0.0, incorrect=0.0)


def test_overlong_ramp_by_hand():
    # max 10, buffer 4: free up to 6 tokens; 8 tokens is halfway down the ramp (-(8-6)/4); 10 and beyond are -1
    assert [overlong_penalty(n, 10, 4) for n in (3, 6, 7, 8, 10, 14)] == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0]
    reward = OverlongPenalty(max_tokens=10, buffer_tokens=4, penalty=2.0)
    assert reward(completion_ids=[[1] * 8, [1] * 2]) == [-1.0, 0.0]
    with pytest.raises(ValueError, match="buffer_tokens"):
        OverlongPenalty(max_tokens=4, buffer_tokens=8)


def test_a_trl_style_function_works_unchanged_and_is_logged_by_its_name():
    def brevity(completions, **kwargs):  # TRL's signature: completions plus the dataset columns as kwargs
        return [-len(c) / 100 for c in completions]

    columns = {"completions": ["ab", "abcd"], "answer": ["1", "1"], "finish_reason": ["stop", "stop"],
               "task": TASK, "prompts": ["p", "p"], "completion_ids": [[1], [1, 2]]}
    values = call_rewards([TaskCorrectness(), brevity], **columns)
    assert values == {"correct": [-1.0, -1.0], "brevity": [-0.02, -0.04]}
    assert reward_name(brevity) == "brevity" and reward_name(OverlongPenalty(4, 2)) == "overlong"


def test_combine_weights_and_skips_none():
    # completion 0: 1*1 + 0.5*(-2) = 0; completion 1: the second reward does not apply (None) -> 1*(-1)
    assert combine_rewards({"a": [1.0, -1.0], "b": [-2.0, None]}, [1.0, 0.5]) == [0.0, -1.0]


@pytest.mark.parametrize("bad", [[float("nan"), 0.0], [1.0], ["1", 0.0], [True, 0.0]])
def test_a_bad_reward_value_names_the_reward(bad):
    def broken(completions, **kwargs):
        return bad

    with pytest.raises(ValueError, match="reward 'broken' returned"):
        call_rewards([broken], completions=["a", "b"])


def test_two_rewards_with_one_name_are_refused():
    def same(completions, **kwargs):
        return [0.0] * len(completions)

    with pytest.raises(ValueError, match="two rewards are named 'same'"):
        call_rewards([same, same], completions=["a"])


def test_verdict_penalty_contrasts_equal_outcomes_by_the_tasks_verdict():
    # two right answers, one after made-up moves (97>45 and 45>84 are no edges): the outcome reward ties them, the
    # look-up verdict does not; a cut-off response still has moves to judge, a response without a look-up has none
    graph = "edges: 45>16 83>30 74>97 55>45 30>31 74>55 92>84 97>92 74>83 | start 74 goal 16"
    clean = "74>97\n\n97>92\n\n92>84 dead\n\nrestart.\n\n74>55\n\n55>45\n\n45>16 \\boxed{74 55 45 16}"
    made_up = clean.replace("97>92", "97>45").replace("92>84", "45>84")
    texts = [clean, made_up, "74>55\n\n55>45\n\n45>", "\\boxed{74 16}"]
    columns = dict(completions=texts, finish_reason=["stop", "stop", "length", "stop"], answer=["74 55 45 16"] * 4,
                   problem=[graph] * 4, id=["g"] * 4, task=GraphTask(num_train=1, num_val=1, num_test=1))
    lookups = VerdictPenalty("edge_lookup_share", scale=2.0)(**columns)
    assert lookups[0] == 0.0 and lookups[1] == -2.0 * 2 / 4 and lookups[2] == 0.0
    assert lookups[3] is None
    assert TaskCorrectness()(**columns)[:2] == [1.0, 1.0]
    # a fault the verdict flags: a claimed path that is no path is a false yes; a cut-off one claims nothing
    assert VerdictPenalty("false_yes", best=0.0)(**columns) == [0.0, 0.0, 0.0, -1.0]
    assert reward_name(VerdictPenalty("false_yes", best=0.0)) == "false_yes"
    with pytest.raises(ValueError, match="no field 'lookup'.*edge_lookup_share"):
        VerdictPenalty("lookup")(**columns)
