"""The graph path-finding task: generator invariants, the path checker, the scripted teacher, the soundness judge and
the response metrics, on hand-made graphs."""

from __future__ import annotations

import random

import pytest

from astro_pl.data.problems import Problem
from astro_pl.evaluation.report import mean_judgements
from astro_pl.tasks import GraphTask
from astro_pl.tasks.base import State, StepProposer
from astro_pl.tasks.graph import (
    Graph,
    GraphTeacherArgs,
    ScriptedGraphTeacher,
    dead_end_calls,
    edge_lookups,
    first_attempt,
    first_goal_claimed,
    first_move_correct,
    format_graph,
    gold_path,
    graph_key,
    judge_response,
    move_faults,
    moves,
    parse_graph,
    parse_path,
    path_star,
    sound_steps,
    valid_path,
)

# start 97; arms 97>57>44>43 (dead), 97>98>77>71 (goal), 97>12>13>14 (dead)
HAND = Graph(((57, 44), (97, 98), (12, 13), (77, 71), (97, 57), (44, 43), (98, 77), (97, 12), (13, 14)), 97, 71)
PROBLEM = format_graph(HAND)


def test_format_and_parse_round_trip():
    assert PROBLEM == "edges: 57>44 97>98 12>13 77>71 97>57 44>43 98>77 97>12 13>14 | start 97 goal 71"
    assert parse_graph(PROBLEM) == HAND
    assert parse_graph("edges: 1>2 | start 1") is None
    marked = format_graph(HAND, goal_edge=True)
    assert marked == PROBLEM.replace(" | start", " 71>goal | start") and parse_graph(marked) == HAND
    assert parse_graph(marked.replace("71>goal", "43>goal")) is None     # the goal edge must leave the goal
    assert sound_steps(marked, ["97>98", "98>77", "77>71 \\boxed{97 98 77 71}"])
    assert all(">goal |" in p.problem for p in GraphTask(num_test=3, goal_edge=True).problems("test")["graph"])
    assert parse_graph("Evaluate 3 + 4.") is None


@pytest.mark.parametrize("arms,arm_length,distractors", [(2, 1, 0), (3, 3, 0), (5, 2, 3), (3, 4, 6)])
def test_path_star_invariants(arms, arm_length, distractors):
    rng = random.Random(7)
    for _ in range(50):
        g = path_star(rng, arms, arm_length, 10, 99, distractors)
        nodes = {g.start} | {n for edge in g.edges for n in edge}
        assert len(nodes) == 1 + arms * arm_length + distractors and all(10 <= n <= 99 for n in nodes)
        assert len(g.edges) == arms * arm_length + distractors   # a tree: one edge into every node but the start
        assert sorted(b for _, b in g.edges) == sorted(nodes - {g.start})
        assert len(g.successors(g.start)) >= arms and not g.successors(g.goal)
        path = gold_path(g)
        assert len(path) == arm_length + 1 and valid_path(g.edges, g.start, g.goal, path)
        dead_ends = [n for n in nodes if not g.successors(n) and n != g.goal]
        assert len(dead_ends) >= arms - 1                       # every other arm (and distractor) ends dead


def test_splits_are_seeded_disjoint_and_extend():
    # 8 ids: 8 starts x 21 pairs of arms x 2 goals = 336 distinct graphs, so repeats are frequent
    task = GraphTask(num_train=150, num_val=50, num_test=80, arms=2, arm_length=1, node_min=10, node_max=17)
    splits = {s: task.graphs(s) for s in ("train", "val", "test")}
    keys = {s: {graph_key(g) for g in graphs} for s, graphs in splits.items()}
    assert [len(keys[s]) for s in ("train", "val", "test")] == [150, 50, 80]  # no repeats inside a split
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]
    longer = GraphTask(num_train=170, num_val=50, num_test=80, arms=2, arm_length=1, node_min=10, node_max=17)
    assert longer.graphs("train")[:150] == splits["train"]
    with pytest.raises(ValueError, match="found no new graph"):
        GraphTask(num_train=400, num_val=50, num_test=80, arms=2, arm_length=1, node_min=10,
                  node_max=17).graphs("train")
    problems = task.problems("test")["graph"]
    assert problems[0].id == "graph-12345-0" and problems[0].answer == " ".join(map(str, gold_path(splits["test"][0])))


