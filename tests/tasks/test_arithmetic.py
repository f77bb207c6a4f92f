"""The synthetic arithmetic task: problem generation, exact gold, the scripted teacher and the soundness judge."""

from __future__ import annotations

import operator

import pytest

from astro_pl.search.tree import SearchTree
from astro_pl.tasks.arithmetic import (
    ArithmeticTask,
    ScriptedArithmeticTeacher,
    TeacherArgs,
    evaluate_tokens,
    parse_arithmetic,
    sound_steps,
    synthetic_arithmetic,
)
from astro_pl.tasks.base import State, StepProposer

PROBLEM = "Evaluate 7 + 5 * 3 - 2."

def brute_value(expr: str) -> int:
    """Independent check: reduce the highest-precedence operator first on a list of numbers and operators."""
    items = expr.split(" ")
    for ops in ({"*": operator.mul}, {"+": operator.add, "-": operator.sub}):
        i = 1
        while i < len(items):
            if items[i] in ops:
                items[i - 1:i + 2] = [str(ops[items[i]](int(items[i - 1]), int(items[i + 1])))]
            else:
                i += 2
    (value,) = items
    return int(value)


def test_synthetic_is_deterministic_and_extends():
    a = synthetic_arithmetic(50, seed=3)
    assert a == synthetic_arithmetic(50, seed=3)
    assert synthetic_arithmetic(80, seed=3)[:50] == a
    assert a != synthetic_arithmetic(50, seed=4)
    assert [p.id for p in a[:2]] == ["synthetic-3-0", "synthetic-3-1"]


def test_synthetic_gold_is_exact_and_text_matches_convention():
    problems = synthetic_arithmetic(300, seed=0, min_operations=1, max_operations=5, operand_min=0, operand_max=20)
    for p in problems:
        assert p.problem.startswith("Evaluate ") and p.problem.endswith(".")
        expr = p.problem[len("Evaluate "):-1]
        assert p.answer == str(brute_value(expr))
        tokens = parse_arithmetic(p.problem)
        assert len(tokens) == 2 * p.level + 1 and all(0 <= t <= 20 for t in tokens[::2])
    assert any(int(p.answer) < 0 for p in problems) and any("*" in p.problem for p in problems)


def test_parse_and_evaluate_tokens():
    assert parse_arithmetic("Evaluate 3 + 4 * 2 - 5.") == [3, "+", 4, "*", 2, "-", 5]
    assert evaluate_tokens([3, "+", 4, "*", 2, "-", 5]) == 6
    assert evaluate_tokens([2, "-", 3, "*", 4, "-", 1]) == -11  # 2 - 12 - 1
    assert evaluate_tokens([7]) == 7
    for text in ["Evaluate 3 +.", "Compute 3 + 4.", "Evaluate 3 / 4.", "Evaluate (3 + 4).", "Evaluate 3+4."]:
        assert parse_arithmetic(text) is None
    with pytest.raises(ValueError):
        evaluate_tokens([3, "/", 4])
    with pytest.raises(ValueError):
        evaluate_tokens([3, "+"])


def test_synthetic_argument_checks():
    with pytest.raises(ValueError, match="min_operations"):
        synthetic_arithmetic(1, min_operations=3, max_operations=2)
    with pytest.raises(ValueError, match="operand_min"):
        synthetic_arithmetic(1, operand_min=-1)


def test_synthetic_operators_knob_limits_the_operators():
    problems = synthetic_arithmetic(200, seed=3, operators="+-")
    ops = {tok for p in problems for tok in parse_arithmetic(p.problem)[1::2]}
    assert ops == {"+", "-"}
    with pytest.raises(ValueError, match="operators"):
        synthetic_arithmetic(1, operators="/")


# ---- the scripted teacher and the soundness judge ----

def test_teacher_without_errors_follows_precedence():
    teacher = ScriptedArithmeticTeacher(TeacherArgs(error_rate=0.0, seed=0))
    assert isinstance(teacher, StepProposer)
    [steps] = teacher.propose([State(PROBLEM)], 3)
    assert {s.text for s in steps} == {"Compute 5 * 3 = 15. Now we have 7 + 15 - 2."}
    assert sum(s.prior for s in steps) == pytest.approx(1.0)
    state = State(PROBLEM, (steps[0].text,))
    assert teacher.tokens(state) == [7, "+", 15, "-", 2]
    [[step]] = teacher.propose([state], 1)
    assert step.text == "Compute 7 + 15 = 22. Now we have 22 - 2." and not step.terminal
    [[last]] = teacher.propose([State(PROBLEM, (steps[0].text, step.text))], 1)
    assert last.text == "Compute 22 - 2 = 20. The answer is \\boxed{20}."
    assert last.terminal and last.answer == "20" and last.prior == 1.0


def test_teacher_with_errors_is_always_wrong_on_one_operation():
    teacher = ScriptedArithmeticTeacher(TeacherArgs(error_rate=1.0, max_offset=2, seed=0))
    [steps] = teacher.propose([State("Evaluate 4 + 5.")], 8)
    assert all(s.terminal and s.answer != "9" and abs(int(s.answer) - 9) <= 2 for s in steps)
    [answers] = teacher.rollout([State("Evaluate 4 + 5.")], 8)
    assert all(a != "9" for a in answers)


