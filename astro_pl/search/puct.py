"""PUCT selection and the ASTRO backup rule as pure functions over plain lists and floats.

No tree objects, config or I/O here: `mcts.py` reads the numbers out of a `SearchTree`, calls these, and writes
the results back. Conventions (ours, where the paper is silent):

- A node's rollout value R is the mean verifier score of its M rollouts (a terminal's R is its own correctness).
- A node not yet visited has N = 0 and Q = R, so PUCT already sees its rollouts; its R enters its parent's Q only
  once it is visited, because the ASTRO rule weights each child's Q by its N.
- Each iteration adds 1 to N of every node on the path from the root to the selected leaf, so the root's N
  equals the number of iterations and an expanded node has N = 1 + sum of its children's N.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def puct_score(q: float, prior: float, n_parent: int, n_child: int, c_puct: float) -> float:
    """Q(s,a) + c_puct * P(a|s) * sqrt(N(s)) / (1 + N(s,a))."""
    return q + c_puct * prior * math.sqrt(n_parent) / (1 + n_child)


def select_child(
    values: Sequence[float], priors: Sequence[float], visits: Sequence[int], n_parent: int, c_puct: float
) -> int:
    """Index of the child with the highest PUCT score; ties go to the first (earliest proposed) child.

    Args:
        values: Q of each child, [K].
        priors: P(a|s) of each child, [K].
        visits: N of each child, [K].
        n_parent: N of the parent.
        c_puct: Exploration weight.
    """
    if not values:
        raise ValueError("select_child needs at least one child")
    if not len(values) == len(priors) == len(visits):
        raise ValueError(f"values, priors, visits differ in length: {len(values)}, {len(priors)}, {len(visits)}")
    scores = [puct_score(q, p, n_parent, n, c_puct) for q, p, n in zip(values, priors, visits, strict=True)]
    return max(range(len(scores)), key=scores.__getitem__)


def astro_value(child_values: Sequence[float], child_visits: Sequence[int], rollout_value: float) -> float:
    """ASTRO's Q(s) = (sum_c Q(c) N(c) + R(s)) / (sum_c N(c) + 1)."""
    total = sum(q * n for q, n in zip(child_values, child_visits, strict=True)) + rollout_value
    return total / (sum(child_visits) + 1)


def backup(
    path: Sequence[int],
    visits: Sequence[int],
    values: Sequence[float],
    rollout_values: Sequence[float | None],
    children: Sequence[Sequence[int]],
) -> tuple[list[int], list[float]]:
    """Backs one iteration up a root-to-leaf path: N += 1 on every path node, then Q by `astro_value`, leaf first.

    Args:
        path: Node ids from the root to the selected leaf.
        visits: N of every node of the tree, indexed by node id.
        values: Q of every node.
        rollout_values: R of every node; must be set for every node on the path.
        children: Child ids of every node.

    Returns:
        New (visits, values) lists for the whole tree; the inputs are not modified.
    """
    visits, values = list(visits), list(values)
    for node in path:
        visits[node] += 1
    for node in reversed(path):
        reward = rollout_values[node]
        if reward is None:
            raise ValueError(f"node {node} is on the backup path but has no rollout value")
        kids = children[node]
        values[node] = astro_value([values[c] for c in kids], [visits[c] for c in kids], reward)
    return visits, values