def test_task_flags_are_validated():
    with pytest.raises(ValueError, match="--task.init_args.arms must be >= 2"):
        GraphTask(arms=1)
    with pytest.raises(ValueError, match="holds 5 ids, fewer than the 10 nodes"):
        GraphTask(node_min=10, node_max=14)
    with pytest.raises(ValueError, match="--teacher.prior_noise"):
        GraphTeacherArgs(prior_noise=-1)


def test_check_and_valid_path_accept_only_edge_chains_from_start_to_goal():
    task = GraphTask()
    assert task.check("97 98 77 71", "97 98 77 71") and task.check(" 97>98>77>71 ", "97 98 77 71")
    assert not task.check("97 57 44 43", "97 98 77 71") and not task.check("97 98 77", "97 98 77 71")
    assert not task.check("97 98 77 71 + 1", "97 98 77 71") and parse_path("__import__('os')") is None
    hand = Problem("hand", PROBLEM, "97 98 77 71")
    assert task.is_correct("97>98\n\n98>77\n\n77>71 \\boxed{97 98 77 71}", hand)
    assert not task.is_correct("97>57\n\n57>44\n\n44>71 \\boxed{97 57 44 71}", hand)
    assert valid_path(HAND.edges, 97, 71, (97, 98, 77, 71))
    assert not valid_path(HAND.edges, 97, 71, (97, 77, 71))          # skips a node: 97>77 is no edge
    assert not valid_path(HAND.edges, 97, 71, (98, 77, 71))          # does not leave from the start
    assert not valid_path(HAND.edges, 97, 71, (97, 57, 44, 43))      # ends at a dead end
    assert not valid_path(HAND.edges, 97, 71, (97,))


def test_teacher_steps_follow_edges_and_terminals_are_dead_ends_or_goal():
    teacher = ScriptedGraphTeacher(GraphTeacherArgs(seed=3))
    assert isinstance(teacher, StepProposer)
    (root,) = teacher.propose([State(PROBLEM)], k=8)
    assert sorted(s.text for s in root) == ["97>12", "97>57", "97>98"]
    assert sum(s.prior for s in root) == pytest.approx(1.0) and not any(s.terminal for s in root)
    assert len(teacher.propose([State(PROBLEM)], k=2)[0]) == 2
    (dead,) = teacher.propose([State(PROBLEM, ("97>57", "57>44"))], k=4)
    assert dead[0]._replace(prior=1.0) == ("44>43 dead", 1.0, True, "97 57 44 43")
    (goal,) = teacher.propose([State(PROBLEM, ("97>98", "98>77"))], k=4)
    assert goal[0].text == "77>71 \\boxed{97 98 77 71}" and goal[0].terminal and goal[0].answer == "97 98 77 71"
    finals = teacher.rollout([State(PROBLEM), State(PROBLEM, ("97>98",))], m=40)
    assert set(finals[0]) == {"97 57 44 43", "97 98 77 71", "97 12 13 14"}
    assert set(finals[1]) == {"97 98 77 71"}
    assert teacher.rollout([State(PROBLEM)], m=40) == finals[:1]   # seeded per state
    with pytest.raises(ValueError, match="only solves 'edges"):
        teacher.propose([State("Evaluate 1 + 2.")], k=2)


def test_a_models_step_is_read_against_the_graph():
    """The graph, not the model's words, says what a move is: "dead" and boxes are rewritten, illegal moves dropped."""
    read = GraphTask().read_step
    assert read(State(PROBLEM), "97>57") == ("97>57", False, None)
    assert read(State(PROBLEM), "97>57 \\boxed{97 57}") == ("97>57", False, None)        # a false claim is not kept
    assert read(State(PROBLEM, ("97>57", "57>44")), "44>43") == ("44>43 dead", True, "97 57 44 43")  # unsaid dead end
    assert read(State(PROBLEM, ("97>98",)), "98>77 dead") == ("98>77", False, None)    # a false "dead" is not kept
    assert read(State(PROBLEM, ("97>98", "98>77")), "77>71") == ("77>71 \\boxed{97 98 77 71}", True, "97 98 77 71")
    for steps, text in ((), "97>77"),  (("97>98",), "97>57"), ((), "restart."), ((), "back to \"97>57\""):
        assert read(State(PROBLEM, steps), text) is None, text   # not an edge / not from the path's end / no move


