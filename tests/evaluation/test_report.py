"""Summary from per-sample records, the Markdown table, and the accuracy-vs-backtracks PNG."""

from __future__ import annotations

import json

import pytest

from astro_pl.evaluation.report import markdown_table, plot_backtracks, summarize, write_report

SETTINGS = {"num_samples": 2, "pass_at": [1, 2], "maj_at": [2], "max_backtracks": 2}


def record(benchmark, index, sample, answer, correct, backtracks, length, finish_reason="stop", grounded=0):
    return {"benchmark": benchmark, "problem_id": f"p{index}", "index": index, "sample": sample, "answer": answer,
            "correct": correct, "backtracks": backtracks, "reflections": backtracks, "length": length,
            "finish_reason": finish_reason, "grounded_backtracks": grounded}


RECORDS = [
    record("math500", 0, 0, "1", True, 1, 10, grounded=1),
    record("math500", 0, 1, "2", False, 0, 20),
    record("math500", 1, 0, "5", True, 3, 30, grounded=1),
    record("math500", 1, 1, "5", True, 2, 40, grounded=2),
    record("aime24", 2, 0, None, False, 0, 50, "length"),
    record("aime24", 2, 1, "7", False, 0, 50),
]


def test_summarize_hand_values():
    summary = summarize(list(reversed(RECORDS)), SETTINGS)  # order of records does not matter
    math500, aime = summary["benchmarks"]["math500"], summary["benchmarks"]["aime24"]
    assert list(summary["benchmarks"]) == ["math500", "aime24"]
    assert math500["num_problems"] == 2 and math500["num_samples"] == 2
    assert math500["pass@1"] == 0.75  # (1/2 + 2/2) / 2
    assert math500["pass@2"] == 1.0
    assert math500["maj@2"] == 0.75  # problem 0: tie "1" (correct) vs "2" -> 0.5; problem 1: "5" x2 -> 1
    assert math500["mean_length"] == 25.0 and math500["mean_backtracks"] == 1.5
    assert math500["grounded_backtracks"] == pytest.approx(4 / 6)  # (1 + 0 + 1 + 2) of (1 + 0 + 3 + 2)
    assert aime["grounded_backtracks"] is None  # no backtrack at all: the share is undefined
    # bins 0, 1, 2+ : backtracks 1, 0, 3->2+, 2 -> counts 1, 1, 2
    assert math500["accuracy_by_backtracks"] == {"0": {"accuracy": 0.0, "count": 1}, "1": {"accuracy": 1.0, "count": 1},
                                                 "2+": {"accuracy": 1.0, "count": 2}}
    assert aime["pass@1"] == 0.0 and aime["maj@2"] == 0.0 and aime["pearson_r"] is None  # constant backtracks
    assert math500["truncation_rate"] == 0.0 and math500["pass@1_finished"] == 0.75
    assert aime["truncation_rate"] == 0.5 and aime["pass@1_finished"] == 0.0
    assert summary["all"]["accuracy_by_backtracks"]["0"] == {"accuracy": 0.0, "count": 3}
    assert summary["all"]["pearson_r"] > 0.5
    assert summary["settings"] == SETTINGS
    json.dumps(summary, allow_nan=False)  # null, not NaN


def test_summarize_rejects_incomplete_problem():
    with pytest.raises(ValueError, match="exactly 2 samples"):
        summarize(RECORDS[:3], SETTINGS)


def test_markdown_table_has_a_row_per_benchmark():
    table = markdown_table(summarize(RECORDS, SETTINGS))
    lines = table.splitlines()
    assert lines[0] == ("| benchmark | problems | pass@1 | pass@2 | maj@2 | pass@1 finished | truncated | mean length "
                        "| backtracks / response | grounded | Pearson r |")
    assert lines[2].startswith("| math500 | 2 | 75.0 | 100.0 | 75.0 | 75.0 | 0.0 | 25.0 | 1.50 | 67% | ")
    assert lines[3] == "| aime24 | 1 | 0.0 | 0.0 | 0.0 | 0.0 | 50.0 | 50.0 | 0.00 | n/a | n/a |"


def test_truncated_samples_lower_pass_at_1_not_pass_at_1_finished():
    # Problem 0: one finished correct, one cut off (no answer). Problem 1: both cut off.
    # pass@1 = (1/2 + 0/2) / 2 = 0.25; truncation 3/4; among the one finished sample, 1/1 correct.
    records = [record("m", 0, 0, "4", True, 0, 10), record("m", 0, 1, None, False, 1, 32, "length"),
               record("m", 1, 0, None, False, 2, 32, "length"), record("m", 1, 1, None, False, 2, 32, "length")]
    scores = summarize(records, {**SETTINGS, "maj_at": [2]})["benchmarks"]["m"]
    assert scores["pass@1"] == 0.25 and scores["truncation_rate"] == 0.75 and scores["pass@1_finished"] == 1.0
    assert scores["maj@2"] == 0.5  # problem 0: only "4" votes; problem 1: no votes -> 0
    all_cut = summarize(records[2:], SETTINGS)["benchmarks"]["m"]
    assert all_cut["pass@1_finished"] is None and "| m | 1 | 0.0 | 0.0 | 0.0 | n/a | 100.0 |" in markdown_table(
        summarize(records[2:], SETTINGS))


def test_plot_is_a_png(tmp_path):
    path = plot_backtracks(summarize(RECORDS, SETTINGS), tmp_path / "plot.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_write_report_files(tmp_path):
    summary = summarize(RECORDS, SETTINGS)
    table = write_report(summary, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary
    assert (tmp_path / "out" / "summary.md").read_text() == table + "\n"
    assert (tmp_path / "out" / "backtracks.png").read_bytes()[:4] == b"\x89PNG"
