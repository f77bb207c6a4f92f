"""`astro search` on the graph task: trees whose every step follows a prompt edge, and short ASTRO traces that go
back from named dead ends (configs/graph/search.yaml)."""

from __future__ import annotations

import json
from pathlib import Path

from astro_pl.search.run import main, read_jsonl
from astro_pl.search.tree import read_trees
from astro_pl.tasks.graph import parse_graph, parse_path, sound_steps, valid_path

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "graph" / "search.yaml"
TASK = CONFIG.parents[1] / "tasks" / "graph.yaml"


def test_graph_search_writes_trees_and_traces_with_backtracks(tmp_path):
    out = tmp_path / "out"
    assert main(["--config", str(CONFIG), "--task", str(TASK), "--out_dir", str(out), "--limit", "6",
                 "--search.iterations", "16"]) == 0
    trees = list(read_trees(out / "trees.jsonl"))
    assert sorted(t.problem_id for t in trees) == [f"graph-0-{i}" for i in range(6)]
    for tree in trees:
        graph = parse_graph(tree.problem)
        for node in tree.terminals():
            assert sound_steps(tree.problem, tree.steps(node.id))           # the teacher only walks prompt edges
            assert node.correct == valid_path(graph.edges, graph.start, graph.goal, parse_path(node.answer))
    traces = read_jsonl(out / "traces.jsonl")
    search = [t for t in traces if t["kind"] == "search"]
    assert {t["num_backtracks"] for t in search} == {1, 2}
    for t in traces:
        paragraphs = t["trace"].split("\n\n")
        assert paragraphs[-1].endswith(f"\\boxed{{{t['gold']}}}")
        assert sum(p.endswith(" dead") for p in paragraphs) == t["num_backtracks"]
        assert sum(p == "back to start" for p in paragraphs) == t["num_backtracks"]   # path-star: back to the root
        assert [p for p in paragraphs if p.endswith(" dead")] == [paragraphs[i - 1] for i, p in enumerate(paragraphs)
                                                                  if p == "back to start"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trees_with_correct_terminal"] == 6 and summary["traces"] == len(traces)
