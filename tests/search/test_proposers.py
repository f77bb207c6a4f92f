"""Step proposers: the scripted arithmetic teacher, and the LLM proposer over the real vLLM engine (tiny Llama)."""

from __future__ import annotations

import random

import pytest
from scripted_engine import ScriptedEngine

from astro_pl.datamodules.problems import Problem, synthetic_arithmetic
from astro_pl.modules.models import load_tokenizer
from astro_pl.rewards.math import answers_match
from astro_pl.search.linearize import TraceArgs, build_traces
from astro_pl.search.mcts import SearchArgs, search_trees
from astro_pl.search.proposers import (
    ArithmeticStepJudge,
    LLMProposerArgs,
    LLMStepProposer,
    ScriptedArithmeticTeacher,
    State,
    StepProposer,
    TeacherArgs,
    normalise,
    sound_steps,
)
from astro_pl.search.tree import SearchTree

PROBLEM = "Evaluate 7 + 5 * 3 - 2."


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
    assert ArithmeticStepJudge()(tree, [right.id, lucky.id]) == [True, False]


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


def test_normalise():
    assert normalise([1.0, 3.0]) == [0.25, 0.75]
    assert normalise([0.0, 0.0]) == [0.5, 0.5]


def scripted_steps(steps, rollout_text: str = "So \\boxed{5}") -> ScriptedEngine:
    """Step calls (stop strings set) answer `steps(prompt)`; rollouts answer `rollout_text`."""
    return ScriptedEngine(lambda prompt, params: steps(prompt) if params.stop else [rollout_text] * params.n)


def test_llm_proposer_drops_empty_steps(tiny_tokenizer):
    engine = scripted_steps(lambda prompt: ["", "Compute 2 + 3 = 5.", " \n ", "So \\boxed{5}"])
    proposer = LLMStepProposer(engine, tiny_tokenizer, LLMProposerArgs(seed=0))
    [steps] = proposer.propose([State("Evaluate 2 + 3.")], 4)
    assert [s.text for s in steps] == ["Compute 2 + 3 = 5.", "So \\boxed{5}"]
    assert [s.terminal for s in steps] == [False, True] and sum(s.prior for s in steps) == pytest.approx(1.0)
    empty = LLMStepProposer(scripted_steps(lambda prompt: ["", "  "]), tiny_tokenizer)
    assert empty.propose([State("Evaluate 2 + 3.")], 2) == [[]]


def test_a_state_whose_samples_are_all_empty_is_a_dead_end(tiny_tokenizer):
    """First step proposals hold empties; after "Compute 2 + 3 = 6." the model only ends: that leaf is a dead end."""
    def steps(prompt: str) -> list[str]:
        if prompt.endswith("6.\n\n"):
            return ["", "", ""]
        if prompt.endswith("5.\n\n"):
            return ["So \\boxed{5}", "", "So \\boxed{4}"]
        return ["Compute 2 + 3 = 5.", "", "Compute 2 + 3 = 6."]

    proposer = LLMStepProposer(scripted_steps(steps), tiny_tokenizer, LLMProposerArgs(seed=0))
    args = SearchArgs(iterations=8, num_children=3, num_rollouts=2, max_depth=5, c_puct=2.0, batch_size=1)
    [tree] = search_trees([Problem("p", "Evaluate 2 + 3.", "5")], proposer, args, answers_match)
    assert all(n.text.strip() for n in tree.nodes[1:]), "no empty node"
    assert [tree.nodes[c].text for c in tree.root.children] == ["Compute 2 + 3 = 5.", "Compute 2 + 3 = 6."]
    dead = tree.nodes[tree.root.children[1]]
    assert dead.terminal and dead.answer is None and dead.correct is False and dead.value == 0.0 and not dead.children
    records = build_traces(tree, TraceArgs(num_direct=1, num_search=2, dedupe=False), random.Random(0))
    assert records and all("\n\n\n" not in r["trace"] for r in records)
    assert any("Compute 2 + 3 = 6." in r["trace"] for r in records), "the dead end is taught as a wrong attempt"


# ---- LLM proposer on the real engine ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model_dir):
    return load_tokenizer(str(tiny_model_dir))


def test_llm_proposer_prompt_layout(tiny_tokenizer):
    proposer = LLMStepProposer(engine=None, tokenizer=tiny_tokenizer,
                               args=LLMProposerArgs(few_shot=["Evaluate 1 + 1.\n\nCompute 1 + 1 = 2. \\boxed{2}"]))
    prompt = proposer.prompt(State("Evaluate 2 * 3.", ("Step one.", "Step two.")))
    assert prompt == ("<s><|user|>\nEvaluate 1 + 1.\n\nCompute 1 + 1 = 2. \\boxed{2}\n\nEvaluate 2 * 3.\n"
                      "<|assistant|>\nStep one.\n\nStep two.\n\n")


def test_llm_proposer_steps_and_rollouts(vllm_engine, tiny_tokenizer):
    args = LLMProposerArgs(temperature=1.0, max_step_tokens=8, max_rollout_tokens=12, seed=0)
    proposer = LLMStepProposer(vllm_engine, tiny_tokenizer, args)
    states = [State("Evaluate 2 + 3 * 4."), State("Evaluate 5 - 1.", ("Compute 5 - 1 = 4.",))]
    proposals = proposer.propose(states, 3)
    assert all(1 <= len(p) <= 3 for p in proposals)  # empty samples are dropped
    for steps in proposals:
        assert sum(s.prior for s in steps) == pytest.approx(1.0)
        assert all(0 < s.prior < 1 for s in steps)
        assert all("\n\n" not in s.text for s in steps), "sampling stops at the step delimiter"
        assert all(s.text and s.terminal == (s.answer is not None) for s in steps)
    rollouts = proposer.rollout(states, 4)
    assert [len(r) for r in rollouts] == [4, 4]
    assert all(a is None or isinstance(a, str) for row in rollouts for a in row)


def test_llm_proposer_drives_a_batched_search(vllm_engine, tiny_tokenizer):
    args = LLMProposerArgs(max_step_tokens=6, max_rollout_tokens=8, seed=1)
    proposer = LLMStepProposer(vllm_engine, tiny_tokenizer, args)
    problems = synthetic_arithmetic(3, seed=0)
    search = SearchArgs(iterations=3, num_children=2, num_rollouts=2, max_depth=3, batch_size=3)
    trees = list(search_trees(problems, proposer, search, answers_match))
    assert [t.problem_id for t in trees] == [p.id for p in problems]
    for tree in trees:
        assert tree.root.visits == 3 and len(tree.nodes) > 1
        assert max(n.depth for n in tree.nodes) <= 3
        assert all(n.terminal for n in tree.nodes if n.depth == 3)
