"""Algorithm 1 on the hand-built tree of hand_trees.py, whose right answers are worked out in its docstring."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from hand_trees import make_terminal, sample_tree

from astro_pl.evaluation.backtracks import DEFAULT_BACKTRACK_PHRASES, DEFAULT_REFLECTION_PHRASES
from astro_pl.rewards.math import extract_final_answer
from astro_pl.rollout.base import Completion, SamplingArgs
from astro_pl.search.linearize import (
    Event,
    SelfEvaluationJudge,
    TraceArgs,
    build_traces,
    choose_terminals,
    collect_terminals,
    group_by_answer,
    merge_paths,
    says_yes,
)
from astro_pl.search.tree import SearchTree
from astro_pl.search.verbalize import Phrases

DOUBT = "I'm not sure if we're solving the problem correctly so far."


def test_collect_terminals_dfs_order():
    correct, incorrect = collect_terminals(sample_tree())
    assert [n.id for n in correct] == [3]
    assert [n.id for n in incorrect] == [6, 7, 5, 8, 9]  # pre-order: 1's subtree (3, 4->6,7, 5), then 2's (8, 9)


def test_merge_backtracks_to_deepest_shared_ancestor():
    tree = sample_tree()
    # 6 = 0-1-4-6, 5 = 0-1-5 (shares 1), 3 = 0-1-3 (shares 1)
    assert merge_paths(tree, [6, 5, 3]) == [
        Event("step", 1), Event("step", 4), Event("step", 6),
        Event("backtrack", 1), Event("step", 5),
        Event("backtrack", 1), Event("step", 3),
    ]  # fmt: skip


def test_merge_restarts_when_only_the_root_is_shared():
    tree = sample_tree()
    assert merge_paths(tree, [8, 3]) == [
        Event("step", 2),
        Event("step", 8),
        Event("restart", 0),
        Event("step", 1),
        Event("step", 3),
    ]


def test_merge_returns_to_a_step_of_any_earlier_attempt():
    tree = sample_tree()
    # after 6 (via 1, 4) and 8 (via 2), terminal 7 = 0-1-4-7: the deepest node already in the sequence is 4
    events = merge_paths(tree, [6, 8, 7, 3])
    assert events[6:9] == [Event("backtrack", 4), Event("step", 7), Event("backtrack", 1)]
    assert events[3] == Event("restart", 0)
    assert [e.node for e in events if e.kind == "step"] == [1, 4, 6, 2, 8, 7, 3]  # no node twice


def test_merge_rejects_repeats():
    with pytest.raises(ValueError, match="repeat"):
        merge_paths(sample_tree(), [6, 6, 3])


def test_choose_terminals_distinct_answers():
    correct, incorrect = collect_terminals(sample_tree())
    distinct = {"13", "15", "20", None}
    for seed in range(50):
        n_star, wrong = choose_terminals(correct, incorrect, 3, random.Random(seed))
        assert n_star.id == 3
        answers = [n.answer for n in wrong]
        assert len(answers) == 3 and len(set(answers)) == 3 and set(answers) <= distinct
    # asking for more than there are distinct answers gives one terminal per answer
    _, wrong = choose_terminals(correct, incorrect, 10, random.Random(0))
    assert sorted(map(str, (n.answer for n in wrong))) == sorted(map(str, distinct))
    with pytest.raises(ValueError, match="correct terminal"):
        choose_terminals([], incorrect, 1, random.Random(0))


def fraction_tree() -> SearchTree:
    """Root with a correct terminal (gold 1) and wrong terminals 1/2, \\frac{1}{2}, 0.5 (one answer), 3, and none."""
    tree = SearchTree(problem_id="f", problem="Compute 3 - 2.", gold="1")
    for text, answer, correct in [("So \\boxed{1}", "1", True), ("So \\boxed{1/2}", "1/2", False),
                                  ("So \\boxed{\\frac{1}{2}}", "\\frac{1}{2}", False),
                                  ("So \\boxed{3}", "3", False), ("So \\boxed{0.5}", "0.5", False),
                                  ("I give up", None, False), ("Stop", None, False)]:
        node = tree.add_child(0, text)
        make_terminal(tree, node.id, answer, correct)
    return tree


def test_equivalent_wrong_answers_are_one_attempt():
    tree = fraction_tree()
    _, incorrect = collect_terminals(tree)
    groups = group_by_answer(incorrect)
    # first-appearance order: 1/2 (with \frac{1}{2} and 0.5), 3, answerless
    assert [[n.id for n in g] for g in groups] == [[2, 3, 5], [4], [6, 7]]
    strict = group_by_answer(incorrect, checker=lambda a, b: a.strip() == b.strip())
    assert len(strict) == 5  # the old rule: stripped strings
    for seed in range(30):
        _, wrong = choose_terminals(*collect_terminals(tree), 5, random.Random(seed))
        assert len(wrong) == 3 and len({g for n in wrong for g, group in enumerate(groups) if n in group}) == 3
    for seed in range(10):  # search traces never visit two equivalent wrong answers
        for rec in traces_of(tree, seed, min_backtracks=1, max_backtracks=3, num_search=4):
            wrong = rec["terminal_ids"][:-1]
            assert len(wrong) == len({next(i for i, g in enumerate(groups) if n in [x.id for x in g]) for n in wrong})
    # with k fixed at 4 there are only 3 distinct answers: no search trace (min_backtracks 4 not reachable)
    assert {r["kind"] for r in traces_of(tree, 0, min_backtracks=4, max_backtracks=4)} == {"direct"}


def test_build_traces_takes_the_checker():
    tree = fraction_tree()
    args = TraceArgs(num_direct=0, num_search=1, min_backtracks=5, max_backtracks=5)
    assert build_traces(tree, args, random.Random(0)) == []  # 3 distinct answers < 5
    strict = build_traces(tree, args, random.Random(0), checker=lambda a, b: a == b)
    assert [r["num_backtracks"] for r in strict] == [5]


def configured_phrases() -> list[str]:
    """Every sentence a trace or the evaluation treats as reflection or backtracking."""
    phrases = Phrases()
    return [phrases.question, phrases.doubt, phrases.confirm, phrases.restart, phrases.backtrack.split("{step}")[0],
            *DEFAULT_BACKTRACK_PHRASES, *DEFAULT_REFLECTION_PHRASES, "Hmm..."]


def test_direct_traces_without_self_checks_hold_no_reflection_phrase():
    for seed in range(10):
        tree = sample_tree(f"p{seed}")
        records = traces_of(tree, seed, direct_self_checks=False, num_direct=2, dedupe=False)
        direct = [r["trace"] for r in records if r["kind"] == "direct"]
        assert len(direct) == 2
        for text in direct:
            assert not [p for p in configured_phrases() if p.lower() in text.lower()], text
            assert text == ("Compute 3 * 4 = 12.\n\nThen 2 + 12 = 14. \\boxed{14}\n\n"
                            "Therefore, the final answer is $\\boxed{14}$.")
        search = [r["trace"] for r in records if r["kind"] == "search"]
        assert len(search) == 3 and all(Phrases().confirm in t and Phrases().doubt in t for t in search)
    # default: direct traces keep the positive self-check (the ASTRO arm's direct traces)
    assert Phrases().confirm in traces_of(sample_tree(), 0)[0]["trace"]


def traces_of(tree: SearchTree, seed: int = 0, **kwargs) -> list[dict]:
    return build_traces(tree, TraceArgs(**kwargs), random.Random(seed))


@pytest.mark.parametrize("seed", range(20))
def test_trace_invariants(seed):
    tree = sample_tree()
    records = traces_of(tree, seed)
    for rec in records:
        text = rec["trace"]
        *wrong, last = rec["terminal_ids"]
        assert last == 3  # ends at the correct terminal
        assert len({tree.nodes[i].answer for i in wrong}) == len(wrong)  # distinct incorrect answers
        assert rec["num_backtracks"] == len(wrong) == text.count(DOUBT)
        assert extract_final_answer(text) == "14" == rec["gold"]
        # the correct terminal's step is the last step, followed only by the self-check and the conclusion
        assert text.rindex("Then 2 + 12 = 14.") > max((text.rindex(tree.nodes[i].text) for i in wrong), default=-1)
        assert text.endswith("Therefore, the final answer is $\\boxed{14}$.")
        if rec["kind"] == "direct":
            assert rec["num_backtracks"] == 0
            assert "go back" not in text and "restart" not in text and DOUBT not in text
            assert text.startswith("Compute 3 * 4 = 12.")
        else:
            assert 1 <= rec["num_backtracks"] <= 2


def test_direct_to_search_ratio():
    counts = Counter()
    for seed in range(10):
        counts.update(r["kind"] for r in traces_of(sample_tree(f"p{seed}"), seed))
    assert counts == {"direct": 10, "search": 30}  # paper default 1 : 3
    records = traces_of(sample_tree(), 0, num_direct=2, num_search=6, dedupe=False)
    assert Counter(r["kind"] for r in records) == {"direct": 2, "search": 6}
    assert [r["kind"] for r in records[:2]] == ["direct", "direct"]


def test_backtrack_count_range():
    ks = Counter(
        r["num_backtracks"]
        for s in range(30)
        for r in traces_of(sample_tree(), s, min_backtracks=2, max_backtracks=3, num_direct=0)
    )
    assert set(ks) == {2, 3}


def test_dedupe_gives_fewer_rather_than_copies():
    tree = sample_tree()
    direct = traces_of(tree, 0, num_direct=3, num_search=0)  # one correct terminal: one distinct direct trace
    assert len(direct) == 1
    assert len(traces_of(tree, 0, num_direct=3, num_search=0, dedupe=False)) == 3


def test_determinism():
    a = traces_of(sample_tree(), 7)
    assert a == traces_of(sample_tree(), 7)
    assert any(traces_of(sample_tree(), s) != a for s in range(8, 12))


def test_no_correct_terminal_no_traces():
    tree = sample_tree()
    make_terminal(tree, 3, "12", False)
    assert traces_of(tree) == []
    assert traces_of(SearchTree(problem_id="empty", problem="Evaluate 1.", gold="1")) == []


def test_too_few_wrong_answers_gives_direct_only():
    tree = sample_tree()
    records = traces_of(tree, min_backtracks=5, max_backtracks=5)
    assert [r["kind"] for r in records] == ["direct"]


def test_judge_filters_correct_terminals():
    tree = sample_tree()
    tree.add_child(2, "Then 14. \\boxed{14}")
    make_terminal(tree, 10, "14", True)  # a lucky guess on the wrong branch
    seen = []

    def judge(t, ids):
        seen.append(ids)
        return [i == 3 for i in ids]

    records = build_traces(tree, TraceArgs(num_direct=4, dedupe=False), random.Random(0), judge=judge)
    assert seen == [[3, 10]]
    assert records and all(r["terminal_ids"][-1] == 3 for r in records)
    assert build_traces(tree, TraceArgs(), random.Random(0), judge=lambda t, ids: [False] * len(ids)) == []


class ScriptedEngine:
    """Answers each prompt with fixed texts; records the calls (drives the judge logic without a model)."""

    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def generate(self, prompts, params: SamplingArgs):
        self.calls.append((list(prompts), params))
        return [[Completion(self.answer(p, j), [], [], "stop") for j in range(params.n)] for p in prompts]


def test_self_evaluation_judge_needs_all_samples_to_agree():
    tree = sample_tree()
    tree.add_child(2, "Then 14. \\boxed{14}")
    make_terminal(tree, 10, "14", True)
    # node 3's solution gets 8 yeses; node 10's gets one "No" among them
    engine = ScriptedEngine(lambda p, j: "No, step 2 is wrong." if ("Then 14." in p and j == 5) else "Yes.")
    judge = SelfEvaluationJudge(engine, render=lambda t: f"<u>{t}<a>", num_samples=8, seed=3)
    assert judge(tree, [3, 10]) == [True, False]
    ((prompts, params),) = engine.calls
    assert params.n == 8 and params.seed == 3 and len(prompts) == 2
    assert prompts[0].startswith("<u>") and "Compute 3 * 4 = 12.\n\nThen 2 + 12 = 14." in prompts[0]


def test_says_yes():
    assert says_yes("Yes, it is sound.") and says_yes("  yes")
    assert not says_yes("No. Yes it reached the answer") and not says_yes("Eyes") and not says_yes("")


def test_trace_args_validation():
    with pytest.raises(ValueError, match="min_backtracks"):
        TraceArgs(min_backtracks=0)
    with pytest.raises(ValueError, match="self_check_q"):
        TraceArgs(self_check_q=1.5)


def test_records_load_with_datasets(tmp_path):
    import datasets

    records = [r for s in range(3) for r in traces_of(sample_tree(f"p{s}"), s)]
    path = tmp_path / "traces.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(ds) == len(records) == 12
    assert {"problem_id", "problem", "gold", "trace", "kind", "num_backtracks", "tree_id"} <= set(ds.column_names)
    assert ds[3]["trace"] == records[3]["trace"] and ds[3]["num_backtracks"] == records[3]["num_backtracks"]