def test_judge_accepts_only_moves_along_prompt_edges():
    assert sound_steps(PROBLEM, ["97>98", "98>77", "77>71 \\boxed{97 98 77 71}"])
    assert GraphTask().sound(PROBLEM, ["97>98"])
    assert not sound_steps(PROBLEM, ["97>77", "77>71 \\boxed{97 77 71}"])        # 97>77 is not an edge
    assert not sound_steps(PROBLEM, ["97>98", "77>71 \\boxed{97 98 77 71}"])     # leaves from the wrong node
    assert not sound_steps(PROBLEM, ["97>98", "98>77", "77>71 \\boxed{97 77 71}"])  # boxes another path
    assert not sound_steps(PROBLEM, ["97>98 dead"])                               # 98 has a successor
    assert not sound_steps(PROBLEM, ["97>98", "98>77", "77>71 \\boxed{97 98 77 71}", "71>97"])
    assert not sound_steps("not a graph", ["97>98"])


def test_response_metrics_on_hand_made_traces():
    task = GraphTask()
    search = "97>57\n\n57>44\n\n44>43 dead\n\nback to start\n\n97>98\n\n98>77\n\n77>71 \\boxed{97 98 77 71}"
    assert moves(search)[2] == (44, 43, True) and len(moves(search)) == 6
    assert not first_move_correct(HAND, search) and first_attempt(HAND, search) == [97, 57, 44, 43]
    v = judge_response(HAND, search, task.extract_answer(search))
    assert (v["first_attempt_wrong"], v["recovered"], v["false_yes"]) == (True, True, False)
    assert dead_end_calls(HAND, search) == [True] and v["grounded_dead_share"] == 1.0
    assert dead_end_calls(HAND, "97>57\n\n57>40 dead") == [False]   # 40 has no successor, but 57>40 is no edge
    # the goal has no successor either, but "dead" there is a missed success (a sample seen after SFT)
    assert dead_end_calls(HAND, "97>98\n\n98>77\n\n77>71 dead") == [False]
    missed = "97>98\n\n98>77\n\n77>71 dead\n\nrestart.\n\n97>57\n\n57>44\n\n44>43 \\boxed{97 57 44 43}"
    assert first_goal_claimed(HAND, missed) is False and judge_response(HAND, missed, "97 57 44 43")["false_yes"]
    assert first_goal_claimed(HAND, search) is None and v["first_goal_claimed"] is None   # its first attempt dies
    # an ungrounded "dead" (77 goes on to 71), then a jump that claims a path through a missing edge
    liar = "97>98\n\n98>77 dead\n\nback to start\n\n97>57\n\n57>71 \\boxed{97 57 71}"
    v = judge_response(HAND, liar, task.extract_answer(liar))
    assert first_move_correct(HAND, liar) and dead_end_calls(HAND, liar) == [False]
    assert edge_lookups(HAND, liar) == [True, False] and v["edge_lookup_share"] == 0.5   # 98>77 is an edge, 57>71 not
    assert edge_lookups(HAND, "97>57\n\n57>98\n\n98>71") == [False, False]   # nodes of the prompt, off its edges
    assert (v["first_attempt_wrong"], v["recovered"], v["false_yes"]) == (True, False, True)
    direct = "97>98\n\n98>77\n\n77>71 \\boxed{97 98 77 71}"
    v = judge_response(HAND, direct, task.extract_answer(direct))
    assert (v["first_move_correct"], v["first_attempt_wrong"], v["recovered"], v["grounded_dead_share"]) == (
        True, False, None, None)
    # cut off after boxing a wrong path: no final answer (scored as such), so neither a false yes nor a recovery
    cut = "97>57\n\n57>44\n\n44>43 \\boxed{97 57 44 43}"
    assert judge_response(HAND, cut, None)["false_yes"] is False
    unfinished = "97>12\n\n12>13"
    problem = Problem(id="hand", problem=format_graph(HAND), answer="97 98 77 71")
    texts = (search, liar, direct, unfinished)
    means = mean_judgements([task.judge(problem, t, task.extract_answer(t)) for t in texts])
    # first moves right: liar, direct; moves past the start along edges: all but the liar's 57>71 (1/2 there);
    # "dead" said twice (search grounded, liar not) -> 1 per response, half grounded;
    # wrong first attempts: search, liar, unfinished, of which search recovers; one false yes (liar)
    # only direct's first attempt reaches the goal (liar's first attempt stops at 77), and it claims it
    assert means == {"first_move_correct": 0.5, "edge_lookup_share": 0.875, "dead_calls": 0.5,
                     "grounded_dead_share": 0.5, "first_goal_claimed": 1.0, "first_attempt_wrong": 0.75,
                     "recovered": 1 / 3, "false_yes": 0.25}
    assert task.judge(Problem(id="x", problem="not a graph", answer="1 2"), direct, "1 2") == {}
    assert mean_judgements([{}, {}]) == {}


