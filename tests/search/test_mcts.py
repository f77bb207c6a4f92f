"""MCTS on the scripted arithmetic teacher: tree shape, N/Q invariants, batching, depth limit, JSONL round trip."""

from __future__ import annotations

import json

import pytest

from astro_pl.rewards.math import answers_match
from astro_pl.search.mcts import SearchArgs, merge_duplicate_steps, search_trees
from astro_pl.search.puct import astro_value
from astro_pl.search.tree import SearchTree, append_tree, read_trees
from astro_pl.tasks.arithmetic import ScriptedArithmeticTeacher, TeacherArgs, synthetic_arithmetic
from astro_pl.tasks.base import Step

ARGS = SearchArgs(iterations=16, num_children=4, num_rollouts=4, max_depth=50, c_puct=2.0, batch_size=8)


class CountingProposer:
    """The real teacher, with a record of how many states each call carried."""

    def __init__(self, teacher: ScriptedArithmeticTeacher):
        self.teacher, self.propose_sizes, self.rollout_sizes = teacher, [], []

    def propose(self, states, k):
        self.propose_sizes.append(len(states))
        return self.teacher.propose(states, k)

    def rollout(self, states, m):
        self.rollout_sizes.append(len(states))
        return self.teacher.rollout(states, m)


@pytest.fixture(scope="module")
def trees() -> list[SearchTree]:
    problems = synthetic_arithmetic(12, seed=3, min_operations=2, max_operations=4)
    teacher = ScriptedArithmeticTeacher(TeacherArgs(error_rate=0.3, seed=0))
    return list(search_trees(problems, teacher, ARGS, answers_match))


def check_invariants(tree: SearchTree, iterations: int) -> None:
    assert tree.root.visits == iterations
    for node in tree.nodes:
        kids = [tree.nodes[c] for c in node.children]
        assert all(k.parent == node.id and k.depth == node.depth + 1 for k in kids)
        assert len({k.text for k in kids}) == len(kids), "sibling steps are distinct"
        if kids:
            assert sum(k.prior for k in kids) == pytest.approx(1.0)
            assert not node.terminal
        assert node.rollout_value is not None
        if node.visits == 0:
            assert node.value == node.rollout_value
        elif not node.terminal:
            # every pass through an expanded node either expanded it (once) or went on into a child
            assert node.visits == 1 + sum(k.visits for k in kids)
            expected = astro_value([k.value for k in kids], [k.visits for k in kids], node.rollout_value)
            assert node.value == pytest.approx(expected)
        if node.terminal:
            assert node.correct == (node.answer == tree.gold)
            assert node.value == float(node.correct)
        else:
            assert node.correct is None and node.answer is None
        assert 0.0 <= node.value <= 1.0


def test_trees_hold_correct_and_incorrect_terminals(trees):
    assert [t.problem_id for t in trees] == [f"synthetic-3-{i}" for i in range(12)]
    with_correct = [t for t in trees if any(n.correct for n in t.terminals())]
    with_both = [t for t in with_correct if any(n.correct is False for n in t.terminals())]
    assert len(with_correct) >= 9 and len(with_both) >= 6
    for tree in trees:
        check_invariants(tree, ARGS.iterations)


def test_correct_terminal_path_reaches_gold(trees):
    tree = next(t for t in trees if any(n.correct for n in t.terminals()))
    node = next(n for n in tree.terminals() if n.correct)
    steps = tree.steps(node.id)
    assert steps[-1].endswith(f"The answer is \\boxed{{{tree.gold}}}.")
    assert all(s.startswith("Compute ") for s in steps)


def test_one_engine_call_per_round_for_all_trees():
    problems = synthetic_arithmetic(10, seed=5, min_operations=3, max_operations=4)
    proposer = CountingProposer(ScriptedArithmeticTeacher(TeacherArgs(seed=1)))
    args = SearchArgs(iterations=6, num_children=3, num_rollouts=2, c_puct=2.0, batch_size=4)
    out = list(search_trees(problems, proposer, args, answers_match))
    # 10 trees, 4 in flight: rounds 1-6 trees 0-3, 7-12 trees 4-7, 13-18 trees 8-9 -> at most 18 calls each
    assert sorted(t.problem_id for t in out) == sorted(p.id for p in problems)
    assert len(proposer.propose_sizes) <= 18 and len(proposer.rollout_sizes) <= 18
    assert max(proposer.propose_sizes) == 4, "the first round expands every root in flight in one call"
    # the first round's rollout call holds 4 roots plus all their new non-terminal children
    assert proposer.rollout_sizes[0] > 4
    for tree in out:
        check_invariants(tree, args.iterations)


def test_depth_limit_makes_terminals():
    problems = synthetic_arithmetic(3, seed=0, min_operations=3, max_operations=3)
    args = SearchArgs(iterations=5, num_children=3, num_rollouts=2, max_depth=1, batch_size=3)
    for tree in search_trees(problems, ScriptedArithmeticTeacher(TeacherArgs(seed=0)), args, answers_match):
        assert max(n.depth for n in tree.nodes) == 1
        children = [tree.nodes[c] for c in tree.root.children]
        assert children and all(c.terminal and c.answer is None and c.correct is False for c in children)
        check_invariants(tree, args.iterations)


def test_tree_jsonl_round_trip_is_identical(trees, tmp_path):
    path = tmp_path / "trees.jsonl"
    for tree in trees:
        append_tree(path, tree)
    back = list(read_trees(path))
    assert back == trees
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.dumps(t.to_dict(), ensure_ascii=False) for t in back] == lines


def test_merge_duplicate_steps_sums_priors():
    steps = [Step("a", 0.25, False, None), Step("b", 0.5, False, None), Step("a", 0.25, False, None)]
    assert merge_duplicate_steps(steps) == [Step("a", 0.5, False, None), Step("b", 0.5, False, None)]


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [("iterations", 0, "--search.iterations"), ("num_children", 0, "--search.num_children"),
     ("num_rollouts", -1, "--search.num_rollouts"), ("c_puct", -0.5, "--search.c_puct")],
)
def test_search_args_name_the_flag(field, value, flag):
    with pytest.raises(ValueError, match=flag):
        SearchArgs(**{field: value})
