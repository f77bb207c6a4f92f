"""RL reward functions as plugins, in TRL's reward-function signature, and how several are combined.

A reward function is called once per rollout batch as `fn(prompts=..., completions=..., completion_ids=...,
finish_reason=..., <problem fields>, task=...)` and returns one float (or None: "does not apply") per completion.
Problem fields (`answer`, `problem`, `id`, `solution`, `subject`, `level`) come as lists aligned with the
completions, as TRL passes dataset columns, so a TRL reward function (`def f(completions, **kwargs)`) works
unchanged. RL takes a list of them with weights (`RLModule(rewards=[...], reward_weights=[...])`: class paths with
init args, or dotted paths of plain functions); each is logged under its own name. Default: `TaskCorrectness`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from astro_pl.data.problems import PROBLEM_FIELDS, Problem

RewardFn = Callable[..., list[float | None]]


class TaskCorrectness:
    """ASTRO's outcome reward: `correct` when the task's checker accepts the response's final answer, else
    `incorrect`. A completion cut off at the token limit has no final answer, so it gets `incorrect` even when an
    earlier attempt boxed the right one (ASTRO traces box every attempt before doubting it; scoring the last box of
    a cut-off trace would reward boxing candidates until the budget runs out).

    Args:
        correct: Reward of a correct final answer (paper: +1).
        incorrect: Reward of a wrong, missing or cut-off answer (paper: -1).
        score_truncated: Score cut-off completions by their last complete box anyway (the old, hackable rule).
    """

    __name__ = "correct"

    def __init__(self, correct: float = 1.0, incorrect: float = -1.0, score_truncated: bool = False):
        if not correct > incorrect:
            raise ValueError(f"TaskCorrectness: correct ({correct}) must be > incorrect ({incorrect})")
        self.correct, self.incorrect, self.score_truncated = correct, incorrect, score_truncated

    def __call__(self, completions: Sequence[str], answer: Sequence[str], finish_reason: Sequence[str], task,
                 **kwargs) -> list[float]:
        rewards = []
        for text, gold, reason in zip(completions, answer, finish_reason, strict=True):
            extracted = task.final_answer(text, reason, self.score_truncated)
            ok = extracted is not None and task.check(extracted, gold)
            rewards.append(self.correct if ok else self.incorrect)
        return rewards


class OverlongPenalty:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13): 0 up to `max_tokens - buffer_tokens`, then a
    linear ramp to `-penalty` at `max_tokens`, and `-penalty` beyond; added to the correctness reward.

    Args:
        max_tokens: The generation budget L_max (usually the sampling `max_tokens`).
        buffer_tokens: Length of the ramp L_cache.
        penalty: Punishment at and beyond `max_tokens`.
    """

    __name__ = "overlong"

    def __init__(self, max_tokens: int, buffer_tokens: int, penalty: float = 1.0):
        if not 0 < buffer_tokens <= max_tokens:
            raise ValueError(f"OverlongPenalty: need 0 < buffer_tokens <= max_tokens, got {buffer_tokens} and "
                             f"{max_tokens}")
        self.max_tokens, self.buffer_tokens, self.penalty = max_tokens, buffer_tokens, penalty

    def __call__(self, completion_ids: Sequence[Sequence[int]], **kwargs) -> list[float]:
        return [overlong_penalty(len(ids), self.max_tokens, self.buffer_tokens, self.penalty) for ids in completion_ids]


class VerdictPenalty:
    """A process reward from the task's own verdict on a response (`Task.judge`, what `astro eval` reports):
    `-scale * |verdict[field] - best|`, and None ("does not apply") where the task gives that field no value. The
    outcome reward says only whether the final answer is right; a verdict such as the graph task's
    `edge_lookup_share` (the share of moves along a prompt edge) also tells apart two right answers, one of which
    made up a move in an abandoned attempt, and two wrong ones, so a group of equal outcomes still has a contrast.

    Args:
        field: A numeric or true/false field of the task's verdict (`GraphTask.judge`: `edge_lookup_share`,
            `false_yes`, ...).
        best: The verdict's best value (1.0 for a share that should be whole, 0.0 for a fault such as `false_yes`).
        scale: Penalty per unit of distance from `best`.
        score_truncated: Judge the final answer of a cut-off completion anyway (as `TaskCorrectness`).
    """

    def __init__(self, field: str, best: float = 1.0, scale: float = 1.0, score_truncated: bool = False):
        if scale <= 0:
            raise ValueError(f"VerdictPenalty: scale must be > 0, got {scale}")
        self.field, self.best, self.scale, self.score_truncated = field, best, scale, score_truncated
        self.__name__ = field

    def __call__(self, completions: Sequence[str], finish_reason: Sequence[str], task, **columns) -> list[float | None]:
        rewards: list[float | None] = []
        for i, (text, reason) in enumerate(zip(completions, finish_reason, strict=True)):
            problem = problem_at(columns, i)
            verdict = task.judge(problem, text, task.final_answer(text, reason, self.score_truncated))
            if self.field not in verdict and verdict:
                raise ValueError(f"VerdictPenalty: the task's verdict has no field {self.field!r}; it has "
                                 f"{sorted(verdict)}")
            value = verdict.get(self.field)
            rewards.append(None if value is None else -self.scale * abs(float(value) - self.best))
        return rewards


def problem_at(columns: dict, i: int) -> Problem:
    """Completion i's problem, rebuilt from the problem-field columns of a reward call."""
    return Problem(**{name: columns[name][i] for name in PROBLEM_FIELDS if name in columns})


def overlong_penalty(length: int, max_tokens: int, buffer_tokens: int, penalty: float = 1.0) -> float:
    """0 for length <= max - buffer; -penalty * (length - (max - buffer)) / buffer up to max; -penalty beyond."""
    start = max_tokens - buffer_tokens
    if length <= start:
        return 0.0
    return -penalty * min(length - start, buffer_tokens) / buffer_tokens


def reward_name(fn: RewardFn) -> str:
    """The name a reward is logged under: its `__name__` (functions, and classes that set one), else its class."""
    return getattr(fn, "__name__", None) or type(fn).__name__


def combine_rewards(per_reward: dict[str, list[float | None]], weights: Sequence[float]) -> list[float]:
    """Weighted sum over reward functions per completion; a None ("does not apply") adds nothing, as TRL's nansum.

    Args:
        per_reward: Each reward's values in call order, all of one length [N].
        weights: One weight per reward, in the same order.
    """
    columns = list(per_reward.values())
    totals = []
    for values in zip(*columns, strict=True):
        totals.append(sum(w * v for w, v in zip(weights, values, strict=True) if v is not None))
    return totals


def call_rewards(fns: Sequence[RewardFn], **columns) -> dict[str, list[float | None]]:
    """Each reward function's values on one batch, checked: one finite float or None per completion."""
    count = len(columns["completions"])
    out: dict[str, list[float | None]] = {}
    for fn in fns:
        name = reward_name(fn)
        values = list(fn(**columns))
        if len(values) != count:
            raise ValueError(f"reward {name!r} returned {len(values)} values for {count} completions")
        for value in values:
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or not math.isfinite(value)):
                raise ValueError(f"reward {name!r} returned {value!r}; rewards must be finite floats or None")
        if name in out:
            raise ValueError(f"two rewards are named {name!r}; give one a distinct __name__")
        out[name] = [None if v is None else float(v) for v in values]
    return out
