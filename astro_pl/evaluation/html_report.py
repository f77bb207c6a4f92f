"""`astro report RUN_DIR`: one self-contained `report.html` for a pipeline run folder (inline CSS and SVG charts,
no script, nothing fetched), and a few search-tree pages beside it.

    astro report runs/quickstart                  # -> runs/quickstart/report.html (+ report_trees/)

It reads only what the run wrote: `summary.json` (`astro pipeline`: stages, times, accuracies, artifact paths),
each evaluated stage's `astro eval` summary.json and samples.jsonl, every `metrics.jsonl` the training stages'
`MetricsFileLogger` wrote (so no W&B server is needed), and the search stage's trees.jsonl. The page shows the stage
table, accuracy per stage against the first evaluated stage (the untrained baseline), accuracy against backtracks,
training curves, sample answers with reflection and backtrack sentences highlighted, and links to tree pages.
Model output is shown as escaped text, never interpreted.
"""

from __future__ import annotations

import json
import re
from html import escape
from pathlib import Path

from astro_pl.evaluation.backtracks import DEFAULT_BACKTRACK_PHRASES, DEFAULT_REFLECTION_PHRASES
from astro_pl.evaluation.svg_charts import bar_chart_svg, line_chart_svg
from astro_pl.modules.metrics_file import METRICS_FILENAME
from astro_pl.runfiles import read_jsonl
from astro_pl.search.tree import read_trees
from astro_pl.search.view import render_tree

REPORT_FILENAME = "report.html"
TREES_DIRNAME = "report_trees"
# (chart title, metric key) of the training curves, in page order; a stage shows those it logged
CURVES = (
    ("loss", "train/loss"),
    ("validation loss", "val/loss"),
    ("reward", "reward/mean"),
    ("response length (tokens)", "rollout/response_len"),
    ("entropy", "train/entropy"),
    ("truncation rate", "rollout/truncated_frac"),
    ("engine/trainer log-prob gap", "train/engine_logp_gap"),
)
SENTENCE_END = re.compile(r"[.?!](?=\s|$)|\n")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 20px auto; max-width: 1400px; padding: 0 16px;
  color: #1d1d1f; background: #fafafa; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 24px 0 8px; } h3 { font-size: 14px; }
