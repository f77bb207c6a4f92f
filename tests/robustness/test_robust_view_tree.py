"""`astro view-tree` on malformed trees (issue 20 items 7 and 8): each fails at load with the line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cases import Case, check_case

from astro_pl.search.tree import SearchTree


def tree_line(**changes) -> str:
    tree = SearchTree("p", "Evaluate 1 + 2.", "3")
    tree.add_child(0, "1 + 2 = 3. \\boxed{3}")
    record = tree.to_dict()
    for index, node_changes in changes.get("nodes", {}).items():
        record["nodes"][index].update(node_changes)
    return json.dumps(record) + "\n"


CASES = [
    Case("own-parent", ["view-tree", "{self_parent}", "--out", "{tmp}/x.html"],
         message=r"self_parent.jsonl:1: bad tree, nodes\[1\].parent: 1 is not an earlier node", kind="hang"),
    Case("missing-parent", ["view-tree", "{missing_parent}", "--out", "{tmp}/x.html"],
         message=r"missing_parent.jsonl:1: bad tree, nodes\[1\].parent: 7 is not an earlier node",
         kind="silent-wrong"),
    Case("child-out-of-range", ["view-tree", "{bad_child}", "--out", "{tmp}/x.html"],
         message=r"bad_child.jsonl:1: bad tree, nodes\[0\].children: 9 is not a node whose parent is 0",
         kind="traceback"),
    Case("missing-field", ["view-tree", "{no_gold}", "--out", "{tmp}/x.html"],
         message=r"no_gold.jsonl:1: malformed tree record, field 'gold'", kind="clean"),
    Case("not-json", ["view-tree", "{not_json}", "--out", "{tmp}/x.html"],
         message=r"not_json.jsonl:1: not a JSON tree record", kind="clean"),
    Case("no-such-file", ["view-tree", "{tmp}/none.jsonl", "--out", "{tmp}/x.html"],
         message=r"none.jsonl: no such file", kind="clean"),
    Case("index-past-end", ["view-tree", "{good}", "--index", "3", "--out", "{tmp}/x.html"],
         message=r"good.jsonl: no tree with index 3", kind="clean"),
    Case("negative-index", ["view-tree", "{good}", "--index", "-1", "--out", "{tmp}/x.html"],
         message=r"--index must be >= 0, got -1", kind="silent-wrong"),
    Case("negative-backtracks", ["view-tree", "{good}", "--backtracks", "-2", "--out", "{tmp}/x.html"],
         message=r"--backtracks must be >= 0, got -2", kind="clean"),
    Case("unknown-flag", ["view-tree", "{good}", "--problem-id", "p"], message=r"unrecognized arguments: --problem-id",
         kind="clean"),
]


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("view")
    files = {
        "good": tree_line(),
        "self_parent": tree_line(nodes={1: {"parent": 1}}),
        "missing_parent": tree_line(nodes={1: {"parent": 7}}),
        "bad_child": tree_line(nodes={0: {"children": [1, 9]}}),
        "no_gold": json.dumps({k: v for k, v in json.loads(tree_line()).items() if k != "gold"}) + "\n",
        "not_json": "{torn\n",
    }
    for name, text in files.items():
        (tmp / f"{name}.jsonl").write_text(text)
    return {"tmp": tmp, **{name: tmp / f"{name}.jsonl" for name in files}}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_case(case, paths, capsys):
    check_case(case, paths, capsys)
    assert not (paths["tmp"] / "x.html").exists()


def test_good_tree_renders(paths, capsys):
    check_case(Case("good", ["view-tree", "{good}", "--out", "{tmp}/good.html"], code=0, kind="clean"), paths, capsys)
    assert "Search tree p" in (paths["tmp"] / "good.html").read_text()
