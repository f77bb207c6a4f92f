"""The synthetic arithmetic task: "Evaluate 3 + 4 * 2." problems, their exact gold, and a scripted teacher for search.

Problems are integers joined by " + ", " - ", " * " with normal precedence; the gold is computed exactly by
`evaluate_tokens`, never by `eval`. The CPU default for search, SFT and RL.

- `ScriptedArithmeticTeacher` is an *environment*, not a model: it reduces the expression one operation per step in
  precedence order and makes a mistake (a result off by a little, or the wrong operation first) with a configurable
  probability, so a CPU run yields real trees with both correct and incorrect terminals. Its draws for a state come
  from a stream seeded by that state, so a problem's tree does not depend on which trees share a batch (shards and
  resumed runs grow the same trees).
- `ArithmeticTask.sound` is the same environment as a soundness judge: a correct terminal is taught only if every
  step on its path is the right operation with the right result, so a lucky path is not taught.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from astro_pl.data.problems import Problem
from astro_pl.tasks.base import Split, State, Step, Task, normalise

OPERATORS = ("+", "-", "*")
_ARITHMETIC = re.compile(r"Evaluate (\d+(?: [+*-] \d+)*)\.")


def synthetic_arithmetic(num_problems: int, seed: int = 0, min_operations: int = 2, max_operations: int = 3,
                         operand_min: int = 1, operand_max: int = 9, operators: str = "+-*") -> list[Problem]:
    """Seeded arithmetic problems "Evaluate 3 + 4 * 2." with exact gold; a larger `num_problems` extends a list.

    Args:
        num_problems: How many problems.
        seed: Seed; equal arguments give equal problems. Ids are "synthetic-{seed}-{i}".
        min_operations: Fewest operators per expression (difficulty).
        max_operations: Most operators per expression.
        operand_min: Smallest operand (>= 0: the text has no negative literals).
        operand_max: Largest operand.
        operators: Which of "+", "-", "*" may appear (e.g. "+-" keeps every value small, for tiny CPU models).
    """
    if num_problems < 0:
        raise ValueError(f"num_problems must be >= 0, got {num_problems}")
    if not 1 <= min_operations <= max_operations:
        raise ValueError(f"need 1 <= min_operations <= max_operations, got {min_operations}, {max_operations}")
    if not 0 <= operand_min <= operand_max:
        raise ValueError(f"need 0 <= operand_min <= operand_max, got {operand_min}, {operand_max}")
    if not operators or any(op not in OPERATORS for op in operators):
        raise ValueError(f"operators must be a non-empty string of {''.join(OPERATORS)}, got {operators!r}")
    rng, problems = random.Random(seed), []
    for i in range(num_problems):
        num_ops = rng.randint(min_operations, max_operations)
        tokens: list[int | str] = [rng.randint(operand_min, operand_max)]
        for _ in range(num_ops):
            tokens += [rng.choice(operators), rng.randint(operand_min, operand_max)]
        problems.append(Problem(
            id=f"synthetic-{seed}-{i}",
            problem=f"Evaluate {format_tokens(tokens)}.",
            answer=str(evaluate_tokens(tokens)),
            subject="arithmetic",
            level=num_ops,
        ))
    return problems


def format_tokens(tokens: list[int | str]) -> str:
    """[3, "+", 4] -> "3 + 4"."""
    return " ".join(str(t) for t in tokens)


def parse_arithmetic(text: str) -> list[int | str] | None:
    """The tokens of a synthetic problem text ("Evaluate 3 + 4 * 2." -> [3, "+", 4, "*", 2]); None otherwise."""
    match = _ARITHMETIC.fullmatch(text.strip())
    if match is None:
        return None
    return [tok if tok in OPERATORS else int(tok) for tok in match.group(1).split(" ")]


def evaluate_tokens(tokens: list[int | str]) -> int:
    """Exact value of [a, op, b, op, c, ...] with * before + and -, left to right."""
    if len(tokens) % 2 == 0 or any(not isinstance(t, int) or isinstance(t, bool) for t in tokens[::2]):
        raise ValueError(f"expected integers alternating with operators, got {tokens!r}")
    if any(op not in OPERATORS for op in tokens[1::2]):
        raise ValueError(f"operators must be among {OPERATORS}, got {tokens[1::2]!r}")
    total, sign, term = 0, 1, tokens[0]
    for op, value in zip(tokens[1::2], tokens[2::2], strict=True):
        if op == "*":
            term *= value
        else:
            total, sign, term = total + sign * term, (1 if op == "+" else -1), value
    return total + sign * term


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


class ArithmeticTask(Task):
    """Seeded synthetic arithmetic: train, validation and test sets from one difficulty spec and three seeds.

    Args:
        num_train: Training problems (search expands them, RL samples prompts from them).
        num_val: Validation problems (RL's held-out check).
        num_test: Test problems (`astro eval`).
        seed: Seed of the training problems; a larger `num_train` extends the same list.
        val_seed: Seed of the validation problems (differs from `seed`, so they are held out).
        test_seed: Seed of the test problems.
        min_operations: Fewest operators per expression (difficulty).
        max_operations: Most operators per expression.
        operand_min: Smallest operand (>= 0: the text has no negative literals).
        operand_max: Largest operand (smaller: fewer arithmetic facts for a tiny model to learn).
        operators: Which of "+", "-", "*" may appear ("+-" keeps every value small, for tiny CPU models).
        teacher: The scripted teacher's noise, for `astro search`.
        system_prompt: Optional system turn.
    """

    def __init__(self, num_train: int = 512, num_val: int = 32, num_test: int = 100, seed: int = 0,
                 val_seed: int = 1_000_003, test_seed: int = 12345, min_operations: int = 2, max_operations: int = 3,
                 operand_min: int = 1, operand_max: int = 9, operators: str = "+-*", teacher: TeacherArgs | None = None,
                 system_prompt: str | None = None):
        super().__init__(system_prompt)
        for flag, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if value < 0:
                raise ValueError(f"--task.{flag} must be >= 0, got {value}")
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.seeds = {"train": seed, "val": val_seed, "test": test_seed}
        self.difficulty = dict(min_operations=min_operations, max_operations=max_operations, operand_min=operand_min,
                               operand_max=operand_max, operators=operators)
        synthetic_arithmetic(0, **self.difficulty)  # validates the difficulty spec now, not at first use
        self.teacher_args = teacher or TeacherArgs()

    def problems(self, split: Split) -> dict[str, list[Problem]]:
        return {"synthetic": synthetic_arithmetic(self.sizes[split], self.seeds[split], **self.difficulty)}

    def teacher(self) -> ScriptedArithmeticTeacher:
        return ScriptedArithmeticTeacher(self.teacher_args)

    def sound(self, problem: str, steps: Sequence[str]) -> bool:
        return sound_steps(problem, steps)