table { border-collapse: collapse; background: #fff; } td, th { border: 1px solid #ccc; padding: 3px 8px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } .meta { color: #555; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
.chart { background: #fff; border: 1px solid #ddd; border-radius: 4px; }
.samples { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 10px; }
.sample { background: #fff; border: 2px solid #bbb; border-radius: 6px; padding: 6px 10px; }
.sample.correct { border-color: #2e9d3a; } .sample.wrong { border-color: #d33a3a; }
.sample pre { white-space: pre-wrap; font-size: 12px; max-height: 320px; overflow: auto; margin: 4px 0 0; }
mark.backtrack { background: #ffd28a; } mark.reflection { background: #bfe3ff; }
"""


def metric_curves(rows: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """Metric -> (step, value) points from metrics.jsonl rows; for a step logged twice (a resumed run repeats the
    steps after its checkpoint) the later value wins. Rows without a step and null values are left out."""
    curves: dict[str, dict[float, float]] = {}
    for row in rows:
        step = row.get("step")
        if not isinstance(step, int | float):
            continue
        for key, value in row.items():
            if key != "step" and isinstance(value, int | float):
                curves.setdefault(key, {})[float(step)] = float(value)
    return {key: sorted(points.items()) for key, points in curves.items()}


def highlight_spans(text: str, backtrack_phrases: tuple[str, ...] | list[str],
                    reflection_phrases: tuple[str, ...] | list[str]) -> list[tuple[int, int, str]]:
    """(start, end, kind) of each sentence that holds a backtrack or reflection phrase, sorted, not overlapping.

    A span runs from the phrase to the end of its sentence ("." "?" "!" before a space or the end, or a newline).
    Matching ignores case and curly apostrophes, as `count_backtracks` does.
    """
    folded = text.replace("\u2019", "'").replace("\u2018", "'").lower()  # same length: offsets carry over
    spans = []
    for kind, phrases in (("backtrack", backtrack_phrases), ("reflection", reflection_phrases)):
        for phrase in phrases:
            needle = phrase.replace("\u2019", "'").replace("\u2018", "'").lower()
            start = folded.find(needle) if needle else -1
            while start >= 0:
                end = start + len(needle)
                if not needle.endswith((".", "?", "!")):
                    stop = SENTENCE_END.search(text, end)
                    end = stop.end() if stop else len(text)
                spans.append((start, end, kind))
                start = folded.find(needle, end)
    spans.sort()
    kept: list[tuple[int, int, str]] = []
    for span in spans:
        if not kept or span[0] >= kept[-1][1]:
            kept.append(span)
    return kept


def highlighted_html(text: str, spans: list[tuple[int, int, str]]) -> str:
    """Escaped text with each span wrapped in <mark class="kind">; control characters dropped."""
    parts, last = [], 0
    for start, end, kind in spans:
        parts += [escape(text[last:start]), f'<mark class="{kind}">{escape(text[start:end])}</mark>']
        last = end
    parts.append(escape(text[last:]))
    return CONTROL.sub("", "".join(parts))


def pick_samples(records: list[dict], per_kind: int) -> list[dict]:
    """Up to `per_kind` correct and `per_kind` wrong answers, those with the most backtracks first (ties by
    problem and sample), so the page shows the search behaviour when there is any."""
    def most_backtracks(r: dict) -> tuple:
        return -r.get("backtracks", 0), r.get("index", 0), r.get("sample", 0)

    correct = sorted((r for r in records if r.get("correct")), key=most_backtracks)[:per_kind]
    wrong = sorted((r for r in records if not r.get("correct")), key=most_backtracks)[:per_kind]
    return correct + wrong


def eval_dir(record: dict, run_dir: Path) -> Path | None:
    """The `astro eval` folder of an evaluated stage: recorded by the pipeline, else beside its samples artifact."""
    if record.get("eval_summary"):
        return resolve(record["eval_summary"], run_dir).parent
    samples = record.get("artifacts", {}).get("samples")
    return resolve(samples, run_dir).parent if samples else None


def resolve(path: str, run_dir: Path) -> Path:
    """A path as the pipeline recorded it (under its --output_dir, relative to where it ran), found again when the
    report runs elsewhere or the run folder was moved: the longest tail of it (a folder and a name at least) that
    exists under `run_dir`."""
    recorded = Path(path)
    if recorded.exists():
        return recorded
    for start in range(1, len(recorded.parts) - 1):
        candidate = run_dir.joinpath(*recorded.parts[start:])
        if candidate.exists():
            return candidate
    return recorded


def stage_table_html(stages: dict[str, dict]) -> str:
    header = "<tr><th>stage</th><th>accuracy (%)</th><th>backtracks / answer</th><th>response length</th>" \
             "<th>wall time (s)</th></tr>"
    rows = []
    for name, r in stages.items():
        cells = [f"{100 * r['accuracy']:.1f}" if r.get("accuracy") is not None else "-",
                 f"{r['mean_backtracks']:.2f}" if r.get("mean_backtracks") is not None else "-",
                 f"{r['mean_length']:.1f}" if r.get("mean_length") is not None else "-",
                 f"{r['seconds']:.0f}" if r.get("seconds") is not None else "-"]
        rows.append(f"<tr><td>{escape(name)}</td>" + "".join(f'<td class="num">{c}</td>' for c in cells) + "</tr>")
    return f"<table>{header}{''.join(rows)}</table>"


def accuracy_charts(evaluated: dict[str, dict], eval_summaries: dict[str, dict]) -> list[str]:
    """Accuracy per evaluated stage (the first one dashed as the baseline), and accuracy against backtracks."""
    charts = []
    if evaluated:
        names = list(evaluated)
        charts.append(bar_chart_svg("Accuracy per stage (pass@1)", names,
                                    [100 * evaluated[n]["accuracy"] for n in names], "accuracy (%)",
                                    baseline=100 * evaluated[names[0]]["accuracy"],
                                    baseline_label=f"baseline: {names[0]}"))
    series, ticks = {}, {}
    for name, summary in eval_summaries.items():
        bins = summary.get("all", {}).get("accuracy_by_backtracks", {})  # "0", "1", ..., "8+"
        points = [(float(key.rstrip("+")), 100 * b["accuracy"]) for key, b in bins.items()]
        ticks |= {float(key.rstrip("+")): key for key in bins}
        if points:
            series[name] = points
    if series:
        charts.append(line_chart_svg("Accuracy against backtracks", series, "backtracks in the answer",
                                     "accuracy (%)", x_ticks=ticks, floor=0.0))
    return charts


def training_sections(run_dir: Path, stage_names: list[str]) -> list[str]:
    """One block of curves per metrics.jsonl under the run folder, in stage order."""
    files = [p for p in run_dir.rglob(METRICS_FILENAME) if "wandb" not in p.relative_to(run_dir).parts]

    def order(path: Path) -> tuple:
        label = path.parent.relative_to(run_dir).as_posix()
        return (stage_names.index(label) if label in stage_names else len(stage_names), label)

    sections = []
    for path in sorted(files, key=order):
        label = path.parent.relative_to(run_dir).as_posix()
        curves = metric_curves(read_jsonl(path, torn_tail_ok=True))
        charts = [line_chart_svg(f"{label}: {title}", {label: curves[key]}, "step", title)
                  for title, key in CURVES if curves.get(key)]
        if charts:
            sections.append(f'<h3>{escape(label)} <span class="meta">({escape(path.relative_to(run_dir).as_posix())})'
                            f'</span></h3><div class="charts">{"".join(charts)}</div>')
    return sections


def samples_section(name: str, records: list[dict], settings: dict, per_kind: int) -> str:
    backtrack = tuple(settings.get("backtrack_phrases") or DEFAULT_BACKTRACK_PHRASES)
    reflection = tuple(settings.get("reflection_phrases") or DEFAULT_REFLECTION_PHRASES)
    cards = []
    for r in pick_samples(records, per_kind):
        text = str(r.get("text", ""))
        verdict = "correct" if r.get("correct") else "wrong"
        head = (f"<b>{verdict}</b> · {escape(str(r.get('problem_id', '')))} · gold {escape(str(r.get('gold')))} · "
                f"answer {escape(str(r.get('answer')))} · {r.get('backtracks', 0)} backtracks · "
                f"{r.get('length', '?')} tokens")
        cards.append(f'<div class="sample {verdict}"><div>{head}</div>'
                     f"<pre>{highlighted_html(text, highlight_spans(text, backtrack, reflection))}</pre></div>")
    body = "".join(cards) or '<p class="meta">no samples</p>'
    return f'<h3>{escape(name)}</h3><div class="samples">{body}</div>'


def write_tree_pages(trees_path: Path, out_dir: Path, count: int) -> list[tuple[str, str]]:
    """Renders the first `count` trees that hold a correct answer (so each shows a trace); (link, problem) pairs."""
    links = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for tree in read_trees(trees_path):
        if len(links) == count:
            break
        if not any(n.terminal and n.correct for n in tree.nodes):
            continue
        page = out_dir / f"tree-{len(links)}.html"
        page.write_text(render_tree(tree), encoding="utf-8")
        links.append((f"{out_dir.name}/{page.name}", tree.problem))
    return links


def build_report(run_dir: Path, out: Path, num_trees: int, samples_per_kind: int) -> str:
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise ValueError(f"{run_dir}: no summary.json (a run folder of `astro pipeline`)")
    stages = json.loads(summary_path.read_text(encoding="utf-8")).get("stages")
    if not isinstance(stages, dict):
        raise ValueError(f"{summary_path}: field 'stages' must be an object of stage records")
    evaluated = {name: r for name, r in stages.items() if r.get("accuracy") is not None}
    eval_summaries, samples = {}, []
    for name, record in evaluated.items():
        folder = eval_dir(record, run_dir)
        if folder is None or not (folder / "summary.json").is_file():
            continue
        eval_summaries[name] = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        if (folder / "samples.jsonl").is_file():
            samples.append(samples_section(name, read_jsonl(folder / "samples.jsonl", missing_ok=False),
                                           eval_summaries[name].get("settings", {}), samples_per_kind))
    trees = next((resolve(r["artifacts"]["trees"], run_dir) for r in stages.values()
                  if r.get("artifacts", {}).get("trees")), None)
    links = write_tree_pages(trees, out.parent / TREES_DIRNAME, num_trees) if trees and trees.is_file() else []
    tree_list = "".join(f'<li><a href="{escape(href)}">{escape(problem)}</a></li>' for href, problem in links)
    training = training_sections(run_dir, list(stages))
    sections = [
        f"<h1>ASTRO run report: {escape(run_dir.name)}</h1>",
        f'<p class="meta">{escape(str(run_dir))} · {len(stages)} stages</p>',
        "<h2>Stages</h2>", stage_table_html(stages),
        "<h2>Accuracy</h2>", '<div class="charts">' + "".join(accuracy_charts(evaluated, eval_summaries)) + "</div>",
        "<h2>Training curves</h2>", "".join(training) or '<p class="meta">no metrics.jsonl in this run</p>',
        "<h2>Sample answers</h2>",
        '<p class="meta"><mark class="reflection">reflection</mark> <mark class="backtrack">backtrack</mark></p>',
        "".join(samples) or '<p class="meta">no evaluated stage</p>',
        "<h2>Search trees</h2>",
        f"<ul>{tree_list}</ul>" if links else '<p class="meta">no search trees in this run</p>',
    ]
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>ASTRO run report: {escape(run_dir.name)}</title><style>{STYLE}</style></head><body>"
            + "".join(sections) + "</body></html>\n")


def write_run_report(run_dir: str, out: str | None = None, num_trees: int = 3, samples_per_kind: int = 2) -> Path:
    """Writes the HTML report of a pipeline run folder and a few search-tree pages beside it.

    Args:
        run_dir: The run folder (`--output_dir` of `astro pipeline`, holding summary.json).
        out: The HTML file to write; default `<run_dir>/report.html`.
        num_trees: Search trees rendered as pages and linked (the first ones with a correct answer).
        samples_per_kind: Correct and wrong sample answers shown per evaluated stage (each).
    """
    if num_trees < 0 or samples_per_kind < 0:
        raise ValueError("--num_trees and --samples_per_kind must be >= 0")
    root = Path(run_dir)
    path = Path(out) if out else root / REPORT_FILENAME
    page = build_report(root, path, num_trees, samples_per_kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)  # a reader sees the old page or the new one, never half of one
    return path


def main(argv: list[str] | None = None) -> int:
    from jsonargparse import auto_cli

    path = auto_cli(write_run_report, args=argv)  # a bad folder or file: ValueError, one line from the dispatch
    print(f"report: {path}")
    return 0
