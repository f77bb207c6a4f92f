"""Hostile answers, the hard time limit, the worker pool, the cache, and calls from threads and DataLoader workers."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from astro_pl.rewards import answers_match, extract_final_answer, math_reward, warm_up
from astro_pl.rewards import math as checker
from astro_pl.rewards.pool import WorkerPool
from astro_pl.rewards.symbolic import to_sympy

LIMIT = 2.0
SLACK = 1.0  # process scheduling on a loaded 2-core machine (other test suites run beside this one)


@pytest.fixture(scope="module", autouse=True)
def _warm_workers():
    warm_up()  # worker start (about 1 s) is outside the per-check limit by design


def _timed(fn, *args, **kwargs):
    start = time.monotonic()
    result = fn(*args, **kwargs)
    return result, time.monotonic() - start


def _injections(marker) -> list[str]:
    return [
        f"__import__('os').system('touch {marker}')",
        f"\\text{{__import__('os').system('touch {marker}')}}",
        f"eval(\"__import__('os').system('touch {marker}')\")",
        f"exec('import os; os.system(\"touch {marker}\")')",
        f"Symbol('x').__class__.__init__.__globals__['os'].system('touch {marker}')",
        f"\\frac{{__import__('os').system('touch {marker}')}}{{2}}",
    ]


def test_code_in_answers_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    for text in _injections(marker):
        for pred, gold in ((text, "0"), ("0", text), (text, "x")):
            verdict, took = _timed(answers_match, pred, gold)
            assert verdict is False and took < LIMIT + SLACK
        assert answers_match(text, text + " ")  # the same text is the same answer, and still nothing runs
        assert math_reward(f"\\boxed{{{text}}}", "0") == -1.0
        assert to_sympy(text) is None or not marker.exists()  # the worker-side parser, in this process too
    assert not marker.exists()


HOSTILE = {
    "deep_braces": "{" * 10_000 + "1" + "}" * 10_000,
    "deep_parens": "(" * 10_000 + "1" + ")" * 10_000,
    "deep_sqrt": "\\sqrt{" * 10_000 + "2" + "}" * 10_000,
    "deep_frac": "\\frac{" * 300 + "1" + "}{2}" * 300,
    "power_tower": "9^{9^{9^{9}}}",
    "power_tower_2": "10^{10^{10}}",
    "huge_power": "2^{100000000}",
    "huge_factorial": "100000000!",
    "huge_binomial": "\\binom{1000000000}{5000}",
    "huge_exponent_literal": "1e999999999",
    "huge_sum": "\\sum_{k=1}^{10^{9}} k",
    "long_answer": "1" * 200_000,
    "long_expression": "x+" * 66_666 + "x",
    "unbalanced_open": "\\frac{1}{2",
    "unbalanced_close": "}{",
    "unbalanced_env": "\\begin{pmatrix} 1 \\\\ 2",
    "lone_surrogate": "\ud800",
    "surrogate_in_number": "1\udfff2",
    "nul_and_controls": "1\x00\x1b[2J",
    "nested_sets": "\\{" + ",".join(["\\{" + ",".join(["1"] * 30) + "\\}"] * 30) + "\\}",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_answers_return_false_in_time(name):
    text = HOSTILE[name]
    for pred, gold in ((text, "1"), ("1", text), (text, "x")):
        verdict, took = _timed(answers_match, pred, gold)
        assert verdict is False, (name, pred[:40], gold[:40])
        assert took < LIMIT + SLACK, (name, took)
    answer, took = _timed(extract_final_answer, f"\\boxed{{{text}}}")
    assert took < LIMIT


def test_nested_unordered_groups_stay_bounded():
    # 30 sets of 30 items each against a near copy: the all-pairs tables would need 30^4 scalar comparisons
    def nested(last: str) -> str:
        return "\\{" + ",".join(["\\{" + ",".join(["1"] * 29 + [last]) + "\\}"] * 30) + "\\}"

    verdict, took = _timed(answers_match, nested("1"), nested("2"))
    assert verdict is False and took < LIMIT + SLACK


def test_hostile_responses_extract_in_time():
    cases = [
        "\\boxed{" * 100_000,
        "{" * 200_000,
        "\\boxed 1 " * 30_000,
        "x" * 200_000 + "\\boxed{7}",
        "\\boxed{\ud800}",
    ]
    expected = [None, None, "1", "7", "\ud800"]
    for text, want in zip(cases, expected, strict=True):
        answer, took = _timed(extract_final_answer, text)
        assert answer == want and took < 1.0
        assert math_reward(text, "2") == -1.0


def test_slow_symbolic_check_hits_the_time_limit():
    # sympy needs about 40 s (on one core here) to sum k^60 symbolically
    pred, gold = "\\sum_{k=1}^{n} k^{60}", "n^{61}"
    verdict, took = _timed(answers_match, pred, gold, timeout=0.5)
    assert verdict is False and took < 0.5 + SLACK
    assert answers_match("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}")  # the pool still answers afterwards


def test_stuck_worker_is_killed_and_replaced():
    pool = WorkerPool(max_workers=1)
    try:
        pool.warm_up()
        stuck = pool._idle[0]
        os.kill(stuck.proc.pid, signal.SIGSTOP)  # frozen inside C code: the inner timer cannot fire
        verdicts, took = _timed(pool.check, [("\\sqrt{8}", "2\\sqrt{2}")], time.monotonic() + 0.5)
        assert verdicts == [False] and took < 0.5 + SLACK
        assert pool.restarts == 1 and stuck.proc.poll() is not None
        assert pool.check([("\\sqrt{8}", "2\\sqrt{2}")], time.monotonic() + 30) == [True]
    finally:
        pool.close()


def test_verdicts_are_cached():
    pred, gold = "\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"
    checker._cache.pop((pred, gold), None)
    assert answers_match(pred, gold)
    assert checker._cache[(pred, gold)] is True
    _, took = _timed(answers_match, pred, gold)
    assert took < 0.005


def test_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(checker, "CACHE_SIZE", 10)
    for i in range(30):
        answers_match(str(i), str(i + 1))
    assert len(checker._cache) <= 11


PARALLEL_CASES = [
    ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}", True),
    ("x^2+2x+1", "(x+1)^2", True),
    ("(1,2)", "(2,1)", False),
    ("0.5", "\\frac12", True),
    ("\\sqrt{2}", "2", False),
    ("2x+3", "y = 3 + 2x", True),
    ("9^{9^{9^{9}}}", "1", False),
    ("\\pi", "3.14", False),
] * 4


def test_thread_pool_calls():
    checker._cache.clear()
    with ThreadPoolExecutor(max_workers=4) as ex:
        verdicts = list(ex.map(lambda c: answers_match(c[0], c[1]), PARALLEL_CASES))
    assert verdicts == [e for *_, e in PARALLEL_CASES]


class _PairDataset(Dataset):
    def __len__(self) -> int:
        return len(PARALLEL_CASES)

    def __getitem__(self, i: int) -> torch.Tensor:
        pred, gold, _ = PARALLEL_CASES[i]
        return torch.tensor([answers_match(pred, gold), os.getpid()])


def test_dataloader_worker_calls():
    checker._cache.clear()  # make the workers check for themselves (forked processes inherit the cache)
    loader = DataLoader(_PairDataset(), batch_size=4, num_workers=2)
    rows = torch.cat(list(loader))
    assert rows[:, 0].bool().tolist() == [e for *_, e in PARALLEL_CASES]
    assert set(rows[:, 1].tolist()) - {os.getpid()}, "checks did not run in worker processes"


def test_surrogates_do_not_break_the_worker_protocol():
    assert answers_match("\\sqrt{\ud800 8}", "2\\sqrt{2}") is True  # the surrogate is dropped, not sent on
    assert answers_match("\\sqrt{8}", "2\\sqrt{2}")
