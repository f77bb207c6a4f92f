"""`astro view-tree`: one search tree as a self-contained HTML page (inline CSS, no script, no network).

    astro view-tree TREES.jsonl [--index I | --problem_id ID] --out tree.html [--backtracks K] [--seed S]

Every node shows N, Q, its prior and its step text (HTML-escaped: step text is model output). Terminals are coloured
correct (green) or incorrect (red). One search trace, drawn as `build_traces` would draw it (k incorrect terminals
with distinct answers, then a correct one), is highlighted: its nodes carry their visit order, the steps it returns
to carry a backtrack mark, and its verbalised text is shown beside the tree.
"""

from __future__ import annotations

import random
from html import escape
from pathlib import Path

from astro_pl.errors import UsageError
from astro_pl.search.linearize import Event, choose_terminals, collect_terminals, merge_paths
from astro_pl.search.tree import SearchTree, read_trees
from astro_pl.search.verbalize import Phrases, join_segments, verbalize

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 16px; color: #1d1d1f; background: #fafafa; }
h1 { font-size: 18px; margin: 0 0 4px; } h2 { font-size: 15px; margin: 0 0 8px; }
.problem { font-size: 15px; margin: 4px 0; } .meta { color: #555; margin: 2px 0 8px; }
.legend span { display: inline-block; padding: 1px 8px; margin-right: 6px; border-radius: 4px; border: 2px solid; }
main { display: flex; gap: 16px; align-items: flex-start; }
.tree { flex: 3; min-width: 0; } .trace { flex: 2; min-width: 0; position: sticky; top: 8px; }
.trace pre { white-space: pre-wrap; background: #fff; border: 1px solid #ccc; padding: 8px; max-height: 90vh;
  overflow: auto; font-size: 12px; margin: 0; }
ul { list-style: none; margin: 0; padding-left: 22px; position: relative; }
.tree > ul { padding-left: 0; }
li { position: relative; padding: 3px 0 3px 14px; }
li::before { content: ""; position: absolute; left: 0; top: 0; bottom: 0; border-left: 1px solid #999; }
li:last-child::before { bottom: calc(100% - 16px); }
li::after { content: ""; position: absolute; left: 0; top: 16px; width: 12px; border-top: 1px solid #999; }
.tree > ul > li::before, .tree > ul > li::after { display: none; }
.node { display: inline-block; max-width: 640px; background: #fff; border: 2px solid #bbb; border-radius: 6px;
  padding: 3px 8px; }
.node.correct { background: #dcf5dc; border-color: #2e9d3a; }
.node.incorrect { background: #fde2e2; border-color: #d33a3a; }
.node.onpath { box-shadow: 0 0 0 3px #f2a900; }
.stats { font: 12px ui-monospace, monospace; color: #444; }
.order { font-weight: 700; color: #fff; background: #f2a900; border-radius: 8px; padding: 0 6px; margin-right: 4px; }
.back { font-weight: 700; color: #8a5a00; margin-left: 6px; }
.answer { font-weight: 700; margin-left: 6px; }
.text { white-space: pre-wrap; font-size: 13px; }
"""


def trace_marks(events: list[Event]) -> tuple[dict[int, int], dict[int, list[int]]]:
    """(visit order of each step node, 1-based; node -> numbers of the backtracks that return to it)."""
    order: dict[int, int] = {}
    backs: dict[int, list[int]] = {}
    num_backs = 0
    for event in events:
        if event.kind == "step":
            order[event.node] = len(order) + 1
        else:
            num_backs += 1
            backs.setdefault(event.node, []).append(num_backs)
    return order, backs


def node_html(tree: SearchTree, node_id: int, order: dict[int, int], backs: dict[int, list[int]]) -> str:
    node = tree.nodes[node_id]
    classes = ["node"]
    if node.terminal:
        classes.append("correct" if node.correct else "incorrect")
    if node_id in order:
        classes.append("onpath")
    parts = [f'<div class="{" ".join(classes)}" id="n{node_id}">']
    if node_id in order:
        parts.append(f'<span class="order">{order[node_id]}</span>')
    parts.append(f'<span class="stats">#{node_id} N={node.visits} Q={node.value:.2f} P={node.prior:.2f}')
    if node.rollout_value is not None:
        parts.append(f" R={node.rollout_value:.2f}")
    parts.append("</span>")
    if node.terminal:
        mark = "&#10003;" if node.correct else "&#10007;"
        parts.append(
            f'<span class="answer">{mark} {escape(str(node.answer)) if node.answer is not None else "no answer"}</span>'
        )
    for number in backs.get(node_id, []):
        label = "restart" if node_id == 0 else "back here"
        parts.append(f'<span class="back">&#8617; {label} (backtrack {number})</span>')
    text = "(problem) " + tree.problem if node_id == 0 else node.text
    parts.append(f'<div class="text">{escape(text)}</div></div>')
    return "".join(parts)


def tree_html(tree: SearchTree, order: dict[int, int], backs: dict[int, list[int]]) -> str:
    """Nested lists, built iteratively (trees can be deeper than Python's recursion limit)."""
    out: list[str] = []
    stack: list[int | str] = [0]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        out.append("<li>" + node_html(tree, item, order, backs))
        children = tree.nodes[item].children
        stack.append("</ul></li>" if children else "</li>")
        stack.extend(reversed(children))
        if children:
            out.append("<ul>")
    return "<ul>" + "".join(out) + "</ul>"


def render_tree(tree: SearchTree, backtracks: int = 2, seed: int = 0, self_check_q: float | None = 0.9) -> str:
    """The whole page for one tree, highlighting one search trace with up to `backtracks` backtracks."""
    correct, incorrect = collect_terminals(tree)
    events: list[Event] = []
    if correct:
        n_star, wrong = choose_terminals(correct, incorrect, backtracks, random.Random(seed))
        events = merge_paths(tree, [n.id for n in wrong] + [n_star.id])
    order, backs = trace_marks(events)
    if events:
        num_back = sum(e.kind != "step" for e in events)
        caption = f"Highlighted trace ({num_back} backtrack{'s' if num_back != 1 else ''}, seed {seed})"
        trace_text = escape(join_segments(verbalize(tree, events, Phrases(), self_check_q)))
    else:
        caption, trace_text = "No correct terminal: no trace", ""
    meta = (
        f"gold: <b>{escape(tree.gold)}</b> &middot; {len(tree.nodes)} nodes &middot; "
        f"{len(correct)} correct / {len(incorrect)} incorrect terminals &middot; root N={tree.root.visits} "
        f"Q={tree.root.value:.2f}"
    )
    legend = (
        '<div class="legend"><span style="border-color:#2e9d3a;background:#dcf5dc">correct terminal</span>'
        '<span style="border-color:#d33a3a;background:#fde2e2">incorrect terminal</span>'
        '<span style="border-color:#f2a900">on the highlighted trace (visit order)</span></div>'
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Search tree {escape(tree.problem_id)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>Search tree {escape(tree.problem_id)}</h1>"
        f'<p class="problem">{escape(tree.problem)}</p><p class="meta">{meta}</p>{legend}</header>'
        f'<main><section class="tree">{tree_html(tree, order, backs)}</section>'
        f'<section class="trace"><h2>{caption}</h2><pre>{trace_text}</pre></section></main>'
        "</body></html>\n"
    )


def find_tree(path: Path, index: int | None, problem_id: str | None) -> SearchTree:
    for i, tree in enumerate(read_trees(path)):
        if (problem_id is not None and tree.problem_id == problem_id) or (problem_id is None and i == index):
            return tree
    wanted = f"problem id {problem_id!r}" if problem_id is not None else f"index {index}"
    raise UsageError(f"{path}: no tree with {wanted}")


def view_tree(trees: Path, index: int = 0, problem_id: str | None = None, out: Path = Path("tree.html"),
              backtracks: int = 2, seed: int = 0, self_check_q: float = 0.9) -> str:
    """Renders one search tree as a self-contained HTML page.

    Args:
        trees: Trees JSONL written by `astro search`.
        index: 0-based line of the tree in the file (ignored when `problem_id` is given).
        problem_id: Problem id of the tree.
        out: HTML file to write.
        backtracks: Incorrect terminals in the highlighted trace.
        seed: Seed drawing the highlighted trace.
        self_check_q: Q of steps that get a positive self-check.
    """
    trees, out = Path(trees), Path(out)
    if not trees.is_file():
        raise UsageError(f"{trees}: no such file")
    if backtracks < 0:
        raise UsageError(f"--backtracks must be >= 0, got {backtracks}")
    if problem_id is None and index < 0:
        raise UsageError(f"--index must be >= 0, got {index}")
    tree = find_tree(trees, index, problem_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_tree(tree, backtracks, seed, self_check_q), encoding="utf-8")
    return f"wrote {out} (tree {tree.problem_id}, {len(tree.nodes)} nodes)"


def main(argv: list[str] | None = None) -> int:
    from jsonargparse import auto_cli

    print(auto_cli(view_tree, args=argv, exit_on_error=False))  # flag errors: one line through the dispatch
    return 0
