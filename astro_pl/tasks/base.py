"""The task interface: one domain's problems, prompt, answer check and, where it has them, a search environment.

Search, RL and evaluation each take one `Task` (YAML: `class_path` + `init_args`), so one block of YAML describes
a domain once: `astro search` expands its training problems, `astro fit` (RL) samples prompts from them and scores
answers with its checker, `astro eval` evaluates its test sets. A user's own task is one subclass in their own
module, named by class path (README, "Your own task").

The search-facing records (`State`, `Step`, `StepProposer`) live here because a task's scripted teacher implements
them; `astro_pl.search` builds on them and never the other way round.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Literal, NamedTuple, Protocol, runtime_checkable

from astro_pl.data.chat import render_prompt
from astro_pl.data.problems import Problem
from astro_pl.rewards.math import answers_match, extract_final_answer

Split = Literal["train", "val", "test"]


class State(NamedTuple):
    """A problem and the steps written so far (the root state has no steps)."""

    problem: str
    steps: tuple[str, ...] = ()


class Step(NamedTuple):
    """One proposed next step."""

    text: str
    prior: float
    """P(a|s), normalised over the siblings proposed in the same call."""
    terminal: bool
    answer: str | None
    """The final answer the step states (None if it states none)."""


class ReadStep(NamedTuple):
    """A model's step as its domain reads it (`Task.read_step`)."""

    text: str
    terminal: bool
    answer: str | None


@runtime_checkable
class StepProposer(Protocol):
    """Proposes next steps and rolls states out to final answers, for many states per call."""

    def propose(self, states: Sequence[State], k: int) -> list[list[Step]]:
        """Up to `k` candidate next steps for each state."""
        ...

    def rollout(self, states: Sequence[State], m: int) -> list[list[str | None]]:
        """Final answers (None where none was reached) of `m` rollouts from each state."""
        ...


def normalise(weights: Sequence[float]) -> list[float]:
    """Weights scaled to sum to 1 (uniform when they sum to 0)."""
    total = sum(weights)
    return [w / total for w in weights] if total > 0 else [1.0 / len(weights)] * len(weights)


class Task(ABC):
    """A domain. Subclasses implement `problems`; the rest defaults to math with a final `\\boxed{}` answer.

    Args:
        system_prompt: Optional system turn placed before every problem (search, RL and evaluation alike).
    """

    def __init__(self, system_prompt: str | None = None):
        self.system_prompt = system_prompt

    @abstractmethod
    def problems(self, split: Split) -> dict[str, list[Problem]]:
        """The problem sets of `split` by report name ("train" and "val" usually hold one set, "test" several)."""

    def prompt(self, tokenizer, problem: Problem) -> str:
        """The rendered prompt (chat template applied), ending where the model's answer starts."""
        return render_prompt(tokenizer, problem.problem, self.system_prompt)

    def extract_answer(self, text: str) -> str | None:
        """The final answer a response states, or None."""
        return extract_final_answer(text)

    def final_answer(self, text: str, finish_reason: str, score_truncated: bool = False) -> str | None:
        """The answer a sampled response gives: none when it was cut off at the token limit, since a cut-off ASTRO
        trace has boxed candidates before doubting them (`score_truncated` takes its last box anyway)."""
        if finish_reason == "length" and not score_truncated:
            return None
        return self.extract_answer(text)

    def check(self, answer: str, gold: str) -> bool:
        """Whether an extracted answer equals the gold one (also groups equal wrong answers in search)."""
        return answers_match(answer, gold)

    def is_correct(self, text: str, problem: Problem) -> bool:
        """Whether a whole response ends at the right answer."""
        answer = self.extract_answer(text)
        return answer is not None and self.check(answer, problem.answer)

    def judge(self, problem: Problem, text: str, answer: str | None) -> dict[str, bool | int | float | None]:
        """The task's own verdicts on one response (`answer`: its final answer as scored, None when cut off);
        `astro eval` reports each key's mean over the responses where it is not None. None by default."""
        return {}

    def step_faults(self, problem: Problem, text: str) -> list[tuple[int, int]]:
        """Character spans `[start, end)` of `text` where a step breaks the domain's rules (a move along no edge
        of the prompt's graph): what a step reward (`astro_pl.rewards.steps.StepFaultPenalty`) blames, on those
        tokens only. None found by default."""
        return []

    def read_step(self, state: State, text: str) -> ReadStep | None:
        """How the domain reads a step a model wrote after `state` (`astro search --proposer llm`): the step as the
        tree keeps it, or None when it is no legal step (the proposer drops it, as it drops an empty sample). By
        default any text is a step, terminal when it states a final answer. A domain with rules (a graph's edges, a
        game's moves) overrides this, so the environment, not the model's own words, says where a path ends."""
        answer = self.extract_answer(text)
        return ReadStep(text, answer is not None, answer)

    def teacher(self) -> StepProposer | None:
        """A scripted step proposer for search (an environment standing in for a model), if the domain has one."""
        return None

    def sound(self, problem: str, steps: Sequence[str]) -> bool:
        """Whether every step of a correct path is right (the soundness judge of search); only for tasks whose
        `has_judge` is True."""
        raise NotImplementedError(f"{type(self).__name__} has no soundness judge")

    @property
    def has_judge(self) -> bool:
        return type(self).sound is not Task.sound


def flat_problems(task: Task, split: Split, limit: int | None = None) -> list[Problem]:
    """Every problem of `split` in order (sets concatenated), the first `limit` of them when given."""
    if limit is not None and limit < 0:
        raise ValueError(f"--limit must be >= 0, got {limit}")
    problems = [p for sets in task.problems(split).values() for p in sets]
    return problems[:limit] if limit is not None else problems


def describe_task(task: Task) -> dict:
    """The task's class and settings as JSON data: what run records keep, and compare to refuse mixing runs."""

    def plain(value):
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return plain(dataclasses.asdict(value))
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value if value is None or isinstance(value, str | int | float | bool) else repr(value)

    return {"class_path": f"{type(task).__module__}.{type(task).__qualname__}", "init": plain(vars(task))}
