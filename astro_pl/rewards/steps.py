"""Step rewards: rewards on the tokens of one step of a response, so RL blames the step that went wrong.

An outcome reward scores the whole response, and every token shares its advantage: a made-up move is punished only
when the answer ends wrong, as much as the moves around it, and not at all in a group whose outcomes are all equal.
Where a domain can check one step by its rules (a graph's move along a prompt edge), a step reward puts a value on
that step's tokens alone, whether the response later recovers or not; a slip is then told apart from a dead end
reached along real edges, which is the search exploring.

A step reward is called like an outcome reward (`astro_pl.rewards.functions`: TRL's keyword columns) and returns,
per completion, `(start, end, value)` character spans of its text. RL adds each value to the advantage of every
token overlapping its span (`token_step_rewards`), after the group normalisation of the outcome rewards.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence

from astro_pl.rewards.functions import problem_at, reward_name

StepSpan = tuple[int, int, float]
"""Characters [start, end) of a completion's text and the reward of the step they hold."""
StepRewardFn = Callable[..., list[list[StepSpan]]]


class StepFaultPenalty:
    """`-penalty` on each step the task's rules reject (`Task.step_faults`; the graph task: a move along no prompt
    edge, a "dead" said where the node goes on, a paragraph that is no step), a process reward that needs no
    learnt judge. The unfinished last step of a cut-off completion is not blamed (the cut-off outcome is).

    Args:
        penalty: Added (negated) to the advantage of each faulty step's tokens; the outcome advantage is about 1
            in size under GRPO's group-std scaling.
    """

    __name__ = "step_faults"

    def __init__(self, penalty: float = 1.0):
        if penalty <= 0:
            raise ValueError(f"StepFaultPenalty: penalty must be > 0, got {penalty}")
        self.penalty = penalty

    def __call__(self, completions: Sequence[str], finish_reason: Sequence[str], task, **columns
                 ) -> list[list[StepSpan]]:
        out = []
        for i, (text, reason) in enumerate(zip(completions, finish_reason, strict=True)):
            faults = task.step_faults(problem_at(columns, i), text)
            out.append([(start, end, -self.penalty) for start, end in faults
                        if not (reason == "length" and end == len(text))])
        return out


class TokenEnds(Sequence[int]):
    """Where each token's text ends in a decoded completion, `len(decode(ids[:t + 1]))`, worked out only where
    asked and kept: a completion's few spans need a few of its tokens, found by bisection, and decoding a prefix
    costs its length (all of them would be quadratic in a long answer). Decoding prefixes, not tokens one by one,
    keeps multi-byte characters and a tokenizer's spacing rules exact."""

    def __init__(self, decode: Callable[[list[int]], str], token_ids: Sequence[int]):
        self.decode, self.token_ids, self.known = decode, list(token_ids), {}

    def __len__(self) -> int:
        return len(self.token_ids)

    def __getitem__(self, t):
        if isinstance(t, slice):
            return [self[i] for i in range(len(self))[t]]
        if not 0 <= t < len(self):
            raise IndexError(t)
        if t not in self.known:
            self.known[t] = len(self.decode(self.token_ids[: t + 1]))
        return self.known[t]


def token_step_rewards(char_ends: Sequence[int], spans: Sequence[StepSpan]) -> list[float]:
    """Per-token sums of the step rewards whose span overlaps the token's characters [previous end, end).

    Args:
        char_ends: Where each token's text ends (nondecreasing; `TokenEnds`).
        spans: The completion's steps and their rewards.
    """
    rewards = [0.0] * len(char_ends)
    for start, end, value in spans:
        t = bisect.bisect_right(char_ends, start)  # the first token that ends after the span starts
        begin = char_ends[t - 1] if t > 0 else 0
        while t < len(char_ends) and begin < end:
            stop = char_ends[t]
            if stop > begin:  # a token that adds no character holds no step
                rewards[t] += value
            begin, t = stop, t + 1
    return rewards


def call_step_rewards(fns: Sequence[StepRewardFn], char_ends: Sequence[Sequence[int]], **columns
                      ) -> dict[str, list[list[float]]]:
    """Each step reward's per-token values on one batch ([completion][token]), checked like outcome rewards.

    Args:
        fns: Step reward functions.
        char_ends: Per completion, where each token's text ends (`TokenEnds`).
        columns: The reward call's keyword columns (`completions`, problem fields, `task`, ...).
    """
    count = len(columns["completions"])
    out: dict[str, list[list[float]]] = {}
    for fn in fns:
        name = reward_name(fn)
        spans = list(fn(**columns))
        if len(spans) != count:
            raise ValueError(f"step reward {name!r} returned {len(spans)} span lists for {count} completions")
        for completion_spans in spans:
            for span in completion_spans:
                if len(span) != 3 or not all(isinstance(v, int | float) and math.isfinite(v) for v in span):
                    raise ValueError(f"step reward {name!r} returned {span!r}; a step is (start, end, value), "
                                     "all finite numbers")
        if name in out:
            raise ValueError(f"two step rewards are named {name!r}; give one a distinct __name__")
        out[name] = [token_step_rewards(ends, completion_spans) for ends, completion_spans
                     in zip(char_ends, spans, strict=True)]
    return out
