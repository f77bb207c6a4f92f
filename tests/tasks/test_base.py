"""The task interface: splits by name, the cut-off rule, the description runs record, and MathTask's sources."""

from __future__ import annotations

import json

import pytest

from astro_pl.data.problems import ProblemSource
from astro_pl.tasks import ArithmeticTask, MathTask, flat_problems
from astro_pl.tasks.base import describe_task


def test_arithmetic_splits_come_from_their_own_seeds_and_one_difficulty():
    task = ArithmeticTask(num_train=30, num_val=5, num_test=7, operators="+-", operand_max=4)
    train, val, test = (task.problems(s)["synthetic"] for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (30, 5, 7)
    assert {p.id.split("-")[1] for p in train + val + test} == {"0", "1000003", "12345"}
    assert all("*" not in p.problem for p in train + val + test)
    assert flat_problems(task, "train", limit=4) == train[:4]
    with pytest.raises(ValueError, match="--limit must be >= 0"):
        flat_problems(task, "train", limit=-1)
    with pytest.raises(ValueError, match="--task.num_val must be >= 0"):
        ArithmeticTask(num_val=-1)
    with pytest.raises(ValueError, match="operators"):
        ArithmeticTask(operators="/")


def test_final_answer_is_none_when_cut_off():
    task = ArithmeticTask()
    assert task.final_answer("so \\boxed{3}", "stop") == "3"
    assert task.final_answer("so \\boxed{3} but wait", "length") is None
    assert task.final_answer("so \\boxed{3} but wait", "length", score_truncated=True) == "3"


def test_math_task_reports_each_source_by_name(shared_data):
    task = MathTask(test=["aime24", ProblemSource("amc23", limit=3, name="amc")], train=[])
    sets = task.problems("test")
    assert list(sets) == ["aime24", "amc"] and len(sets["aime24"]) == 30 and len(sets["amc"]) == 3
    assert task.problems("val") == {} and task.problems("train") == {}
    with pytest.raises(ValueError, match="two sources share a name"):
        MathTask(test=["amc23", "amc23"])


def test_description_is_json_and_tells_tasks_apart():
    a, b = describe_task(ArithmeticTask(seed=1)), describe_task(ArithmeticTask(seed=2))
    assert a != b and a["class_path"] == "astro_pl.tasks.arithmetic.ArithmeticTask"
    json.dumps(describe_task(MathTask(test=[ProblemSource("x.jsonl", limit=2)])))
