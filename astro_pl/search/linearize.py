"""ASTRO Algorithm 1: from a search tree to node sequences with backtracks, then to trace records.

Pure functions over a `SearchTree`: `collect_terminals` (DFS), `choose_terminals` (one correct terminal n* and k
incorrect ones with pairwise-distinct answers), `merge_paths` (the sequence of steps, backtracks and restarts) and
`build_traces` (per problem: direct traces with k = 0 and search traces with k >= 1, verbalised by `verbalize.py`).
No I/O here; the `astro search` runner writes the records.

Conventions (ours, where the paper is silent):
- A terminal counts as correct only if `correct is True`; any other terminal (wrong answer, or depth limit without
  an answer) is incorrect. Answers are grouped with the answer checker (`checker`, default `answers_match`), so
  `\\boxed{1/2}` and `\\boxed{\\frac{1}{2}}` are one attempt; all answerless terminals share one answer.
- A backtrack returns to the deepest node of the next path already in the sequence (so it may return to a step
  of any earlier attempt, not only the last one); if that node is the root, it is a restart.
- k is drawn uniformly from [min_backtracks, min(max_backtracks, number of distinct incorrect answers)]. A tree
  with fewer distinct incorrect answers than `min_backtracks` gives direct traces only; one with no correct
  terminal (after the optional self-evaluation filter) gives no traces.
- With `direct_self_checks` off, direct traces are plain solutions: steps and the conclusion, no reflection phrase
  (the Direct-SFT arm of the paper's ablation); search traces keep theirs.
- With `dedupe`, a draw that repeats an earlier trace text of the tree is redrawn, at most `max_draws` times per
  wanted trace, so small trees give fewer traces rather than copies.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from astro_pl.rewards.math import answers_match, group_answers
from astro_pl.rollout.base import RolloutEngine, SamplingArgs
from astro_pl.search.tree import Node, SearchTree
from astro_pl.search.verbalize import Event, Phrases, Segment, join_segments, verbalize


class SoundnessJudge(Protocol):
    """Decides which correct terminals are sound (not lucky guesses); the step-2 filter of Algorithm 1."""

    def __call__(self, tree: SearchTree, node_ids: list[int]) -> list[bool]: ...


@dataclass
class TraceArgs:
    """How many traces of each kind to make per tree, and how they read.

    Args:
        num_direct: Direct traces (k = 0, no backtrack) per tree (paper: 1).
        num_search: Search traces (k >= 1 backtracks) per tree (paper: 3).
        min_backtracks: Fewest incorrect terminals (= backtracks) in a search trace.
        max_backtracks: Most incorrect terminals (= backtracks) in a search trace (paper: 2).
        self_check_q: Q at or above which an intermediate step gets a positive self-check; None: never.
        direct_self_checks: Whether direct traces carry positive self-checks (after high-Q steps and the final
            step). False: direct traces hold no reflection phrase at all, as the paper's Direct-SFT arm.
        dedupe: Drop a trace whose text repeats an earlier trace of the same tree (and redraw).
        max_draws: Draws per wanted trace before giving up when `dedupe` rejects repeats.
        phrases: Reflection, backtrack, restart and self-check sentences.
    """

    num_direct: int = 1
    num_search: int = 3
    min_backtracks: int = 1
    max_backtracks: int = 2
    self_check_q: float | None = 0.9
    direct_self_checks: bool = True
    dedupe: bool = True
    max_draws: int = 4
    phrases: Phrases = field(default_factory=Phrases)

    def __post_init__(self) -> None:
        if self.num_direct < 0 or self.num_search < 0:
            raise ValueError(f"--traces.num_direct/num_search must be >= 0, got {self.num_direct}/{self.num_search}")
        if not 1 <= self.min_backtracks <= self.max_backtracks:
            raise ValueError(
                "--traces.min_backtracks and --traces.max_backtracks need 1 <= min <= max, "
                f"got {self.min_backtracks} and {self.max_backtracks}"
            )
        if self.self_check_q is not None and not 0.0 <= self.self_check_q <= 1.0:
            raise ValueError(f"--traces.self_check_q must be in [0, 1] or null, got {self.self_check_q}")
        if self.max_draws < 1:
            raise ValueError(f"--traces.max_draws must be >= 1, got {self.max_draws}")


def group_by_answer(terminals: Sequence[Node], checker: Callable[[str, str], bool] = answers_match
                    ) -> list[list[Node]]:
    """Terminals grouped by equivalent answer (by `checker`, not by string), in order of first appearance; all
    answerless terminals form one group."""
    answers = [n.answer for n in terminals]
    groups = group_answers(answers, checker)
    answerless = [i for i, answer in enumerate(answers) if answer is None]
    groups = sorted(groups + [answerless], key=lambda g: g[0]) if answerless else groups
    return [[terminals[i] for i in group] for group in groups]


def collect_terminals(tree: SearchTree) -> tuple[list[Node], list[Node]]:
    """(correct, incorrect) terminals in DFS pre-order (children in proposal order)."""
    correct, incorrect = [], []
    stack = [0]
    while stack:
        node = tree.nodes[stack.pop()]
        if node.terminal:
            (correct if node.correct is True else incorrect).append(node)
        stack.extend(reversed(node.children))
    return correct, incorrect


def choose_terminals(
    correct: Sequence[Node], incorrect: Sequence[Node], k: int, rng: random.Random,
    checker: Callable[[str, str], bool] = answers_match,
) -> tuple[Node, list[Node]]:
    """One correct terminal n* and up to k incorrect terminals with pairwise-distinct answers.

    Picks k distinct answers (equivalence by `checker`) uniformly, then one terminal per answer; returns fewer than
    k incorrect terminals when there are fewer distinct answers (the caller decides whether that is enough).
    """
    if not correct:
        raise ValueError("choose_terminals needs at least one correct terminal")
    n_star = rng.choice(list(correct))
    groups = group_by_answer(incorrect, checker)
    rng.shuffle(groups)
    return n_star, [rng.choice(group) for group in groups[:k]]


def merge_paths(tree: SearchTree, terminal_ids: Sequence[int]) -> list[Event]:
    """The linearised sequence visiting `terminal_ids` in order (incorrect ones first, n* last).

    Each root-to-terminal path adds only its nodes not yet in the sequence, after a backtrack to its deepest node
    already there (a restart if that is the root). So there are len(terminal_ids) - 1 backtracks and restarts.
    """
    if len(set(terminal_ids)) != len(terminal_ids):
        raise ValueError(f"tree {tree.problem_id}: terminal ids repeat: {list(terminal_ids)}")
    visited = {0}
    events: list[Event] = []
    for i, terminal in enumerate(terminal_ids):
        path = tree.path(terminal)
        if terminal in visited:
            raise ValueError(f"tree {tree.problem_id}: node {terminal} is an ancestor of an earlier terminal")
        shared = 0
        while path[shared + 1] in visited:
            shared += 1
        if i > 0:
            events.append(Event("restart", 0) if shared == 0 else Event("backtrack", path[shared]))
        events.extend(Event("step", n) for n in path[shared + 1 :])
        visited.update(path)
    return events


def trace_segments(tree: SearchTree, terminal_ids: Sequence[int], args: TraceArgs, kind: str) -> list[Segment]:
    """The paragraphs of the trace that visits `terminal_ids` (n* last), as `build_traces` words a trace of `kind`."""
    phrases = args.phrases
    if kind == "direct" and not args.direct_self_checks:
        phrases = replace(phrases, confirm="")
    return verbalize(tree, merge_paths(tree, terminal_ids), phrases, args.self_check_q)


def build_traces(
    tree: SearchTree,
    args: TraceArgs,
    rng: random.Random,
    judge: SoundnessJudge | None = None,
    checker: Callable[[str, str], bool] = answers_match,
) -> list[dict]:
    """Direct and search trace records of one tree (module docstring has the rules).

    Args:
        tree: A finished search tree.
        args: Counts, backtrack range, self-check threshold and phrases.
        rng: The only source of randomness; the same seed gives the same records.
        judge: Optional self-evaluation filter on correct terminals.
        checker: Answer equivalence that makes two incorrect terminals one attempt (the task's answer checker).

    Returns:
        Records {"problem_id", "problem", "gold", "trace", "kind", "num_backtracks", "tree_id", "terminal_ids"},
        direct ones first; `terminal_ids` lists the visited terminals in order (n* last).
    """
    correct, incorrect = collect_terminals(tree)
    if judge is not None and correct:
        verdicts = judge(tree, [n.id for n in correct])
        correct = [n for n, sound in zip(correct, verdicts, strict=True) if sound]
    if not correct:
        return []
    num_answers = len(group_by_answer(incorrect, checker))
    plan = ["direct"] * args.num_direct
    if num_answers >= args.min_backtracks:
        plan += ["search"] * args.num_search
    records, seen = [], set()
    for kind in plan:
        for _ in range(args.max_draws):
            k = 0 if kind == "direct" else rng.randint(args.min_backtracks, min(args.max_backtracks, num_answers))
            n_star, wrong = choose_terminals(correct, incorrect, k, rng, checker)
            terminal_ids = [n.id for n in wrong] + [n_star.id]
            text = join_segments(trace_segments(tree, terminal_ids, args, kind))
            if args.dedupe and text in seen:
                continue
            seen.add(text)
            records.append(
                {
                    "problem_id": tree.problem_id,
                    "problem": tree.problem,
                    "gold": tree.gold,
                    "trace": text,
                    "kind": kind,
                    "num_backtracks": len(wrong),
                    "tree_id": tree.problem_id,
                    "terminal_ids": terminal_ids,
                }
            )
            break
    return records


JUDGE_INSTRUCTION = (
    "Here is a math problem and a proposed solution. Check every step. Is the solution correct and sound, "
    "rather than reaching the right answer by luck? Answer Yes or No first.\n\n"
    "Problem:\n{problem}\n\nSolution:\n{solution}"
)
_VERDICT = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


@dataclass
class SelfEvaluationJudge:
    """Sound iff every one of `num_samples` sampled self-evaluations answers Yes first (paper: 8, all agree).

    Args:
        engine: The model that judges (any rollout engine).
        render: Turns the instruction text into a prompt (e.g. `lambda t: render_prompt(tokenizer, t)`).
        num_samples: Self-evaluations per correct terminal.
        temperature: Sampling temperature of the self-evaluations.
        max_tokens: Most tokens per self-evaluation.
        seed: Sampling seed, so the filter is reproducible.
    """

    engine: RolloutEngine
    render: Callable[[str], str]
    num_samples: int = 8
    temperature: float = 1.0
    max_tokens: int = 64
    seed: int = 0

    def __call__(self, tree: SearchTree, node_ids: list[int]) -> list[bool]:
        if not node_ids:
            return []
        prompts = [
            self.render(JUDGE_INSTRUCTION.format(problem=tree.problem, solution="\n\n".join(tree.steps(i))))
            for i in node_ids
        ]
        params = SamplingArgs(
            n=self.num_samples, temperature=self.temperature, max_tokens=self.max_tokens, seed=self.seed, logprobs=False
        )
        return [all(says_yes(c.text) for c in samples) for samples in self.engine.generate(prompts, params)]


def says_yes(text: str) -> bool:
    """Whether the first yes/no word of a self-evaluation is "yes"."""
    match = _VERDICT.search(text)
    return match is not None and match.group(1).lower() == "yes"
