"""The LLM step proposer over the real vLLM engine (tiny Llama); the scripted teacher is tested with its task."""

from __future__ import annotations

import random

import pytest
from scripted_engine import ScriptedEngine

from astro_pl.data.problems import Problem
from astro_pl.loading import load_tokenizer
from astro_pl.rewards.math import answers_match
from astro_pl.search.linearize import TraceArgs, build_traces
from astro_pl.search.mcts import SearchArgs, search_trees
from astro_pl.search.proposers import LLMProposerArgs, LLMStepProposer
from astro_pl.tasks import GraphTask
from astro_pl.tasks.arithmetic import ArithmeticTask, synthetic_arithmetic
from astro_pl.tasks.base import State, normalise
from astro_pl.tasks.graph import Graph, format_graph

PROBLEM = "Evaluate 7 + 5 * 3 - 2."
TASK = ArithmeticTask()


def test_normalise():
    assert normalise([1.0, 3.0]) == [0.25, 0.75]
    assert normalise([0.0, 0.0]) == [0.5, 0.5]


def scripted_steps(steps, rollout_text: str = "So \\boxed{5}") -> ScriptedEngine:
    """Step calls (stop strings set) answer `steps(prompt)`; rollouts answer `rollout_text`."""
    return ScriptedEngine(lambda prompt, params: steps(prompt) if params.stop else [rollout_text] * params.n)


def test_llm_proposer_drops_empty_steps(tiny_tokenizer):
    engine = scripted_steps(lambda prompt: ["", "Compute 2 + 3 = 5.", " \n ", "So \\boxed{5}"])
    proposer = LLMStepProposer(engine, tiny_tokenizer, TASK, LLMProposerArgs(seed=0))
    [steps] = proposer.propose([State("Evaluate 2 + 3.")], 4)
    assert [s.text for s in steps] == ["Compute 2 + 3 = 5.", "So \\boxed{5}"]
    assert [s.terminal for s in steps] == [False, True] and sum(s.prior for s in steps) == pytest.approx(1.0)
    empty = LLMStepProposer(scripted_steps(lambda prompt: ["", "  "]), tiny_tokenizer, TASK)
    assert empty.propose([State("Evaluate 2 + 3.")], 2) == [[]]


def test_llm_proposer_reads_steps_and_answers_through_the_task(tiny_tokenizer):
    """Illegal moves are dropped and terminals are the graph's; a rollout cut off at the token limit has no answer."""
    problem = format_graph(Graph(((97, 57), (57, 44), (97, 98), (98, 71)), 97, 71))
    steps = scripted_steps(lambda prompt: ["57>44"] if prompt.endswith("97>57\n\n") else
                           ["97>57", "97>44", "restart.", "97>98 dead", "97>57 \\boxed{97 57}"])
    proposer = LLMStepProposer(steps, tiny_tokenizer, GraphTask())
    [root] = proposer.propose([State(problem)], 5)
    assert [(s.text, s.terminal, s.answer) for s in root] == [("97>57", False, None), ("97>98", False, None),
                                                               ("97>57", False, None)]
    assert sum(s.prior for s in root) == pytest.approx(1.0)
    [[dead]] = proposer.propose([State(problem, ("97>57",))], 1)
    assert (dead.text, dead.terminal, dead.answer) == ("57>44 dead", True, "97 57 44")

    class CutOff(ScriptedEngine):
        def generate(self, prompts, params):
            return [[c._replace(finish_reason="length") for c in row] for row in super().generate(prompts, params)]

    boxed = "97>98\n\n98>71 \\boxed{97 98 71}"
    assert LLMStepProposer(scripted_steps(None, boxed), tiny_tokenizer, GraphTask()).rollout([State(problem)], 2) \
        == [["97 98 71", "97 98 71"]]
    cut = CutOff(lambda prompt, params: [boxed] * params.n)
    assert LLMStepProposer(cut, tiny_tokenizer, GraphTask()).rollout([State(problem)], 2) == [[None, None]]


def test_a_state_whose_samples_are_all_empty_is_a_dead_end(tiny_tokenizer):
    """First step proposals hold empties; after "Compute 2 + 3 = 6." the model only ends: that leaf is a dead end."""
    def steps(prompt: str) -> list[str]:
        if prompt.endswith("6.\n\n"):
            return ["", "", ""]
        if prompt.endswith("5.\n\n"):
            return ["So \\boxed{5}", "", "So \\boxed{4}"]
        return ["Compute 2 + 3 = 5.", "", "Compute 2 + 3 = 6."]

    proposer = LLMStepProposer(scripted_steps(steps), tiny_tokenizer, TASK, LLMProposerArgs(seed=0))
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
    proposer = LLMStepProposer(engine=None, tokenizer=tiny_tokenizer, task=TASK,
                               args=LLMProposerArgs(few_shot=["Evaluate 1 + 1.\n\nCompute 1 + 1 = 2. \\boxed{2}"]))
    prompt = proposer.prompt(State("Evaluate 2 * 3.", ("Step one.", "Step two.")))
    assert prompt == ("<s><|user|>\nEvaluate 1 + 1.\n\nCompute 1 + 1 = 2. \\boxed{2}\n\nEvaluate 2 * 3.\n"
                      "<|assistant|>\nStep one.\n\nStep two.\n\n")


def test_llm_proposer_steps_and_rollouts(vllm_engine, tiny_tokenizer):
    args = LLMProposerArgs(temperature=1.0, max_step_tokens=8, max_rollout_tokens=12, seed=0)
    proposer = LLMStepProposer(vllm_engine, tiny_tokenizer, TASK, args)
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
    proposer = LLMStepProposer(vllm_engine, tiny_tokenizer, TASK, args)
    problems = synthetic_arithmetic(3, seed=0)
    search = SearchArgs(iterations=3, num_children=2, num_rollouts=2, max_depth=3, batch_size=3)
    trees = list(search_trees(problems, proposer, search, answers_match))
    assert [t.problem_id for t in trees] == [p.id for p in problems]
    for tree in trees:
        assert tree.root.visits == 3 and len(tree.nodes) > 1
        assert max(n.depth for n in tree.nodes) <= 3
        assert all(n.terminal for n in tree.nodes if n.depth == 3)
