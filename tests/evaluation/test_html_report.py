"""`astro report`: highlighting, metric curves and charts on hand-worked inputs, then a whole report of a run folder
written by the real writers (eval summaries, MetricsFileLogger, search trees), rendered in headless Chromium.

The Chromium test needs Debian's chromium (`apt-get install -y chromium`); it fails, never skips, without it.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from astro_pl.cli import main as astro
from astro_pl.evaluation.html_report import (
    highlight_spans,
    highlighted_html,
    metric_curves,
    pick_samples,
    write_run_report,
)
from astro_pl.evaluation.report import summarize, write_report
from astro_pl.evaluation.svg_charts import bar_chart_svg, line_chart_svg, value_range
from astro_pl.modules.metrics_file import MetricsFileLogger
from astro_pl.search.tree import SearchTree, append_tree

BACK = ("Let's go back to", "Let's restart our solution from the beginning.")
REFLECT = ("But wait, are we solving the problem correctly so far?",)
SEARCH_ANSWER = ("Compute 3 * 4 = 13. But wait, are we solving the problem correctly so far? No. "
                 "Let's go back to where we computed 3 * 4.\nCompute 3 * 4 = 12. Then 2 + 12 = 14. \\boxed{14}")
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)> \\boxed{3}'


def test_highlight_spans_cover_each_phrase_to_its_sentence_end():
    spans = highlight_spans(SEARCH_ANSWER, BACK, REFLECT)
    # reflection: chars 20..74 (the phrase is a whole sentence); backtrack: from "Let's" (79) to the "." before \n
    assert [SEARCH_ANSWER[a:b] for a, b, _ in spans] == [
        "But wait, are we solving the problem correctly so far?", "Let's go back to where we computed 3 * 4."]
    assert [kind for *_, kind in spans] == ["reflection", "backtrack"]
    assert spans[0][:2] == (20, 74)
    # curly apostrophe and case are folded; a phrase at the very end runs to the end of the text
    text = "x. LET\u2019S GO BACK TO step 1"
    assert highlight_spans(text, BACK, REFLECT) == [(3, len(text), "backtrack")]
    assert highlight_spans("no search here.", BACK, REFLECT) == []


def test_highlighted_html_escapes_model_output():
    text = "<b>x</b> Let's go back to <i>1</i>. done\x07"
    html = highlighted_html(text, highlight_spans(text, BACK, REFLECT))
    assert html == ('&lt;b&gt;x&lt;/b&gt; <mark class="backtrack">Let&#x27;s go back to &lt;i&gt;1&lt;/i&gt;.</mark>'
                    " done")


def test_metric_curves_keep_the_later_value_of_a_repeated_step():
    rows = [{"step": 0, "train/loss": 2.0, "epoch": 0}, {"step": 1, "train/loss": 1.5},
            {"step": 1, "train/loss": 1.25, "reward/mean": None}, {"step": 2, "train/loss": 1.0}, {"epoch": 3.0}]
    curves = metric_curves(rows)  # rows 2-3: a resumed run logs step 1 again; the resumed value wins
    assert curves["train/loss"] == [(0.0, 2.0), (1.0, 1.25), (2.0, 1.0)]
    assert curves["epoch"] == [(0.0, 0.0)] and "reward/mean" not in curves


def test_pick_samples_prefers_backtracking_answers():
    records = [{"index": i, "sample": 0, "correct": i % 2 == 0, "backtracks": b} for i, b in enumerate([0, 2, 1, 0, 3])]
    assert [(r["index"], r["backtracks"]) for r in pick_samples(records, 2)] == [(4, 3), (2, 1), (1, 2), (3, 0)]


def test_value_range_pads_and_keeps_floor():
    assert value_range([2.0, 2.0]) == (1.5, 2.5)  # flat: a span of 1 around it
    assert value_range([0.0, 0.0], floor=0.0) == (0.0, 1.0)  # on the floor: above it
    assert value_range([10.0, 20.0], floor=0.0) == (0.0, 21.0)  # 5% of the span 0..20 on top
    low, high = value_range([-1.0, 1.0])
    assert math.isclose(low, -1.1) and math.isclose(high, 1.1)


def test_charts_place_marks_where_the_numbers_say():
    svg = bar_chart_svg("acc", ["a", "b"], [0.0, 50.0], "accuracy (%)", baseline=25.0, baseline_label="base")
    # y axis 0..52.5 over pixels 206..28: a bar of 50 rises to 206 - 50 / 52.5 * 178 = 36.5; the baseline sits at 121.2
    assert 'y="36.5"' in svg and 'y1="121.2"' in svg and "stroke-dasharray" in svg
    svg = line_chart_svg("loss", {"sft": [(2, 1.0), (0, 3.0), (1, float("nan"))]}, "step", "loss")
    points = re.search(r'<polyline points="([^"]+)"', svg).group(1).split()
    assert len(points) == 2 and points[0].startswith("56.0,") and points[1].startswith("428.0,")  # sorted by x
    assert re.findall(r'font-size="10">([\d.]+)</text>', svg)[-3:] == ["0", "1", "2"]  # whole steps on the x axis
    with pytest.raises(ValueError, match="no finite points"):
        line_chart_svg("empty", {"a": [(0, float("inf"))]}, "x", "y")


def write_eval(folder: Path, texts: list[tuple[str, bool]]) -> None:
    """An `astro eval` folder: samples.jsonl rows and the summary the real writer makes of them."""
    records = []
    for i, (text, correct) in enumerate(texts):
        records.append({"benchmark": "synthetic", "problem_id": f"synthetic-{i}", "index": i, "sample": 0,
                        "gold": "14", "answer": "14" if correct else "13", "correct": correct,
                        "backtracks": text.count("Let's go back to"), "reflections": text.count("But wait"),
                        "grounded_backtracks": text.count("Let's go back to"),
                        "length": len(text.split()), "finish_reason": "stop", "text": text})
    settings = {"num_samples": 1, "pass_at": [1], "maj_at": [], "max_backtracks": 8,
                "backtrack_phrases": list(BACK), "reflection_phrases": list(REFLECT)}
    write_report(summarize(records, settings, match_fn=lambda a, b: a == b), folder)
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def make_run(root: Path) -> Path:
    """A pipeline run folder in the formats the commands write."""
    tree = SearchTree(problem_id="p0", problem="Evaluate 2 + 3 * 4.", gold="14")
    tree.add_child(0, "Compute 3 * 4 = 12.")
    tree.add_child(1, "Then 2 + 12 = 14. \\boxed{14}")
    tree.add_child(1, "Then \\boxed{15}")
    for node, answer, correct in ((2, "14", True), (3, "15", False)):
        tree.nodes[node].terminal, tree.nodes[node].answer, tree.nodes[node].correct = True, answer, correct
    append_tree(root / "search/trees.jsonl", tree)
    write_eval(root / "eval/untrained", [("garbage", False), (HOSTILE, False)])
    write_eval(root / "eval/sft", [(SEARCH_ANSWER, True), ("\\boxed{14}", True), ("\\boxed{13}", False)])
    write_eval(root / "eval/rl", [(SEARCH_ANSWER, True), (SEARCH_ANSWER, True), ("\\boxed{14}", True),
                                  (SEARCH_ANSWER.replace("{14}", "{13}"), False)])
    sft, rl = MetricsFileLogger(str(root / "sft")), MetricsFileLogger(str(root / "rl"))
    for step in range(20):
        sft.log_metrics({"train/loss": 3.0 / (1 + step), "epoch": step // 10}, step=step)
    for step in range(6):
        rl.log_metrics({"reward/mean": -1 + 0.3 * step, "rollout/response_len": 40.0 + step,
                        "train/entropy": 1.0 - 0.1 * step, "rollout/truncated_frac": 0.1,
                        "train/engine_logp_gap": 1e-3, "train/loss": 0.01 * step}, step=step)
    stages = {"search": {"seconds": 4.0, "artifacts": {"trees": str(root / "search/trees.jsonl")}},
              "untrained": {"seconds": 9.0, "artifacts": {}, "eval_summary": str(root / "eval/untrained/summary.json")},
              "sft": {"seconds": 30.0, "artifacts": {"model": str(root / "sft/hf")}},
              "sft-eval": {"seconds": 9.0, "artifacts": {"samples": str(root / "eval/sft/samples.jsonl")}},
              "rl": {"seconds": 60.0, "artifacts": {}},
              "rl-eval": {"seconds": 9.0, "artifacts": {}, "eval_summary": str(root / "eval/rl/summary.json")}}
    for name, folder in (("untrained", "untrained"), ("sft-eval", "sft"), ("rl-eval", "rl")):
        scores = json.loads((root / f"eval/{folder}/summary.json").read_text())["benchmarks"]["synthetic"]
        stages[name] |= {"accuracy": scores["pass@1"], "mean_backtracks": scores["mean_backtracks"],
                         "mean_length": scores["mean_length"]}
    (root / "summary.json").write_text(json.dumps({"seed": 0, "stages": stages}, indent=2))
    return root


class Collector(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.attrs, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += attrs

    def handle_data(self, data):
        self.text.append(data)


def test_report_of_a_run_folder(tmp_path, capsys):
    run = tmp_path / "moved" / "run"  # the summary's paths name the folder the run was made in
    shutil.move(make_run(tmp_path / "run"), run)
    assert astro(["report", str(run), "--num_trees", "2"]) == 0
    assert capsys.readouterr().out.strip() == f"report: {run / 'report.html'}"
    page = (run / "report.html").read_text(encoding="utf-8")
    parsed = Collector()
    parsed.feed(page)
    text = "".join(parsed.text)
    assert "script" not in parsed.tags and "img" not in parsed.tags and HOSTILE in text  # shown, not run
    assert not any(v and re.match(r"(https?:)?//", v) for k, v in parsed.attrs if k in {"href", "src"})
    assert parsed.tags.count("svg") == 2 + 1 + 6  # accuracy + backtracks, sft loss, 6 RL curves
    for title in ("Accuracy per stage", "baseline: untrained", "sft: loss", "rl: reward", "rl: entropy",
                  "rl: truncation rate", "rl: engine/trainer log-prob gap", "rl: response length"):
        assert title in page, title
    # the stage table: accuracies in percent (rl-eval: 3 of 4 correct)
    assert re.search(r"<td>rl-eval</td><td class=\"num\">75\.0</td><td class=\"num\">0\.75</td>", page)
    assert page.count('<div class="sample correct">') == 4 and page.count('<div class="sample wrong">') == 4
    assert page.count('<mark class="backtrack">') >= 3 and page.count('<mark class="reflection">') >= 3
    assert ('href="report_trees/tree-0.html"' in page and (run / "report_trees/tree-0.html").exists()
            and not (run / "report_trees/tree-1.html").exists())  # one tree in the file


def test_report_errors_name_the_problem(tmp_path, capsys):
    assert astro(["report", str(tmp_path / "nowhere")]) == 2
    assert re.match(r"astro report: error: .*nowhere: no summary\.json", capsys.readouterr().err)
    run = make_run(tmp_path / "run")
    with (run / "sft/metrics.jsonl").open("a") as f:
        f.write("{oops\n{}\n")
    assert astro(["report", str(run)]) == 2
    assert re.search(r"sft/metrics\.jsonl:21: not a JSON record", capsys.readouterr().err)


def chromium_render(chromium: str, page: Path, png: Path, width: int, height: int) -> list[str]:
    """Screenshots a page; returns the console messages Chromium logged (errors and console.* calls)."""
    run = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--enable-logging=stderr",
         "--v=0", f"--user-data-dir={png.parent / 'profile'}", f"--screenshot={png}", f"--window-size={width},{height}",
         page.as_uri()],
        check=True, timeout=120, capture_output=True, text=True,
    )  # fmt: skip
    return [line for line in run.stderr.splitlines() if ":CONSOLE" in line]


def test_report_renders_in_headless_chromium(tmp_path):
    import matplotlib.image

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed: apt-get install -y chromium"
    broken = tmp_path / "broken.html"  # the console check catches errors at all
    broken.write_text("<!DOCTYPE html><html><body><script>undefinedFunction();</script></body></html>")
    assert any("undefinedFunction" in m for m in chromium_render(chromium, broken, tmp_path / "b.png", 400, 300))

    run = make_run(tmp_path / "run")
    page = write_run_report(str(run))
    png = tmp_path / "report.png"
    assert chromium_render(chromium, page, png, 1400, 2600) == []
    image = matplotlib.image.imread(png)[..., :3]  # [H, W, 3] floats in [0, 1]
    assert image.shape == (2600, 1400, 3)

    def pixels_near(rgb: tuple[int, int, int], tol: int = 10) -> int:
        return int((np.abs(image * 255 - np.array(rgb)).max(axis=-1) <= tol).sum())

    assert pixels_near((0x1F, 0x6F, 0xD1)) > 5000  # accuracy bars and first curves (blue)
    assert pixels_near((0xE0, 0x7B, 0x00)) > 100  # second series of accuracy vs backtracks (orange)
    assert pixels_near((0x2E, 0x9D, 0x3A)) > 300  # its third series and the correct-sample borders (green)
    assert pixels_near((0xFF, 0xD2, 0x8A), tol=3) > 1000  # highlighted backtrack sentences
    assert pixels_near((0xBF, 0xE3, 0xFF), tol=3) > 1000  # highlighted reflections
