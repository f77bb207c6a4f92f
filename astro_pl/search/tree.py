"""Search-tree records and their JSONL form (one tree per line, one line per problem).

A tree is a flat list of nodes; node 0 is the root (the problem, no step text). Parent/child links are indices,
so a tree round-trips through JSON exactly. A node is added after its parent, so every parent index is smaller
than its child's: `check_links` enforces that on load, which rules out cycles and missing parents.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from astro_pl.runfiles import append_jsonl


@dataclass
class Node:
    """One reasoning step.

    Attributes:
        id: Index in `SearchTree.nodes`.
        parent: Parent index; None for the root.
        text: The step text (empty for the root).
        depth: Steps from the root (root = 0).
        prior: P(a|s), the proposer's length-normalised likelihood normalised over siblings.
        visits: N, visit count.
        value: Q, mean value under the ASTRO backup rule.
        rollout_value: R, mean correctness of the rollouts from this node (None before evaluation).
        terminal: The step holds a final answer or the depth limit was reached.
        answer: Final answer of a terminal step (None if it has none).
        correct: Whether `answer` matches the gold answer (None for non-terminals).
        children: Child indices.
    """

    id: int
    parent: int | None
    text: str = ""
    depth: int = 0
    prior: float = 1.0
    visits: int = 0
    value: float = 0.0
    rollout_value: float | None = None
    terminal: bool = False
    answer: str | None = None
    correct: bool | None = None
    children: list[int] = field(default_factory=list)


@dataclass
class SearchTree:
    """All nodes searched for one problem."""

    problem_id: str
    problem: str
    gold: str
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.nodes:
            self.nodes.append(Node(id=0, parent=None))

    @property
    def root(self) -> Node:
        return self.nodes[0]

    def add_child(self, parent: int, text: str, prior: float = 1.0) -> Node:
        node = Node(id=len(self.nodes), parent=parent, text=text, depth=self.nodes[parent].depth + 1, prior=prior)
        self.nodes.append(node)
        self.nodes[parent].children.append(node.id)
        return node

    def path(self, node_id: int) -> list[int]:
        """Node ids from the root to `node_id`, both included."""
        ids = []
        current: int | None = node_id
        while current is not None:
            ids.append(current)
            current = self.nodes[current].parent
        return ids[::-1]

    def steps(self, node_id: int) -> list[str]:
        """Step texts from the root (excluded) to `node_id` (included)."""
        return [self.nodes[i].text for i in self.path(node_id)[1:]]

    def terminals(self) -> list[Node]:
        return [n for n in self.nodes if n.terminal]

    def to_dict(self) -> dict:
        return {
            "problem_id": self.problem_id,
            "problem": self.problem,
            "gold": self.gold,
            "nodes": [asdict(n) for n in self.nodes],
        }

    @classmethod
    def from_dict(cls, data: dict) -> SearchTree:
        tree = cls(
            problem_id=str(data["problem_id"]),
            problem=data["problem"],
            gold=data["gold"],
            nodes=[Node(**n) for n in data["nodes"]],
        )
        check_links(tree.nodes)
        return tree


def check_links(nodes: list[Node]) -> None:
    """Raises ValueError naming the node and field unless node i has id i, node 0 alone is the root, every
    parent comes before its child, and parent and children lists agree (so no cycle, no missing parent)."""
    if not nodes:
        raise ValueError("nodes: empty (node 0 is the root)")
    for i, node in enumerate(nodes):
        if node.id != i:
            raise ValueError(f"nodes[{i}].id: {node.id!r}, expected {i}")
        if i == 0:
            if node.parent is not None:
                raise ValueError(f"nodes[0].parent: {node.parent!r}, the root has none")
        elif not isinstance(node.parent, int) or not 0 <= node.parent < i:
            raise ValueError(f"nodes[{i}].parent: {node.parent!r} is not an earlier node (missing parent or cycle)")
    for i, node in enumerate(nodes):
        for child in node.children:
            if not isinstance(child, int) or not 0 < child < len(nodes) or nodes[child].parent != i:
                raise ValueError(f"nodes[{i}].children: {child!r} is not a node whose parent is {i}")


def append_tree(path: str | Path, tree: SearchTree) -> None:
    """Appends one tree as one line and flushes it to disk, so a killed run loses no finished tree."""
    append_jsonl(path, [tree.to_dict()])


def read_trees(path: str | Path) -> Iterator[SearchTree]:
    """Yields the trees of a JSONL file; a torn last line (killed writer) is skipped, any other bad line raises."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        lines = f.readlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield SearchTree.from_dict(json.loads(line))
        except json.JSONDecodeError as err:
            if lineno == len(lines) and not line.endswith("\n"):
                return
            raise ValueError(f"{path}:{lineno}: not a JSON tree record ({err.msg})") from err
        except (KeyError, TypeError) as err:
            raise ValueError(f"{path}:{lineno}: malformed tree record, field {err}") from err
        except ValueError as err:
            raise ValueError(f"{path}:{lineno}: bad tree, {err}") from err
