"""`astro select-prompts`, its pure parts: which samples count as correct, the band, seed-safe batches."""

from __future__ import annotations

import json

import pytest

from astro_pl.data.problems import Problem
from astro_pl.evaluation.select_prompts import (
    SelectArgs,
    consecutive_batches,
    in_band,
    resume,
    sample_correct,
    score_record,
    select_in_band,
    summarize,
)
from astro_pl.rollout.base import Completion
from astro_pl.tasks import ArithmeticTask, MathTask

TASK = MathTask()  # its checker; no problem file is read


def completion(text: str, finish_reason: str = "stop") -> Completion:
    return Completion(text, [1] * 4, [], finish_reason)


def test_a_truncated_sample_is_wrong_even_with_a_correct_earlier_box():
    problem = Problem("p", "Evaluate 3 + 4.", "7")
    assert sample_correct(TASK, completion("3 + 4 = \\boxed{7}"), problem)
    # ASTRO traces box each attempt before doubting it: cut off after a correct box, there is no final answer
    assert not sample_correct(TASK, completion("3 + 4 = \\boxed{7}. But wait, are we", "length"), problem)
    assert not sample_correct(TASK, completion("3 + 4 = \\boxed{8}"), problem)
    assert not sample_correct(TASK, completion("3 + 4 = 7"), problem)  # no box, no answer


def test_band_is_open_below_and_closed_above():
    assert [in_band(rate, 0.0, 0.75) for rate in (0.0, 0.25, 0.5, 0.75, 1.0)] == [False, True, True, True, False]
    assert [in_band(rate, 0.25, 0.5) for rate in (0.25, 0.375, 0.5, 0.625)] == [False, True, True, False]


def test_select_in_band_keeps_problems_in_order():
    problems = [Problem(f"p{i}", f"Evaluate {i} + 1.", str(i + 1)) for i in range(5)]
    # 4 samples each; correct: 0, 1, 3, 4, 2 -> rates 0, .25, .75, 1, .5
    outcomes = [[False] * 4, [True, False, False, False], [True, True, False, True], [True] * 4,
                [False, True, False, True]]
    records = [score_record(TASK, "synthetic", i, p, [completion(f"\\boxed{{{p.answer if ok else 'x'}}}")
                                                      for ok in row])
               for i, (p, row) in enumerate(zip(problems, outcomes, strict=True))]
    assert [r["pass_rate"] for r in records] == [0.0, 0.25, 0.75, 1.0, 0.5]
    assert [p["id"] for p in select_in_band(records, 0.0, 0.75)] == ["p1", "p2", "p4"]
    assert select_in_band(records, 0.0, 0.75)[0] == {"id": "p1", "problem": "Evaluate 1 + 1.", "answer": "2",
                                                      "solution": None, "subject": None, "level": None}
    summary = summarize(records, {}, 0.0, 0.75)
    assert summary["prompts"] == 5 and summary["selected"] == 3
    assert summary["prompts_by_correct_samples"] == {"0": 1, "1": 1, "2": 1, "3": 1, "4": 1}


def test_truncated_samples_are_counted():
    p = Problem("p", "Evaluate 1 + 1.", "2")
    record = score_record(TASK, "s", 0, p, [completion("\\boxed{2}"), completion("\\boxed{2} wait", "length")])
    assert (record["correct"], record["truncated"], record["pass_rate"]) == (1, 1, 0.5)


def test_consecutive_batches_never_span_a_gap():
    assert list(consecutive_batches([0, 1, 2, 3, 4], 2)) == [[0, 1], [2, 3], [4]]
    assert list(consecutive_batches([7, 3, 4, 8, 9, 10, 5], 3)) == [[3, 4, 5], [7, 8, 9], [10]]
    assert list(consecutive_batches([], 4)) == []


def test_bad_options_name_the_flag():
    task = ArithmeticTask()
    with pytest.raises(ValueError, match="--min_pass_rate < --max_pass_rate"):
        SelectArgs(model="m", task=task, min_pass_rate=0.5, max_pass_rate=0.5)
    with pytest.raises(ValueError, match="--model is required"):
        SelectArgs(task=task)
    with pytest.raises(ValueError, match="--task is required"):
        SelectArgs(model="m")
    with pytest.raises(ValueError, match="--num_samples must be >= 1"):
        SelectArgs(model="m", task=task, num_samples=0)
    with pytest.raises(ValueError, match="--shard"):
        SelectArgs(model="m", task=task, shard="2/2")


def test_resume_cuts_a_torn_line_and_refuses_other_settings_only_with_scores(tmp_path):
    scores, settings_path = tmp_path / "scores.jsonl", tmp_path / "settings.json"
    settings = {"num_samples": 4, "seed": 0}
    assert resume(scores, settings_path, settings) == [] and json.loads(settings_path.read_text()) == settings
    scores.write_text('{"index": 0}\n{"index": 1}\n{"ind')  # killed while writing the third record
    assert resume(scores, settings_path, settings) == [{"index": 0}, {"index": 1}]
    assert scores.read_text() == '{"index": 0}\n{"index": 1}\n'
    with pytest.raises(ValueError, match=r"scores\.jsonl holds scores of other settings \(num_samples\)"):
        resume(scores, settings_path, settings | {"num_samples": 2})
    scores.write_text('{"index": 0}\nnot json\n{"index": 2}\n')
    with pytest.raises(ValueError, match=r"scores\.jsonl:2: not a JSON record"):
        resume(scores, settings_path, settings)
    scores.unlink()  # settings written, but nothing scored (say the engine failed to start): new settings are fine
    assert resume(scores, settings_path, settings | {"seed": 1}) == []
    assert json.loads(settings_path.read_text())["seed"] == 1
