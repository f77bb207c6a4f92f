"""Step rewards: spans of a response's text put on the tokens that wrote them, and the task's step faults as one."""

from __future__ import annotations

import pytest

from astro_pl.rewards.steps import StepFaultPenalty, TokenEnds, call_step_rewards, token_step_rewards
from astro_pl.tasks import GraphTask

VOCAB = {1: "74", 2: ">", 3: "97", 4: "\n\n", 5: "45", 6: " dead", 7: "", 8: "é"}


def decode(ids: list[int]) -> str:
    return "".join(VOCAB[i] for i in ids)


def test_char_ends_and_token_rewards_by_hand():
    ids = [1, 2, 3, 4, 3, 2, 5, 6]                 # "74>97\n\n97>45 dead"
    calls = []
    ends = TokenEnds(lambda prefix: calls.append(len(prefix)) or decode(prefix), ids)
    text = decode(ids)
    node = (text.index("45"), text.index("45") + 2)
    assert token_step_rewards(ends, [(*node, -1.0)]) == [0, 0, 0, 0, 0, 0, -1.0, 0]
    assert len(calls) < len(ids)   # found by bisection: not every prefix was decoded
    assert ends[:] == [2, 3, 5, 7, 9, 10, 12, 17] and len(calls) == len(ids)   # and each prefix once
    # a span across two tokens marks both; two spans on one token add; a span inside a token marks it
    assert token_step_rewards(ends, [(0, 3, -0.5), (1, 2, -0.25)]) == [-0.75, -0.5, 0, 0, 0, 0, 0, 0]
    # a token that adds no character (an empty piece) is never blamed
    assert token_step_rewards(TokenEnds(decode, [1, 7, 2]), [(1, 3, -1.0)]) == [-1.0, 0, -1.0]
    assert token_step_rewards([], [(0, 1, -1.0)]) == []


def test_fault_penalty_blames_the_slipped_move_not_the_real_dead_end():
    graph = "edges: 45>16 83>30 74>97 55>45 30>31 74>55 92>84 97>92 74>83 | start 74 goal 16"
    clean = "74>97\n\n97>92\n\n92>84 dead\n\nrestart.\n\n74>55\n\n55>45\n\n45>16 \\boxed{74 55 45 16}"
    slipped = clean.replace("97>92", "97>45").replace("92>84", "45>84")
    columns = dict(completions=[clean, slipped], finish_reason=["stop", "stop"], answer=["74 55 45 16"] * 2,
                   problem=[graph] * 2, id=["g"] * 2, task=GraphTask(num_train=1, num_val=1, num_test=1))
    spans = StepFaultPenalty(penalty=0.5)(**columns)
    # 97>45 is the slip; 45>84 after it is no edge either, but from a made-up node no move is right
    assert spans[0] == [] and [(slipped[a:b], v) for a, b, v in spans[1]] == [("45", -0.5)]
    # the unfinished last step of a cut-off completion is no fault; a finished one that is no move is
    cut = dict(columns, completions=["74>97\n\n97>", "74>97\n\n97>"], finish_reason=["length", "stop"])
    assert StepFaultPenalty()(**cut) == [[], [(7, 10, -1.0)]]
    # one character per token: the faulty node's two tokens get the penalty, nothing else does
    ends = [list(range(1, len(t) + 1)) for t in columns["completions"]]
    values = call_step_rewards([StepFaultPenalty(penalty=0.5)], ends, **columns)["step_faults"]
    assert sum(values[0]) == 0 and sum(values[1]) == -1.0
    assert [slipped[t] for t, v in enumerate(values[1]) if v] == ["4", "5"]


def test_bad_step_rewards_are_refused_by_name():
    with pytest.raises(ValueError, match="penalty must be > 0"):
        StepFaultPenalty(penalty=0.0)

    def short(completions, **kwargs):
        return []

    with pytest.raises(ValueError, match="'short' returned 0 span lists for 1 completions"):
        call_step_rewards([short], [[1]], completions=["a"])

    def nan(completions, **kwargs):
        return [[(0, 1, float("nan"))]]

    with pytest.raises(ValueError, match="'nan' returned .*all finite numbers"):
        call_step_rewards([nan], [[1]], completions=["a"])
