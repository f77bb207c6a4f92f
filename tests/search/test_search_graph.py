"""`astro search` on the graph task: trees whose every step follows a prompt edge, and short ASTRO traces that go
back from named dead ends (configs/graph/search.yaml), grounded as `astro eval` counts them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from astro_pl.evaluation.backtracks import grounded_backtracks
from astro_pl.search.run import main, read_jsonl
from astro_pl.search.tree import read_trees
from astro_pl.tasks.graph import parse_graph, parse_path, sound_steps, valid_path

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "graph" / "search.yaml"
TASK = CONFIG.parents[1] / "tasks" / "graph.yaml"
PHRASES = ["restart.", "back to"]   # configs/graph/eval.yaml's backtrack phrases


@pytest.mark.parametrize("distractors", [0, 3])
def test_graph_search_writes_trees_and_traces_with_backtracks(tmp_path, distractors):
    out = tmp_path / "out"
    assert main(["--config", str(CONFIG), "--task", str(TASK), "--task.init_args.distractors", str(distractors),
                 "--out_dir", str(out), "--limit", "6", "--search.iterations", "16"]) == 0
    trees = list(read_trees(out / "trees.jsonl"))
    assert sorted(t.problem_id for t in trees) == [f"graph-0-{i}" for i in range(6)]
    for tree in trees:
        graph = parse_graph(tree.problem)
        for node in tree.terminals():
            assert sound_steps(tree.problem, tree.steps(node.id))           # the teacher only walks prompt edges
            assert node.correct == valid_path(graph.edges, graph.start, graph.goal, parse_path(node.answer))
    traces = read_jsonl(out / "traces.jsonl")
    assert {t["num_backtracks"] for t in traces if t["kind"] == "search"} == {1, 2}
    kinds = set()
    for t in traces:
        paragraphs = t["trace"].split("\n\n")
        assert paragraphs[-1].endswith(f"\\boxed{{{t['gold']}}}")
        backs = [i for i, p in enumerate(paragraphs) if p == "restart." or p.startswith('back to "')]
        assert len(backs) == t["num_backtracks"] and all(paragraphs[i - 1].endswith(" dead") for i in backs)
        assert grounded_backtracks(t["trace"], PHRASES) == (t["num_backtracks"],) * 2
        kinds |= {paragraphs[i].split(" ")[0] for i in backs}
    assert kinds == ({"restart."} if distractors == 0 else {"restart.", "back"})  # path-star: only to the root
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trees_with_correct_terminal"] == 6 and summary["traces"] == len(traces)
