"""Benchmark metrics as torchmetrics classes (evaluation and RL validation share them) over small pure functions.

- pass@k: the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k) for n samples with c correct,
  in the product form 1 - prod_{i=n-c+1}^{n} (1 - k / i) that never forms a large binomial. pass@1 with n samples
  is the fraction correct, i.e. the paper's "pass@1 averaged over 16 samples".
- maj@k: the most frequent answer among the first k samples, answers grouped by the answer checker
  (`answers_match`), not by string. Samples without an answer do not vote. A tie between groups scores the mean
  correctness of the tied groups (expected score under random tie-breaking) rather than favouring the group seen
  first, so the result does not depend on sample order.
- Mean response length (tokens), mean backtracks per response, and accuracy by number of backtracks with the
  per-response Pearson r between backtrack count and correctness (ASTRO's analysis: more backtracks, higher
  accuracy). Pearson is kept as running sums so it reduces across processes like the other states.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torchmetrics import MeanMetric, Metric

from astro_pl.evaluation.backtracks import DEFAULT_BACKTRACK_PHRASES, count_backtracks
from astro_pl.rewards.math import answers_match, group_answers

MatchFn = Callable[[str, str], bool]


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k for one problem: probability that k of the n samples, drawn without replacement,
    include a correct one."""
    if not 0 <= num_correct <= num_samples or not 1 <= k <= num_samples:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={num_samples}, c={num_correct}, k={k}")
    if num_samples - num_correct < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(num_samples - num_correct + 1, num_samples + 1))


def majority_score(answers: Sequence[str | None], correct: Sequence[bool], match_fn: MatchFn) -> float:
    """maj@len(answers) of one problem: correctness of the largest answer group, averaged over tied groups.

    A group is as correct as its first member (members are equivalent answers, so they agree with the gold).
    """
    groups = group_answers(answers, match_fn)
    if not groups:
        return 0.0
    largest = max(len(group) for group in groups)
    tied = [group for group in groups if len(group) == largest]
    return sum(bool(correct[group[0]]) for group in tied) / len(tied)


def pearson_from_sums(n: float, sx: float, sy: float, sxx: float, syy: float, sxy: float) -> float:
    """Pearson r from running sums; NaN when either variable is constant (r undefined)."""
    cov = n * sxy - sx * sy
    var_x, var_y = n * sxx - sx * sx, n * syy - sy * sy
    if n < 2 or var_x <= 0 or var_y <= 0:
        return math.nan
    return max(-1.0, min(1.0, cov / math.sqrt(var_x * var_y)))


class PassAtK(Metric):
    """Mean unbiased pass@k over problems; `update(correct)` with correct: bool [P, n], n >= k."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, k: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, correct: torch.Tensor) -> None:
        if correct.dim() != 2:
            raise ValueError(f"PassAtK.update expects correct of shape [problems, samples], got {tuple(correct.shape)}")
        num_samples = correct.shape[1]
        if num_samples < self.k:
            raise ValueError(f"pass@{self.k} needs at least {self.k} samples per problem, got {num_samples}")
        for num_correct in correct.sum(dim=1).tolist():  # [P]
            self.total += pass_at_k(num_samples, int(num_correct), self.k)
        self.count += correct.shape[0]

    def compute(self) -> torch.Tensor:
        return self.total / self.count.clamp(min=1)


class MajorityAtK(Metric):
    """Mean maj@k over problems, voting among each problem's first k samples.

    `update(answers, correct)`: answers [P][n] extracted final answers (None: no answer), correct bool [P, n].
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, k: int, match_fn: MatchFn | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.match_fn = match_fn or answers_match
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, answers: Sequence[Sequence[str | None]], correct: torch.Tensor) -> None:
        if len(answers) != correct.shape[0]:
            raise ValueError(f"MajorityAtK.update got {len(answers)} answer lists for {correct.shape[0]} problems")
        for problem_answers, problem_correct in zip(answers, correct.tolist(), strict=True):
            if len(problem_answers) < self.k:
                raise ValueError(f"maj@{self.k} needs {self.k} samples per problem, got {len(problem_answers)}")
            self.total += majority_score(problem_answers[: self.k], problem_correct[: self.k], self.match_fn)
        self.count += len(answers)

    def compute(self) -> torch.Tensor:
        return self.total / self.count.clamp(min=1)


class MeanResponseLength(MeanMetric):
    """Mean response length in tokens; `update(lengths)` with lengths [N]."""


class MeanBacktracks(MeanMetric):
    """Mean backtracks per response; `update(texts)` counts the backtrack phrases in each response."""

    def __init__(self, phrases: Sequence[str] = DEFAULT_BACKTRACK_PHRASES, **kwargs) -> None:
        super().__init__(**kwargs)
        self.phrases = tuple(phrases)

    def update(self, texts: Sequence[str]) -> None:  # type: ignore[override]
        super().update(torch.tensor([count_backtracks(t, self.phrases) for t in texts], dtype=torch.float64))


class AccuracyByBacktracks(Metric):
    """Accuracy of responses binned by their number of backtracks, and Pearson r of backtracks vs correctness.

    `update(backtracks, correct)`: backtracks int [N], correct bool [N]. Bins 0..max_backtracks, the last one
    holding every response with at least `max_backtracks`. `compute()` returns {"accuracy": [B] (NaN for an
    empty bin), "count": [B], "pearson_r": scalar (NaN when undefined)}.
    """

    full_state_update = False

    def __init__(self, max_backtracks: int = 8, **kwargs) -> None:
        super().__init__(**kwargs)
        if max_backtracks < 1:
            raise ValueError(f"max_backtracks must be >= 1, got {max_backtracks}")
        self.max_backtracks = max_backtracks
        bins = max_backtracks + 1
        self.add_state("correct_per_bin", default=torch.zeros(bins, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("count_per_bin", default=torch.zeros(bins, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("sums", default=torch.zeros(6, dtype=torch.float64), dist_reduce_fx="sum")  # n sx sy sxx syy sxy

    def update(self, backtracks: torch.Tensor, correct: torch.Tensor) -> None:
        x = backtracks.to(torch.float64).flatten()  # [N]
        y = correct.to(torch.float64).flatten()  # [N]
        if x.shape != y.shape:
            raise ValueError(f"backtracks {tuple(x.shape)} and correct {tuple(y.shape)} differ in size")
        bins = backtracks.flatten().long().clamp(0, self.max_backtracks)  # [N]
        self.count_per_bin += torch.bincount(bins, minlength=self.max_backtracks + 1)
        self.correct_per_bin += torch.bincount(bins, weights=y, minlength=self.max_backtracks + 1).round().long()
        self.sums += torch.stack([torch.tensor(float(len(x)), dtype=torch.float64), x.sum(), y.sum(),
                                  (x * x).sum(), (y * y).sum(), (x * y).sum()])

    def compute(self) -> dict[str, torch.Tensor]:
        count = self.count_per_bin
        accuracy = torch.where(count > 0, self.correct_per_bin / count.clamp(min=1), torch.tensor(math.nan))
        pearson_r = torch.tensor(pearson_from_sums(*self.sums.tolist()), dtype=torch.float64)
        return {"accuracy": accuracy, "count": count, "pearson_r": pearson_r}