def test_teacher_wrong_order_and_negative_intermediates():
    # with error_rate 1 some steps do "7 + 5" before "5 * 3"; the state after them still parses
    teacher = ScriptedArithmeticTeacher(TeacherArgs(error_rate=1.0, seed=0))
    [steps] = teacher.propose([State(PROBLEM)], 40)
    texts = {s.text for s in steps}
    assert "Compute 7 + 5 = 12. Now we have 12 * 3 - 2." in texts
    assert any(t.startswith("Compute 5 * 3 = ") and "= 15." not in t for t in texts)
    assert teacher.tokens(State("Evaluate 1 - 9 * 2.", ("Compute 1 - 9 = -8. Now we have -8 * 2.",))) == [-8, "*", 2]


def test_teacher_rollouts_match_error_rate():
    problems = synthetic_arithmetic(40, seed=2, min_operations=2, max_operations=2)
    clean = ScriptedArithmeticTeacher(TeacherArgs(error_rate=0.0, seed=0))
    answers = clean.rollout([State(p.problem) for p in problems], 2)
    assert all(a == [p.answer, p.answer] for a, p in zip(answers, problems, strict=True))
    noisy = ScriptedArithmeticTeacher(TeacherArgs(error_rate=0.3, seed=0))
    answers = noisy.rollout([State(p.problem) for p in problems], 10)
    rate = sum(a == p.answer for row, p in zip(answers, problems, strict=True) for a in row) / 400
    # two steps, each right with p 0.7 -> about 0.49 (plus lucky wrong-order steps); 400 samples
    assert 0.35 < rate < 0.7


def test_teacher_is_seeded_and_prefers_correct_steps():
    def proposals(seed):
        teacher = ScriptedArithmeticTeacher(TeacherArgs(error_rate=0.5, correct_weight=4.0, prior_noise=0.1,
                                                        seed=seed))
        return teacher.propose([State(f"Evaluate 7 + 5 * 3 - {d}.") for d in range(1, 21)], 4)

    assert proposals(7) == proposals(7) and proposals(7) != proposals(8)
    right = [s.prior for row in proposals(7) for s in row if s.text.startswith("Compute 5 * 3 = 15.")]
    wrong = [s.prior for row in proposals(7) for s in row if not s.text.startswith("Compute 5 * 3 = 15.")]
    assert sum(right) / len(right) > 2 * sum(wrong) / len(wrong)


def test_teacher_draws_do_not_depend_on_the_batch():
    # what sharded and resumed runs rely on: a state gets the same steps and rollouts alone or among others
    teacher = ScriptedArithmeticTeacher(TeacherArgs(error_rate=0.5, seed=3))
    states = [State(PROBLEM), State("Evaluate 4 * 6 - 1."),
              State(PROBLEM, ("Compute 5 * 3 = 15. Now we have 7 + 15 - 2.",))]
    together = teacher.propose(states, 6), teacher.rollout(states, 6)
    alone = [teacher.propose([s], 6)[0] for s in reversed(states)][::-1], [teacher.rollout([s], 6)[0] for s in states]
    assert together == alone
    assert len({tuple(a) for a in together[1]}) > 1 and len({s.text for s in together[0][0]}) > 1, "still noisy"


def test_sound_steps_rejects_lucky_and_wrong_order_paths():
    good = ["Compute 5 * 3 = 15. Now we have 7 + 15 - 2.", "Compute 7 + 15 = 22. Now we have 22 - 2.",
            "Compute 22 - 2 = 20. The answer is \\boxed{20}."]
    assert sound_steps(PROBLEM, good) and sound_steps(PROBLEM, good[:1])
    # right answer through wrong steps: 5 * 3 = 16 (off by +1), then 7 + 16 = 22 (off by -1) cancels it
    lucky = ["Compute 5 * 3 = 16. Now we have 7 + 16 - 2.", "Compute 7 + 16 = 22. Now we have 22 - 2.", good[2]]
    assert not sound_steps(PROBLEM, lucky)
    assert not sound_steps(PROBLEM, ["Compute 7 + 5 = 12. Now we have 12 * 3 - 2."]), "precedence broken"
    assert not sound_steps(PROBLEM, [*good, good[2]]), "a step after the answer"
    assert not sound_steps(PROBLEM, ["Let x = 3."]) and not sound_steps("What is 2 + 2?", [])


def test_arithmetic_judge_checks_each_terminals_path():
    tree = SearchTree("p", PROBLEM, "20")
    a = tree.add_child(0, "Compute 5 * 3 = 15. Now we have 7 + 15 - 2.")
    b = tree.add_child(a.id, "Compute 7 + 15 = 22. Now we have 22 - 2.")
    right = tree.add_child(b.id, "Compute 22 - 2 = 20. The answer is \\boxed{20}.")
    w = tree.add_child(a.id, "Compute 7 + 15 = 23. Now we have 23 - 2.")
    lucky = tree.add_child(w.id, "Compute 23 - 2 = 20. The answer is \\boxed{20}.")
    task = ArithmeticTask()
    assert [task.sound(tree.problem, tree.steps(i)) for i in (right.id, lucky.id)] == [True, False]
    assert task.has_judge


def test_teacher_rejects_other_problems_and_foreign_steps():
    teacher = ScriptedArithmeticTeacher()
    with pytest.raises(ValueError, match="only solves 'Evaluate <expr>.'"):
        teacher.propose([State("What is 2 + 2?")], 2)
    with pytest.raises(ValueError, match="not a non-final teacher step"):
        teacher.rollout([State(PROBLEM, ("Let x = 3.",))], 2)


def test_teacher_args_name_the_flag():
    with pytest.raises(ValueError, match="--teacher.error_rate"):
        TeacherArgs(error_rate=1.5)
    with pytest.raises(ValueError, match="--teacher.max_offset"):
        TeacherArgs(max_offset=0)
