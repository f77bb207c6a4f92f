"""Where MCTS gets its candidate steps and rollouts: the `StepProposer` protocol and its two implementations.

- `LLMStepProposer` (the real path): prompts a model through any `RolloutEngine` for the next step of a partial
  solution (sampling stops at the step delimiter) and for rollouts to a final answer. One engine call carries the
  expansions (or the rollouts) of every state passed in, so MCTS batches across trees and across a node's samples.
- `ScriptedArithmeticTeacher`: an *environment* for the synthetic arithmetic domain, not a model. It reduces
  "Evaluate 7 + 5 * 3 - 2." one operation per step in precedence order and makes a mistake (a result off by a
  little, or the wrong operation first) with a configurable probability, so a CPU run yields real trees with
  both correct and incorrect terminals. Its draws for a state come from a stream seeded by that state, so a
  problem's tree does not depend on which trees share a batch (shards and resumed runs grow the same trees).
- `ArithmeticStepJudge`: the same environment as a soundness judge. It keeps a correct terminal only if every
  step on its path is the right operation with the right result, so a lucky path (a wrong step that a second
  mistake cancels) is not taught as the correct solution.

Departure from the paper: the prior of a step is exp(mean token log-prob) normalised over its siblings (the
paper's "length-normalised likelihood", whose exact form is not published).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

from astro_pl.datamodules.chat import render_prompt
from astro_pl.datamodules.problems import evaluate_tokens, format_tokens, parse_arithmetic
from astro_pl.rewards.math import extract_final_answer
from astro_pl.rollout.base import Completion, RolloutEngine, SamplingArgs

if TYPE_CHECKING:
    from astro_pl.search.tree import SearchTree


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


# ---- LLM proposer ------------------------------------------------------------------------------------------


@dataclass
class LLMProposerArgs:
    """How the LLM proposer prompts and samples.

    Args:
        few_shot: Worked examples (problem and step-by-step solution, steps separated by the delimiter), put
            before the problem in the user turn.
        system_prompt: Optional system turn.
        step_delimiter: Separates steps; sampling a step stops here.
        temperature: Sampling temperature for steps and rollouts.
        top_p: Nucleus mass for steps and rollouts.
        max_step_tokens: Most tokens of one step.
        max_rollout_tokens: Most tokens of a rollout to the final answer.
        seed: Base sampling seed; each engine call uses the next block of seeds.
    """

    few_shot: list[str] = field(default_factory=list)
    system_prompt: str | None = None
    step_delimiter: str = "\n\n"
    temperature: float = 1.0
    top_p: float = 1.0
    max_step_tokens: int = 128
    max_rollout_tokens: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.step_delimiter:
            raise ValueError("--llm.step_delimiter must be non-empty")
        if self.temperature <= 0:
            raise ValueError(f"--llm.temperature must be > 0 (search needs diverse samples), got {self.temperature}")
        if self.max_step_tokens < 1 or self.max_rollout_tokens < 1:
            raise ValueError("--llm.max_step_tokens and --llm.max_rollout_tokens must be >= 1")


class LLMStepProposer:
    """Steps and rollouts sampled from a language model through a `RolloutEngine`."""

    def __init__(self, engine: RolloutEngine, tokenizer, args: LLMProposerArgs | None = None):
        self.engine, self.tokenizer, self.args = engine, tokenizer, args or LLMProposerArgs()
        self._calls = 0

    def prompt(self, state: State) -> str:
        """Rendered problem (few-shot examples first) followed by the partial solution and a delimiter."""
        delim = self.args.step_delimiter
        user = delim.join([*self.args.few_shot, state.problem])
        text = render_prompt(self.tokenizer, user, self.args.system_prompt)
        return text + "".join(step + delim for step in state.steps)

    def _sampling(self, n: int, max_tokens: int, stop: tuple[str, ...], logprobs: bool) -> SamplingArgs:
        # A fresh seed block per call: prompt i of call c samples with seed + c * 2**20 + i.
        seed = self.args.seed + self._calls * (1 << 20)
        self._calls += 1
        return SamplingArgs(n=n, temperature=self.args.temperature, top_p=self.args.top_p, max_tokens=max_tokens,
                            stop=stop, seed=seed, logprobs=logprobs)

    def propose(self, states: Sequence[State], k: int) -> list[list[Step]]:
        if not states:
            return []
        params = self._sampling(k, self.args.max_step_tokens, (self.args.step_delimiter,), logprobs=True)
        outputs = self.engine.generate([self.prompt(s) for s in states], params)
        return [self._steps(completions) for completions in outputs]

    def _steps(self, completions: Sequence[Completion]) -> list[Step]:
        # An empty completion (the model ended, or wrote only the delimiter) is no step: it is dropped, so it never
        # becomes a node, a terminal or an empty paragraph of a trace; priors are normalised over the steps kept.
        kept = [(c, c.text.strip()) for c in completions if c.text.strip()]
        weights = [math.exp(sum(c.logprobs) / len(c.logprobs)) if c.logprobs else 0.0 for c, _ in kept]
        steps = []
        for (_, text), prior in zip(kept, normalise(weights) if kept else [], strict=True):
            answer = extract_final_answer(text)
            steps.append(Step(text=text, prior=prior, terminal=answer is not None, answer=answer))
        return steps

    def rollout(self, states: Sequence[State], m: int) -> list[list[str | None]]:
        if not states:
            return []
        params = self._sampling(m, self.args.max_rollout_tokens, (), logprobs=False)  # only the answer counts
        outputs = self.engine.generate([self.prompt(s) for s in states], params)
        return [[extract_final_answer(c.text) for c in completions] for completions in outputs]


# ---- synthetic arithmetic teacher --------------------------------------------------------------------------

_NOW = re.compile(r"Now we have (-?\d+(?: [+*-] -?\d+)*)\.$")


@dataclass
class TeacherArgs:
    """The scripted arithmetic teacher's noise.

    Args:
        error_rate: Probability that a proposed (or rollout) step is wrong.
        correct_weight: Prior weight of a correct step before noise and normalisation.
        wrong_weight: Prior weight of a wrong step before noise and normalisation.
        prior_noise: Std of the log-normal noise multiplied into each prior weight.
        max_offset: A wrong result is off by a nonzero amount in [-max_offset, max_offset].
        seed: Seed of the teacher's random streams (one per state and call kind).
    """

    error_rate: float = 0.3
    correct_weight: float = 2.0
    wrong_weight: float = 1.0
    prior_noise: float = 0.3
    max_offset: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.error_rate <= 1:
            raise ValueError(f"--teacher.error_rate must be in [0, 1], got {self.error_rate}")
        if self.correct_weight <= 0 or self.wrong_weight <= 0:
            raise ValueError("--teacher.correct_weight and --teacher.wrong_weight must be > 0")
        if self.prior_noise < 0:
            raise ValueError(f"--teacher.prior_noise must be >= 0, got {self.prior_noise}")
        if self.max_offset < 1:
            raise ValueError(f"--teacher.max_offset must be >= 1, got {self.max_offset}")


def apply_operation(tokens: Sequence[int | str], at: int, result: int) -> list[int | str]:
    """Replaces operand `at`, operator and operand `at + 2` by `result`."""
    return [*tokens[:at], result, *tokens[at + 3:]]


def precedence_index(tokens: Sequence[int | str]) -> int:
    """Index of the left operand of the operation to do next: the first "*", else the first operator."""
    ops = tokens[1::2]
    return 2 * ops.index("*") if "*" in ops else 0


def describe_step(tokens: Sequence[int | str], at: int, result: int) -> tuple[str, list[int | str]]:
    """Step text for doing the operation at `at` with `result`, and the tokens after it."""
    a, op, b = tokens[at:at + 3]
    after = apply_operation(tokens, at, result)
    head = f"Compute {a} {op} {b} = {result}."
    if len(after) == 1:
        return f"{head} The answer is \\boxed{{{result}}}.", after
    return f"{head} Now we have {format_tokens(after)}.", after


class ScriptedArithmeticTeacher:
    """A noisy scripted solver of "Evaluate <expr>." problems: an environment standing in for a model."""

    def __init__(self, args: TeacherArgs | None = None):
        self.args = args or TeacherArgs()

    def rng(self, kind: str, state: State) -> random.Random:
        """The stream of one (kind, state): MCTS expands and evaluates a state once per tree, so a tree's draws
        are independent of batching (Python seeds from a string through SHA-512: same in every process)."""
        return random.Random("\x1f".join([str(self.args.seed), kind, state.problem, *state.steps]))

    def tokens(self, state: State) -> list[int | str]:
        """The expression still to evaluate in `state`."""
        if state.steps:
            match = _NOW.search(state.steps[-1])
            if match is None:
                raise ValueError(f"not a non-final teacher step: {state.steps[-1]!r}")
            return [t if t in ("+", "-", "*") else int(t) for t in match.group(1).split(" ")]
        tokens = parse_arithmetic(state.problem)
        if tokens is None:
            raise ValueError(f"the arithmetic teacher only solves 'Evaluate <expr>.' problems, got {state.problem!r}")
        return tokens

    def _one_step(self, tokens: Sequence[int | str], rng: random.Random) -> tuple[str, list[int | str], bool]:
        """A sampled step: (text, tokens after it, whether it is correct)."""
        at = precedence_index(tokens)
        if rng.random() >= self.args.error_rate:
            result, correct = evaluate_tokens(list(tokens[at:at + 3])), True
        else:
            ops = tokens[1::2]
            wrong_order = "*" in ops and any(op != "*" for op in ops) and rng.random() < 0.5
            if wrong_order:  # do the first + or - before the multiplications
                at = 2 * next(i for i, op in enumerate(ops) if op != "*")
                result = evaluate_tokens(list(tokens[at:at + 3]))
            else:
                offset = rng.choice([d for d in range(-self.args.max_offset, self.args.max_offset + 1) if d])
                result = evaluate_tokens(list(tokens[at:at + 3])) + offset
            correct = False
        text, after = describe_step(tokens, at, result)
        return text, after, correct

    def propose(self, states: Sequence[State], k: int) -> list[list[Step]]:
        proposals = []
        for state in states:
            tokens, rng = self.tokens(state), self.rng("propose", state)
            drafts, weights = [], []
            for _ in range(k):
                text, after, correct = self._one_step(tokens, rng)
                base = self.args.correct_weight if correct else self.args.wrong_weight
                weights.append(base * math.exp(rng.gauss(0.0, self.args.prior_noise)))
                drafts.append((text, str(after[0]) if len(after) == 1 else None))
            proposals.append([Step(text, prior, answer is not None, answer)
                              for (text, answer), prior in zip(drafts, normalise(weights), strict=True)])
        return proposals

    def rollout(self, states: Sequence[State], m: int) -> list[list[str | None]]:
        answers = []
        for state in states:
            start, rng = self.tokens(state), self.rng("rollout", state)
            finals = []
            for _ in range(m):
                tokens = start
                while len(tokens) > 1:
                    _, tokens, _ = self._one_step(tokens, rng)
                finals.append(str(tokens[0]))
            answers.append(finals)
        return answers


def sound_steps(problem: str, steps: Sequence[str]) -> bool:
    """Whether every step is the correct next step of the expression before it: the operation precedence says
    (first "*", else leftmost), with its exact result, in the teacher's wording. False for any other text."""
    tokens = parse_arithmetic(problem)
    if tokens is None:
        return False
    for step in steps:
        if len(tokens) < 3:  # a step after the final answer
            return False
        at = precedence_index(tokens)
        expected, tokens = describe_step(tokens, at, evaluate_tokens(list(tokens[at:at + 3])))
        if step.strip() != expected:
            return False
    return True


class ArithmeticStepJudge:
    """Soundness judge of the synthetic domain (`linearize.SoundnessJudge`): the environment checks every step on
    the path to a correct terminal (`sound_steps`), so right answers reached through wrong steps are dropped."""

    def __call__(self, tree: SearchTree, node_ids: list[int]) -> list[bool]:
        return [sound_steps(tree.problem, tree.steps(i)) for i in node_ids]
