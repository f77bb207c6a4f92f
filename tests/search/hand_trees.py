"""Hand-built search trees shared by the linearize, verbalize and view tests.

0 "Evaluate 2 + 3 * 4."
├── 1 "Compute 3 * 4 = 12."                 N=6 Q=0.95
│   ├── 3 "Then 2 + 12 = 14. \\boxed{14}"    correct
│   ├── 4 "Then 2 + 12 = 13."                N=2 Q=0.2
│   │   ├── 6 "So \\boxed{13}"               incorrect, answer 13
│   │   └── 7 "Hence \\boxed{13}"            incorrect, answer 13
│   └── 5 "Then \\boxed{15}"                 incorrect, answer 15
└── 2 "Compute 2 + 3 = 5."                   N=3 Q=0.1
    ├── 8 "Then 5 * 4 = 20. \\boxed{20}"     incorrect, answer 20
    └── 9 "Then 5 * 4 is large"              depth-limit terminal, no answer
"""

from __future__ import annotations

from astro_pl.search.tree import SearchTree


def set_stats(tree: SearchTree, node_id: int, visits: int, value: float) -> None:
    tree.nodes[node_id].visits = visits
    tree.nodes[node_id].value = value


def make_terminal(tree: SearchTree, node_id: int, answer: str | None, correct: bool) -> None:
    node = tree.nodes[node_id]
    node.terminal, node.answer, node.correct = True, answer, correct
    node.visits, node.value = 1, float(correct)


def sample_tree(problem_id: str = "p0") -> SearchTree:
    tree = SearchTree(problem_id=problem_id, problem="Evaluate 2 + 3 * 4.", gold="14")
    tree.add_child(0, "Compute 3 * 4 = 12.", prior=0.7)
    tree.add_child(0, "Compute 2 + 3 = 5.", prior=0.3)
    tree.add_child(1, "Then 2 + 12 = 14. \\boxed{14}", prior=0.5)
    tree.add_child(1, "Then 2 + 12 = 13.", prior=0.3)
    tree.add_child(1, "Then \\boxed{15}", prior=0.2)
    tree.add_child(4, "So \\boxed{13}", prior=0.6)
    tree.add_child(4, "Hence \\boxed{13}", prior=0.4)
    tree.add_child(2, "Then 5 * 4 = 20. \\boxed{20}", prior=0.8)
    tree.add_child(2, "Then 5 * 4 is large", prior=0.2)
    set_stats(tree, 0, 10, 0.5)
    set_stats(tree, 1, 6, 0.95)
    set_stats(tree, 2, 3, 0.1)
    set_stats(tree, 4, 2, 0.2)
    make_terminal(tree, 3, "14", True)
    make_terminal(tree, 5, "15", False)
    make_terminal(tree, 6, "13", False)
    make_terminal(tree, 7, "13", False)
    make_terminal(tree, 8, "20", False)
    make_terminal(tree, 9, None, False)
    return tree
