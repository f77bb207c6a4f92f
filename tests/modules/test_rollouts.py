"""Rollout collection as a function: reward columns in TRL's layout, dynamic sampling's draws, the step's metrics."""

from __future__ import annotations

import pytest

from astro_pl.data.problems import Problem
from astro_pl.modules.rollouts import collect_rollouts, reward_columns, rollout_metrics
from astro_pl.rewards.functions import OverlongPenalty, TaskCorrectness
from astro_pl.rollout.base import Completion, SamplingArgs
from astro_pl.tasks import ArithmeticTask

TASK = ArithmeticTask()


class AnswerEngine:
    """Answers prompt i of a call with `answers[i]` for every sample (fixed lengths), recording the seeds it got."""

    def __init__(self, answers_per_call: list[list[list[str]]]):
        self.answers_per_call, self.seeds = iter(answers_per_call), []

    def generate(self, prompts, params: SamplingArgs):
        self.seeds.append(params.seed)
        out = []
        for texts in next(self.answers_per_call):
            out.append([Completion(t, [1] * (3 if t.startswith("\\") else 9), [], "length" if "cut" in t else "stop")
                        for t in texts])
        return out


def problems(*golds: str) -> list[Problem]:
    return [Problem(f"p{g}", f"Evaluate {g} + 0.", g) for g in golds]


def render(batch):
    return [p.problem for p in batch], [[7, len(p.problem)] for p in batch]


def test_reward_columns_repeat_problem_fields_over_each_group():
    batch = problems("1", "2")
    outputs = [[Completion("a", [1], [], "stop")] * 2, [Completion("b", [1, 2], [], "length")] * 2]
    columns = reward_columns(batch, ["P1", "P2"], outputs, TASK)
    assert columns["completions"] == ["a", "a", "b", "b"] and columns["answer"] == ["1", "1", "2", "2"]
    assert columns["prompts"] == ["P1", "P1", "P2", "P2"] and columns["finish_reason"][2:] == ["length"] * 2
    assert columns["completion_ids"][2] == [1, 2] and columns["id"] == ["p1", "p1", "p2", "p2"]
    assert columns["task"] is TASK


def test_dynamic_sampling_draws_until_enough_mixed_groups():
    draws = iter([problems("1", "2"), problems("3", "4"), problems("5", "6")])
    # draw 0: group 1 mixed, group 2 all right; draw 1: group 3 mixed (enough: 2 groups wanted)
    engine = AnswerEngine([[["\\boxed{1}", "\\boxed{9}"], ["\\boxed{2}", "\\boxed{2}"]],
                           [["\\boxed{3}", "\\boxed{0}"], ["\\boxed{0}", "\\boxed{0}"]]])
    out = collect_rollouts(engine, lambda: next(draws), render, SamplingArgs(n=2), lambda d: 100 + d,
                           [TaskCorrectness()], [1.0], TASK, dynamic_sampling=True, max_extra_draws=5)
    assert engine.seeds == [100, 101] and out.wanted == 2
    assert [g.answer for g in out.buffer.groups] == ["1", "3"] and out.buffer.drawn == 4 and out.buffer.dropped == 2
    assert out.reward_values["correct"] == [1.0, -1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0]


def test_prompts_running_out_during_extra_draws_end_the_draws_not_the_run():
    # draw 0: one mixed group of two wanted; the loader is exhausted before the extra draw (a run bounded by
    # limit_train_batches): the step keeps what it has, and a step that can draw nothing ends the epoch
    draws = iter([problems("1", "2")])
    engine = AnswerEngine([[["\\boxed{1}", "\\boxed{9}"], ["\\boxed{2}", "\\boxed{2}"]]])
    out = collect_rollouts(engine, lambda: next(draws), render, SamplingArgs(n=2), lambda d: d,
                           [TaskCorrectness()], [1.0], TASK, dynamic_sampling=True, max_extra_draws=5)
    assert [g.answer for g in out.buffer.groups] == ["1"] and out.wanted == 2 and out.buffer.drawn == 2
    with pytest.raises(StopIteration):
        collect_rollouts(engine, lambda: next(draws), render, SamplingArgs(n=2), lambda d: d,
                         [TaskCorrectness()], [1.0], TASK, dynamic_sampling=True, max_extra_draws=5)


