"""`astro view-tree`: the page parses, escapes step text, highlights the trace, and renders in headless Chromium.

The screenshot test needs Debian's chromium (`apt-get install -y chromium`); it fails, never skips, without it.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
from hand_trees import make_terminal, sample_tree

from astro_pl.cli import main as astro
from astro_pl.search.linearize import choose_terminals, collect_terminals, merge_paths
from astro_pl.search.tree import SearchTree, append_tree
from astro_pl.search.view import render_tree

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)> & </div></li></ul>'
VOID = {"meta", "br", "img", "hr", "input", "link"}


class StrictParser(HTMLParser):
    """Checks that every element closes in order, and collects tags, attributes and text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.tags, self.errors, self.text, self.attrs = [], [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += attrs
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"unbalanced </{tag}>")

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> StrictParser:
    parser = StrictParser()
    parser.feed(page)
    parser.close()
    assert not parser.errors and not parser.stack, (parser.errors, parser.stack)
    return parser


def hostile_tree() -> SearchTree:
    tree = sample_tree("p<1>")
    tree.nodes[5].text = HOSTILE + " \\boxed{15}"
    tree.problem = "Evaluate 2 + 3 * 4. <b>bold?</b>"
    return tree


def test_page_parses_and_escapes_step_text():
    page = render_tree(hostile_tree(), backtracks=2, seed=0)
    parsed = parse(page)
    assert "script" not in parsed.tags and "img" not in parsed.tags and "b" in parsed.tags  # <b> only in our meta
    assert parsed.tags.count("b") == 1
    text = "".join(parsed.text)
    assert HOSTILE in text and "<b>bold?</b>" in text  # shown literally, as text
    assert not any(v and re.match(r"(https?:)?//", v) for _, v in parsed.attrs)  # nothing fetched from outside
    assert "<link" not in page and "@import" not in page and "url(" not in page


def test_stats_and_highlighted_trace():
    tree = sample_tree()
    page = render_tree(tree, backtracks=2, seed=3)
    assert "#1 N=6 Q=0.95 P=0.70" in page and "#4 N=2 Q=0.20 P=0.30" in page
    assert page.count('class="node correct') == 1 and page.count('class="node incorrect') == 5
    correct, incorrect = collect_terminals(tree)
    n_star, wrong = choose_terminals(correct, incorrect, 2, random.Random(3))
    events = merge_paths(tree, [n.id for n in wrong] + [n_star.id])
    steps = [e.node for e in events if e.kind == "step"]
    on_path = [int(i) for i in re.findall(r'class="node[^"]*onpath" id="n(\d+)"', page)]
    assert sorted(on_path) == sorted(steps)
    for order, node in enumerate(steps, start=1):
        assert re.search(rf'id="n{node}"><span class="order">{order}</span>', page)
    assert page.count("(backtrack ") == 2
    assert "Highlighted trace (2 backtracks, seed 3)" in page and "\\boxed{14}$." in page


def test_cli_selects_tree_and_reports_errors(tmp_path, capsys):
    trees = tmp_path / "trees.jsonl"
    append_tree(trees, sample_tree("a"))
    unsolved = sample_tree("b")
    make_terminal(unsolved, 3, "12", False)
    append_tree(trees, unsolved)
    out = tmp_path / "out" / "b.html"
    assert astro(["view-tree", str(trees), "--problem_id", "b", "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert "Search tree b" in page and "No correct terminal: no trace" in page and ' onpath"' not in page
    assert astro(["view-tree", str(trees), "--index", "0", "--out", str(out), "--backtracks", "0"]) == 0
    assert "Search tree a" in out.read_text(encoding="utf-8")
    capsys.readouterr()
    assert astro(["view-tree", str(trees), "--index", "5", "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"astro view-tree: error: {trees}: no tree with index 5\n"
    assert astro(["view-tree", str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.endswith("missing.jsonl: no such file\n")


def test_deep_tree_renders():
    tree = SearchTree(problem_id="deep", problem="Evaluate 1.", gold="1")
    for depth in range(3000):  # deeper than Python's recursion limit
        tree.add_child(depth, f"step {depth}")
    make_terminal(tree, 3000, "1", True)
    page = render_tree(tree)
    parse(page)
    assert page.count('<span class="order">') == 3000 and page.count("<li>") == 3001


def test_screenshot_in_headless_chromium(tmp_path):
    import matplotlib.image

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed: apt-get install -y chromium"
    trees = tmp_path / "trees.jsonl"
    append_tree(trees, hostile_tree())
    page = tmp_path / "tree.html"
    assert astro(["view-tree", str(trees), "--out", str(page), "--seed", "1"]) == 0
    png = tmp_path / "shot.png"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", "--window-size=1200,800",
         page.as_uri()],
        check=True, timeout=120, capture_output=True,
    )  # fmt: skip
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(png)[..., :3]  # [H, W, 3] floats in [0, 1]
    assert image.shape == (800, 1200, 3)
    assert image.std() > 0.05  # not blank

    def pixels_near(rgb: tuple[int, int, int], tol: int = 12) -> int:
        return int((np.abs(image * 255 - np.array(rgb)).max(axis=-1) <= tol).sum())

    assert pixels_near((0x2E, 0x9D, 0x3A)) > 500  # correct-terminal border (green)
    assert pixels_near((0xD3, 0x3A, 0x3A)) > 1000  # incorrect-terminal borders (red)
    assert pixels_near((0xF2, 0xA9, 0x00)) > 1000  # highlighted trace (amber)
    assert pixels_near((0xFD, 0xE2, 0xE2), tol=3) > 10000  # incorrect-terminal fill
