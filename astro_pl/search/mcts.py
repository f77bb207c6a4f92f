"""The MCTS loop over solution steps, run for many trees at once.

Each round selects one leaf in every tree in flight (PUCT from `puct.py`), expands all unexpanded non-terminal
leaves with ONE proposer call (k candidate steps each), evaluates all new non-terminal nodes with ONE rollout call
(M rollouts each, R = mean verifier score), then backs every path up with the ASTRO rule. A tree leaves the pool
after `iterations` rounds and the next problem takes its place, so engine batches stay full.

What it does not do: write files (`run.py`), turn trees into traces (`linearize.py`). Departures from the paper:
identical sibling steps are merged (their priors summed) so a node's children are distinct, a terminal's value
is its own verdict rather than rollouts from it, and an empty step is dropped (a leaf left without steps is an
answerless dead end).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from astro_pl.data.problems import Problem
from astro_pl.search.puct import backup, select_child
from astro_pl.search.tree import Node, SearchTree
from astro_pl.tasks.base import State, Step, StepProposer

Checker = Callable[[str, str], bool]


@dataclass
class SearchArgs:
    """The search budget and PUCT constants.

    Args:
        iterations: Selection-expansion-backup rounds per tree (paper, reported: 32). The root's N ends here.
        num_children: k, candidate steps sampled per expansion (reported: 8); identical ones are merged.
        num_rollouts: M, rollouts from each new node to estimate its value R (reported: 16).
        max_depth: Steps after which a node is terminal even without a final answer (reported: 50).
        c_puct: Exploration weight of PUCT.
        batch_size: Trees searched together; all their expansions (and rollouts) go into one engine call.
    """

    iterations: int = 32
    num_children: int = 8
    num_rollouts: int = 16
    max_depth: int = 50
    c_puct: float = 1.0
    batch_size: int = 16

    def __post_init__(self) -> None:
        for flag in ("iterations", "num_children", "num_rollouts", "max_depth", "batch_size"):
            if getattr(self, flag) < 1:
                raise ValueError(f"--search.{flag} must be >= 1, got {getattr(self, flag)}")
        if self.c_puct < 0:
            raise ValueError(f"--search.c_puct must be >= 0, got {self.c_puct}")


def merge_duplicate_steps(steps: Sequence[Step]) -> list[Step]:
    """Siblings with the same text become one step whose prior is the sum of theirs (first one's order kept)."""
    merged: dict[str, Step] = {}
    for step in steps:
        seen = merged.get(step.text)
        merged[step.text] = step if seen is None else seen._replace(prior=seen.prior + step.prior)
    return list(merged.values())


def select_leaf(tree: SearchTree, c_puct: float) -> list[int]:
    """Root-to-leaf path following PUCT through expanded non-terminal nodes."""
    node = tree.root
    path = [node.id]
    while node.children and not node.terminal:
        kids = [tree.nodes[c] for c in node.children]
        best = select_child([k.value for k in kids], [k.prior for k in kids], [k.visits for k in kids],
                            node.visits, c_puct)
        node = kids[best]
        path.append(node.id)
    return path


def expand(tree: SearchTree, leaf: int, steps: Sequence[Step], max_depth: int, checker: Checker) -> list[Node]:
    """Adds the (merged) steps as children of `leaf`; terminals get their verdict as R and Q right away.

    A leaf with no steps (every sample was empty, so the proposer kept none) is a dead end: it becomes an incorrect
    terminal without an answer, with R = Q = 0, as a depth-limit terminal would.
    """
    steps = [step for step in steps if step.text.strip()]  # an empty step is never a node
    if not steps:
        node = tree.nodes[leaf]
        node.terminal, node.answer, node.correct = True, None, False
        node.rollout_value = node.value = 0.0
        return []
    children = []
    for step in merge_duplicate_steps(steps):
        node = tree.add_child(leaf, step.text, prior=step.prior)
        if step.terminal or node.depth >= max_depth:
            node.terminal, node.answer = True, step.answer
            node.correct = step.answer is not None and checker(step.answer, tree.gold)
            node.rollout_value = node.value = float(node.correct)
        children.append(node)
    return children


def apply_backup(tree: SearchTree, path: Sequence[int]) -> None:
    """Runs the pure ASTRO backup on the tree's numbers and writes N and Q back."""
    nodes = tree.nodes
    visits, values = backup(path, [n.visits for n in nodes], [n.value for n in nodes],
                            [n.rollout_value for n in nodes], [n.children for n in nodes])
    for node_id in path:
        nodes[node_id].visits, nodes[node_id].value = visits[node_id], values[node_id]


@dataclass
class _InFlight:
    tree: SearchTree
    rounds: int = 0


def search_round(pool: Sequence[_InFlight], proposer: StepProposer, args: SearchArgs, checker: Checker) -> None:
    """One iteration for every tree in `pool`: one propose call and one rollout call in all."""
    paths = [select_leaf(item.tree, args.c_puct) for item in pool]
    to_expand = [(item.tree, path[-1]) for item, path in zip(pool, paths, strict=True)
                 if not item.tree.nodes[path[-1]].terminal and not item.tree.nodes[path[-1]].children]
    proposals = proposer.propose([State(t.problem, tuple(t.steps(leaf))) for t, leaf in to_expand],
                                 args.num_children) if to_expand else []
    to_evaluate = [(item.tree, item.tree.root) for item in pool if item.tree.root.rollout_value is None]
    for (tree, leaf), steps in zip(to_expand, proposals, strict=True):
        children = expand(tree, leaf, steps, args.max_depth, checker)
        to_evaluate += [(tree, child) for child in children if not child.terminal]
    if to_evaluate:
        finals = proposer.rollout([State(t.problem, tuple(t.steps(n.id))) for t, n in to_evaluate],
                                  args.num_rollouts)
        for (tree, node), answers in zip(to_evaluate, finals, strict=True):
            scores = [a is not None and checker(a, tree.gold) for a in answers]
            node.rollout_value = node.value = sum(scores) / len(scores)
    for item, path in zip(pool, paths, strict=True):
        apply_backup(item.tree, path)
        item.rounds += 1


def search_trees(problems: Iterable[Problem], proposer: StepProposer, args: SearchArgs,
                 checker: Checker) -> Iterator[SearchTree]:
    """Searches one tree per problem, `args.batch_size` at a time, yielding each tree when its budget is spent.

    Args:
        problems: Problems to search (ids should be unique; trees carry them).
        proposer: Step and rollout source (one call per round for all trees in flight).
        args: Budget and PUCT constants.
        checker: `checker(answer, gold)`, True when the answer is correct.
    """
    pending = iter(problems)
    pool: list[_InFlight] = []
    while True:
        while len(pool) < args.batch_size and (problem := next(pending, None)) is not None:
            pool.append(_InFlight(SearchTree(problem.id, problem.problem, problem.answer)))
        if not pool:
            return
        search_round(pool, proposer, args, checker)
        finished = [item for item in pool if item.rounds >= args.iterations]
        pool = [item for item in pool if item.rounds < args.iterations]
        for item in finished:
            yield item.tree
