"""Metric functions and torchmetrics classes against hand-computed values."""

from __future__ import annotations

import math
from fractions import Fraction
from math import comb

import pytest
import torch

from astro_pl.evaluation.backtracks import count_backtracks, count_reflections
from astro_pl.evaluation.metrics import (
    AccuracyByBacktracks,
    MajorityAtK,
    MeanBacktracks,
    MeanResponseLength,
    PassAtK,
    majority_score,
    pass_at_k,
)


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 0, 5, 0.0),  # k = n, nothing correct
        (5, 5, 5, 1.0),  # k = n, all correct
        (5, 1, 5, 1.0),  # k = n: any correct sample is drawn
        (5, 0, 1, 0.0),
        (10, 3, 1, 0.3),  # pass@1 = c / n
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (5, 2, 3, 0.9),  # 1 - C(3,3)/C(5,3) = 1 - 1/10
        (16, 4, 8, 1 - 495 / 12870),  # 1 - C(12,8)/C(16,8)
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_large_n_matches_exact_fraction():
    n, c, k = 400, 37, 200  # C(400, 200) ~ 1e119: the product form never builds it
    exact = 1 - Fraction(comb(n - c, k), comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_pass_at_k_metric_mean_over_problems():
    correct = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)  # c = 1, 4, 0 of n = 4
    expected = {1: (0.25 + 1 + 0) / 3, 2: (0.5 + 1 + 0) / 3, 4: (1 + 1 + 0) / 3}
    for k, value in expected.items():
        metric = PassAtK(k)
        metric.update(correct[:2])
        metric.update(correct[2:])  # two updates == one
        assert metric.compute().item() == pytest.approx(value)
    with pytest.raises(ValueError, match="at least 5 samples"):
        PassAtK(5).update(correct)


def exact_match(a: str, b: str) -> bool:
    return a == b


def test_majority_tie_scores_mean_of_tied_groups_in_any_order():
    assert majority_score(["2", "3", "2", "3"], [True, False, True, False], exact_match) == 0.5
    assert majority_score(["3", "2", "3", "2"], [False, True, False, True], exact_match) == 0.5
    # three-way tie, one correct group
    assert majority_score(["1", "2", "3"], [False, True, False], exact_match) == pytest.approx(1 / 3)
    # a clear majority wins regardless of position
    assert majority_score(["7", "5", "5", "7", "5"], [True, False, False, True, False], exact_match) == 0.0


def test_majority_ignores_missing_answers():
    assert majority_score([None, None, "4"], [False, False, True], exact_match) == 1.0
    assert majority_score([None, None], [False, False], exact_match) == 0.0


def test_majority_groups_equivalent_answers_with_the_checker():
    # "\frac12", "0.5" and "1/2" are one group (3 votes) against "2" x2: the default match is answers_match
    answers = [["2", "\\frac12", "0.5", "2", "\\dfrac{1}{2}"]]
    correct = torch.tensor([[False, True, True, False, True]])
    metric = MajorityAtK(5)
    metric.update(answers, correct)
    assert metric.compute().item() == 1.0
    first3 = MajorityAtK(3)  # first three: "2", "\frac12", "0.5" -> the 1/2 group has 2 votes
    first3.update(answers, correct)
    assert first3.compute().item() == 1.0
    first4 = MajorityAtK(4)  # first four: "2" x2 vs 1/2 x2 -> tie -> 0.5
    first4.update(answers, correct)
    assert first4.compute().item() == 0.5


def test_majority_metric_mean_over_problems():
    metric = MajorityAtK(2, match_fn=exact_match)
    metric.update([["1", "1"], ["2", "3"]], torch.tensor([[True, True], [True, False]]))  # 1.0, tie 0.5
    metric.update([[None, "9"]], torch.tensor([[False, False]]))  # 0.0
    assert metric.compute().item() == pytest.approx(1.5 / 3)


def test_mean_length_and_backtracks():
    length = MeanResponseLength()
    length.update(torch.tensor([10.0, 20.0, 60.0]))
    assert length.compute().item() == 30.0
    texts = [
        "x. But wait, are we solving the problem correctly so far? Hmm... Let's go back to where we wrote 2.",
        "Let\u2019s restart our solution from the beginning. y. LET'S GO BACK TO the start. z",
        "But wait, are we solving the problem correctly so far? Hmm... Our solution seems to be correct so far.",
    ]
    assert [count_backtracks(t) for t in texts] == [1, 2, 0]
    assert [count_reflections(t) for t in texts] == [1, 0, 1]
    assert count_backtracks("retry. retry.", ["retry."]) == 2
    metric = MeanBacktracks()
    metric.update(texts)
    assert metric.compute().item() == 1.0


def test_accuracy_by_backtracks_bins_and_pearson():
    backtracks = torch.tensor([0, 0, 1, 2, 2, 10])
    correct = torch.tensor([0, 1, 1, 1, 0, 1], dtype=torch.bool)
    metric = AccuracyByBacktracks(max_backtracks=8)
    metric.update(backtracks[:3], correct[:3])
    metric.update(backtracks[3:], correct[3:])
    result = metric.compute()
    assert result["count"].tolist() == [2, 1, 2, 0, 0, 0, 0, 0, 1]  # 10 lands in the last bin "8+"
    accuracy = result["accuracy"].tolist()
    assert accuracy[:3] == [0.5, 1.0, 0.5] and accuracy[8] == 1.0 and all(math.isnan(a) for a in accuracy[3:8])
    expected = torch.corrcoef(torch.stack([backtracks.double(), correct.double()]))[0, 1].item()
    assert result["pearson_r"].item() == pytest.approx(expected, abs=1e-12)
    # x = 0,0,1,2,2,10 (mean 2.5), y = 0,1,1,1,0,1 (mean 2/3): Sxy = 13 - 6*2.5*2/3 = 3, Sxx = 109 - 37.5 = 71.5,
    # Syy = 4 - 6*4/9 = 4/3, r = 3 / sqrt(71.5 * 4/3) ~ 0.3073
    assert result["pearson_r"].item() == pytest.approx(3 / math.sqrt(71.5 * 4 / 3), abs=1e-12)


def test_pearson_undefined_when_constant():
    metric = AccuracyByBacktracks()
    metric.update(torch.tensor([0, 0, 0]), torch.tensor([True, False, True]))
    assert math.isnan(metric.compute()["pearson_r"].item())