def test_step_faults_blame_the_first_slip_of_each_attempt_not_a_real_dead_end():
    task = GraphTask()
    problem = Problem(id="hand", problem=PROBLEM, answer="97 98 77 71")
    clean = "97>57\n\n57>44\n\n44>43 dead\n\nrestart.\n\n97>98\n\n98>77\n\n77>71 \\boxed{97 98 77 71}"
    assert task.step_faults(problem, clean) == []   # a dead end reached along real edges is the search exploring
    # 57>14 is no edge: its node is blamed, and 14>43 after it is not (no move from 14 is right); after the
    # restart, "dead" at 77, which goes on to 71, is the next attempt's slip
    slipped = "97>57\n\n57>14\n\n14>43 dead\n\nrestart.\n\n97>98\n\n98>77 dead"
    spans = move_faults(HAND, slipped)
    assert [slipped[a:b] for a, b in spans] == ["14", " dead"]
    assert spans[0] == (slipped.index("57>14") + 3, slipped.index("57>14") + 5)
    assert move_faults(HAND, "97>98\n\n98>77\n\n77>71 dead") == [(19, 24)]   # "dead" at the goal: a missed success
    # a move leaving the start begins a new attempt without a phrase
    jump = "97>57\n\n57>14\n\n97>98\n\n98>13"
    assert [jump[a:b] for a, b in move_faults(HAND, jump)] == ["14", "13"]
    # paragraphs that write part of a move but are none (what RL learnt to write when every fault was blamed) are
    # faults; phrases and quoted steps are not, and begin a new attempt
    junk = '97>^57\n\n57 dead\n\nback to "97>57"\n\n dead\n\nrestart.\n\n97>{98>77\n\n77>71 \\boxed{97 98 77 71}'
    assert [junk[a:b] for a, b in move_faults(HAND, junk)] == ["97>^57", " dead", "97>{98>77"]
    assert task.step_faults(Problem(id="x", problem="not a graph", answer="1"), slipped) == []


def test_tokenizer_keeps_every_node_id_one_token(tmp_path):
    from astro_pl.modules.tiny_llama import train_tokenizer

    task = GraphTask(num_train=300)
    texts = [p.problem + " " + p.answer for p in task.problems("train")["graph"]]
    whole = train_tokenizer(texts, tmp_path / "whole", vocab_size=384, split_digits=False)
    assert all(len(whole.tokenize(str(n))) == 1 for n in range(10, 100))
    # the same id after a space, a ">" and a line break is the same token
    tokens = whole.tokenize("12>57 57>44\n\n57")
    assert [t for t in tokens if t.isdigit()] == ["12", "57", "57", "44", "57"] and len(set(map(len, tokens))) > 1
    digits = train_tokenizer(texts, tmp_path / "digits", vocab_size=384)
    assert digits.tokenize("57") == ["5", "7"]
