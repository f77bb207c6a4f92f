"""From per-sample records to the paper's table and backtracking analysis: summary dict, Markdown, JSON, PNG.

`summarize` is the one place scores are computed (through the metric classes), from records sorted by problem
and sample, so an unsharded run and merged shards give identical summaries. Fractions stay in [0, 1] in the
JSON; the Markdown table shows percentages like the paper. An undefined Pearson r (all responses with the same
number of backtracks, or all equally correct) is null in JSON and "n/a" in text.

A sample cut off at the token limit (finish_reason "length") has no answer unless the run scored truncated samples
(`astro eval --score_truncated`), so pass@k counts it wrong and maj@k gives it no vote. Next to pass@1 each benchmark
reports its truncation rate and pass@1 among finished samples (null when none finished): a low pass@1 with a high
truncation rate says the budget, not the reasoning, is short.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from astro_pl.evaluation.metrics import AccuracyByBacktracks, MajorityAtK, MeanResponseLength, PassAtK


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def _backtrack_analysis(backtracks: list[int], correct: list[bool], max_backtracks: int) -> dict:
    metric = AccuracyByBacktracks(max_backtracks)
    metric.update(torch.tensor(backtracks), torch.tensor(correct))
    result = metric.compute()
    bins = {
        str(b) if b < max_backtracks else f"{b}+": {"accuracy": float(acc), "count": int(n)}
        for b, (acc, n) in enumerate(zip(result["accuracy"].tolist(), result["count"].tolist(), strict=True))
        if n > 0
    }
    return {"pearson_r": _finite(float(result["pearson_r"])), "accuracy_by_backtracks": bins}


def truncation_scores(finish_reasons: Sequence[str], correct: Sequence[bool]) -> dict:
    """Share of samples cut off at the token limit, and pass@1 among the others (None when all were cut off)."""
    finished = [c for reason, c in zip(finish_reasons, correct, strict=True) if reason != "length"]
    return {"truncation_rate": 1 - len(finished) / len(correct),
            "pass@1_finished": sum(map(bool, finished)) / len(finished) if finished else None}


def summarize(records: Sequence[dict], settings: dict, match_fn: Callable[[str, str], bool] | None = None) -> dict:
    """Scores per benchmark and the pooled backtrack analysis.

    Args:
        records: Per-sample records (benchmark, index, sample, answer, correct, backtracks, reflections, length,
            finish_reason); every problem must have `settings["num_samples"]` samples.
        settings: Run settings; uses num_samples, pass_at, maj_at, max_backtracks and is copied into the summary.
        match_fn: Answer equivalence for maj@k grouping (default: the answer checker).
    """
    ordered = sorted(records, key=lambda r: (r["index"], r["sample"]))
    k, max_backtracks = settings["num_samples"], settings["max_backtracks"]
    by_benchmark: dict[str, list[list[dict]]] = {}
    for start in range(0, len(ordered), k):
        group = ordered[start:start + k]
        if len(group) != k or len({(r["index"], r["benchmark"]) for r in group}) != 1:
            raise ValueError(f"problem at index {group[0]['index']} does not have exactly {k} samples")
        by_benchmark.setdefault(group[0]["benchmark"], []).append(group)
    benchmarks = {}
    for name, problems in by_benchmark.items():
        correct = torch.tensor([[r["correct"] for r in group] for group in problems])  # [P, k]
        answers = [[r["answer"] for r in group] for group in problems]
        scores: dict = {"num_problems": len(problems), "num_samples": k}
        for pass_k in sorted({1, *settings["pass_at"]}):
            metric = PassAtK(pass_k)
            metric.update(correct)
            scores[f"pass@{pass_k}"] = float(metric.compute())
        for maj_k in settings["maj_at"]:
            metric = MajorityAtK(maj_k, match_fn)
            metric.update(answers, correct)
            scores[f"maj@{maj_k}"] = float(metric.compute())
        flat = [r for group in problems for r in group]
        length = MeanResponseLength()
        length.update(torch.tensor([r["length"] for r in flat], dtype=torch.float64))
        scores |= truncation_scores([r["finish_reason"] for r in flat], [r["correct"] for r in flat])
        scores["mean_length"] = float(length.compute())
        scores["mean_backtracks"] = sum(r["backtracks"] for r in flat) / len(flat)
        scores["mean_reflections"] = sum(r["reflections"] for r in flat) / len(flat)
        backtracks = sum(r["backtracks"] for r in flat)  # share of them whose go-back target was written before
        scores["grounded_backtracks"] = sum(r["grounded_backtracks"] for r in flat) / backtracks if backtracks else None
        scores |= _backtrack_analysis([r["backtracks"] for r in flat], [r["correct"] for r in flat], max_backtracks)
        if task := mean_judgements([r.get("task") or {} for r in flat]):
            scores["task"] = task
        benchmarks[name] = scores
    pooled = _backtrack_analysis([r["backtracks"] for r in ordered], [r["correct"] for r in ordered], max_backtracks)
    return {"settings": settings, "benchmarks": benchmarks, "all": pooled}


def mean_judgements(judgements: Sequence[dict]) -> dict[str, float | None]:
    """Each key of the task's per-response verdicts (`Task.judge`) averaged over the responses where it is not None
    (booleans as 0/1); None where no response has it."""
    keys = dict.fromkeys(key for judgement in judgements for key in judgement)
    means = {}
    for key in keys:
        values = [float(j[key]) for j in judgements if j.get(key) is not None]
        means[key] = sum(values) / len(values) if values else None
    return means


_SCORE_KEY = re.compile(r"(pass|maj)@\d+")


def markdown_table(summary: dict) -> str:
    """The paper's table: one row per benchmark, scores in percent."""
    benchmarks = summary["benchmarks"]
    score_keys = list(dict.fromkeys(key for s in benchmarks.values() for key in s if _SCORE_KEY.fullmatch(key)))
    header = ["benchmark", "problems", *score_keys, "pass@1 finished", "truncated", "mean length",
              "backtracks / response", "grounded", "Pearson r"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name, scores in benchmarks.items():
        r, grounded = scores["pearson_r"], scores["grounded_backtracks"]
        finished = scores["pass@1_finished"]
        cells = [name, str(scores["num_problems"]), *(f"{100 * scores[key]:.1f}" for key in score_keys),
                 "n/a" if finished is None else f"{100 * finished:.1f}", f"{100 * scores['truncation_rate']:.1f}",
                 f"{scores['mean_length']:.1f}", f"{scores['mean_backtracks']:.2f}",
                 "n/a" if grounded is None else f"{100 * grounded:.0f}%", "n/a" if r is None else f"{r:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    for name, scores in benchmarks.items():
        if scores.get("task"):
            lines.append(f"\n{name}, the task's own verdicts (mean over responses where defined): " + ", ".join(
                f"{key} {'n/a' if value is None else f'{value:.3f}'}" for key, value in scores["task"].items()))
    return "\n".join(lines)


def plot_backtracks(summary: dict, path: str | Path) -> Path:
    """PNG of accuracy against backtracks per response, one line per benchmark, pooled Pearson r in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ticks: dict[int, str] = {}
    for name, scores in summary["benchmarks"].items():
        bins = scores["accuracy_by_backtracks"]  # "0", "1", ..., "8+" -> x = 0, 1, ..., 8
        xs = [int(key.rstrip("+")) for key in bins]
        ticks |= dict(zip(xs, bins, strict=True))
        r = scores["pearson_r"]
        ax.plot(xs, [100 * b["accuracy"] for b in bins.values()], marker="o",
                label=f"{name} (r = {'n/a' if r is None else f'{r:.2f}'})")
    ax.set_xticks(sorted(ticks), [ticks[x] for x in sorted(ticks)])
    pooled = summary["all"]["pearson_r"]
    ax.set_title(f"Accuracy vs backtracks per response (Pearson r = {'n/a' if pooled is None else f'{pooled:.2f}'})")
    ax.set_xlabel("backtracks in the response")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def write_report(summary: dict, out_dir: str | Path) -> str:
    """Writes summary.json, summary.md and backtracks.png to `out_dir`; returns the Markdown table."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    table = markdown_table(summary)
    (out_dir / "summary.md").write_text(table + "\n", encoding="utf-8")
    plot_backtracks(summary, out_dir / "backtracks.png")
    return table
