"""PUCT scoring, child selection and the ASTRO backup rule against hand-computed values."""

from __future__ import annotations

import math

import pytest

from astro_pl.search.puct import astro_value, backup, puct_score, select_child


def test_puct_score_hand_computed():
    # 0.5 + 2.0 * 0.25 * sqrt(16) / (1 + 3) = 0.5 + 2.0 * 0.25 * 4 / 4 = 0.5 + 0.5 = 1.0
    assert puct_score(0.5, 0.25, 16, 3, 2.0) == pytest.approx(1.0)
    # unvisited child: 0.0 + 1.0 * 0.6 * sqrt(9) / 1 = 1.8
    assert puct_score(0.0, 0.6, 9, 0, 1.0) == pytest.approx(1.8)
    # c_puct = 0 is pure exploitation
    assert puct_score(0.3, 0.9, 100, 0, 0.0) == pytest.approx(0.3)


def test_select_child_trades_value_against_prior_and_visits():
    # parent N = 4, sqrt = 2, c = 1:
    #   a: 0.9 + 0.1 * 2 / (1 + 3) = 0.95
    #   b: 0.2 + 0.8 * 2 / (1 + 0) = 1.80   <- best
    #   c: 0.5 + 0.1 * 2 / (1 + 0) = 0.70
    assert select_child([0.9, 0.2, 0.5], [0.1, 0.8, 0.1], [3, 0, 0], 4, 1.0) == 1
    # same numbers with c = 0.1: a 0.905, b 0.36, c 0.52 -> a
    assert select_child([0.9, 0.2, 0.5], [0.1, 0.8, 0.1], [3, 0, 0], 4, 0.1) == 0
    # ties go to the first child
    assert select_child([0.0, 0.0], [0.5, 0.5], [0, 0], 1, 1.0) == 0


def test_select_child_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one child"):
        select_child([], [], [], 1, 1.0)
    with pytest.raises(ValueError, match="differ in length"):
        select_child([0.1, 0.2], [1.0], [0, 0], 1, 1.0)


def test_astro_value_hand_computed():
    # (0.5 * 2 + 1.0 * 1 + R 0.25) / (2 + 1 + 1) = 2.25 / 4 = 0.5625
    assert astro_value([0.5, 1.0], [2, 1], 0.25) == pytest.approx(0.5625)
    # unvisited children (N = 0) do not count: Q = R
    assert astro_value([1.0, 1.0], [0, 0], 0.4) == pytest.approx(0.4)
    # leaf: Q = R / 1
    assert astro_value([], [], 0.75) == pytest.approx(0.75)


def test_backup_updates_path_only_and_leaves_inputs_alone():
    # tree: 0 -> {1, 2}, 1 -> {3, 4}; path 0 -> 1 -> 3 (3 is a correct terminal, R = 1)
    children = [[1, 2], [3, 4], [], [], []]
    rollout = [0.5, 0.25, 0.0, 1.0, 0.0]
    visits = [2, 1, 1, 0, 0]
    values = [0.3, 0.25, 0.0, 1.0, 0.0]
    new_n, new_q = backup([0, 1, 3], visits, values, rollout, children)
    assert new_n == [3, 2, 1, 1, 0]
    # node 3: no children, Q = R = 1.0
    # node 1: children 3 (Q 1, N 1), 4 (Q 0, N 0): (1*1 + 0*0 + 0.25) / (1 + 0 + 1) = 1.25 / 2 = 0.625
    # node 0: children 1 (Q 0.625, N 2), 2 (Q 0, N 1): (0.625*2 + 0*1 + 0.5) / (2 + 1 + 1) = 1.75 / 4 = 0.4375
    assert new_q == pytest.approx([0.4375, 0.625, 0.0, 1.0, 0.0])
    assert visits == [2, 1, 1, 0, 0] and values == [0.3, 0.25, 0.0, 1.0, 0.0]


def test_backup_twice_equals_the_rule_on_final_counts():
    # root 0 with children 1, 2; iteration 1 ends at the root, 2 at child 1, 3 at child 2.
    children = [[1, 2], [], []]
    rollout = [0.5, 1.0, 0.0]
    n, q = [0, 0, 0], [0.5, 1.0, 0.0]
    for path in ([0], [0, 1], [0, 2]):
        n, q = backup(path, n, q, rollout, children)
    assert n == [3, 1, 1]
    # (1.0 * 1 + 0.0 * 1 + 0.5) / (1 + 1 + 1) = 0.5
    assert q[0] == pytest.approx(0.5)
    assert math.isclose(q[1], 1.0) and math.isclose(q[2], 0.0)


def test_backup_needs_rollout_values_on_the_path():
    with pytest.raises(ValueError, match="node 1 .* no rollout value"):
        backup([0, 1], [0, 0], [0.0, 0.0], [0.5, None], [[1], []])