def test_without_dynamic_sampling_one_draw_and_weighted_rewards():
    engine = AnswerEngine([[["\\boxed{1}", "cut \\boxed{1}"]]])
    rewards = [TaskCorrectness(), OverlongPenalty(max_tokens=9, buffer_tokens=6)]
    out = collect_rollouts(engine, lambda: problems("1"), render, SamplingArgs(n=2), lambda d: 0, rewards,
                           [1.0, 0.5], TASK)
    # sample 0: right, 3 tokens (no penalty) -> 1; sample 1: cut off (wrong), 9 tokens (-1 at the budget) -> -1.5
    assert out.buffer.groups[0].rewards == [1.0, -1.5]
    metrics = rollout_metrics(out, kept=1, correct_reward=1.0)
    assert metrics["rollout/truncated_frac"] == 0.5 and metrics["reward/accuracy"] == 0.5
    assert metrics["reward/correct"] == 0.0 and metrics["reward/overlong"] == -0.5 and metrics["reward/mean"] == -0.25


def test_rollout_backtracks_count_the_phrases_they_are_given():
    engine = AnswerEngine([[["74>97 dead\n\nrestart.\n\n74>83 \\boxed{1}", "restart. restart. \\boxed{1}"]]])
    out = collect_rollouts(engine, lambda: problems("1"), render, SamplingArgs(n=2), lambda d: 0, [TaskCorrectness()],
                           [1.0], TASK)
    assert rollout_metrics(out, kept=1)["rollout/backtracks"] == 0.0  # the default phrases are not the graph's
    assert rollout_metrics(out, kept=1, backtrack_phrases=["restart."])["rollout/backtracks"] == 1.5


class CharEngine:
    """One token per character (id = code point), so a step's characters are its tokens."""

    def __init__(self, texts_per_call: list[list[list[str]]]):
        self.texts_per_call = iter(texts_per_call)

    def generate(self, prompts, params: SamplingArgs):
        return [[Completion(t, [ord(c) for c in t], [], "stop") for t in texts] for texts in next(self.texts_per_call)]


def slips(completions, **kwargs):
    """A step reward: -1 on each "slip" a completion writes."""
    return [[(i, i + 4, -1.0) for i in range(len(t)) if t.startswith("slip", i)] for t in completions]


def test_a_step_reward_marks_its_tokens_and_keeps_a_tied_group_that_has_a_slip():
    draws = iter([problems("1", "2"), problems("3")])
    # draw 0: both groups all right, only group 1 has a slip; draw 1: a mixed group
    engine = CharEngine([[["slip \\boxed{1}", "\\boxed{1}"], ["\\boxed{2}", "\\boxed{2}"]],
                         [["\\boxed{3}", "\\boxed{0}"]]])
    out = collect_rollouts(engine, lambda: next(draws), render, SamplingArgs(n=2), lambda d: d, [TaskCorrectness()],
                           [1.0], TASK, dynamic_sampling=True, max_extra_draws=3, step_rewards=[slips],
                           decode=lambda ids: "".join(map(chr, ids)))
    assert [g.answer for g in out.buffer.groups] == ["1", "3"] and out.buffer.dropped == 1
    marked = out.buffer.groups[0].step_rewards
    assert marked[0][:5] == [-1.0, -1.0, -1.0, -1.0, 0.0] and not any(marked[0][5:]) and not any(marked[1])
    assert out.reward_values["slips"] == [-4.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert rollout_metrics(out, kept=2)["reward/slips"] == -4.0 / 6
    correct_steps = type("Named", (), {"__name__": "correct", "__call__": staticmethod(slips)})()
    with pytest.raises(ValueError, match="a reward and a step reward are both named 'correct'"):
        collect_rollouts(CharEngine([[["a", "b"]]]), lambda: problems("1"), render, SamplingArgs(n=2), lambda d: 0,
                         [TaskCorrectness()], [1.0], TASK, step_rewards=[correct_steps], decode=lambda ids: "")
    with pytest.raises(ValueError, match="step rewards need `decode`"):
        collect_rollouts(CharEngine([[["a", "b"]]]), lambda: problems("1"), render, SamplingArgs(n=2), lambda d: 0,
                         [TaskCorrectness()], [1.0], TASK, step_rewards=[slips])
