"""The comparison of an ablation's runs: every score as mean ± std over seeds, pass@1 per seed, and the margins
between arms and between stages against the seeds' spread.

A difference counts as beyond noise when it is more than twice the seed standard deviation that bounds it: for two
arms, the larger of their sample stds; for a change between two stages of one arm, the std of its per-seed changes.
The runs are `<arm>-seed<N>/summary.json` folders that `astro pipeline` writes; the restarts of each run's training
(`PlateauRestart`'s verdicts, printed into its stage logs) are listed too, since they say how many draws a seed took.
"""

from __future__ import annotations

import json
import re
from itertools import combinations, pairwise
from pathlib import Path
from typing import NamedTuple


def sample_std(values: list[float]) -> float:
    """The sample standard deviation (n - 1); 0 for a single value, which has no spread to show."""
    mean = sum(values) / len(values)
    return (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0


def mean_std(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    """Mean ± sample std of `values` times `scale` (percent by default); a single run has no spread to show."""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {scale * sample_std(values):.{digits}f}"


class Margin(NamedTuple):
    """A difference of means and the bar it must clear: twice the seed std that bounds it."""

    difference: float
    bar: float
    seeds: int  # the fewest seeds behind either side

    @property
    def beyond_noise(self) -> bool:
        """Larger than the bar either way, from at least 2 seeds a side (one seed has no spread to judge by)."""
        return self.seeds >= 2 and abs(self.difference) > self.bar


def arm_gap(first: list[float], second: list[float]) -> Margin:
    """`first`'s mean minus `second`'s, against twice the larger of the two sample stds."""
    difference = sum(first) / len(first) - sum(second) / len(second)
    return Margin(difference, 2 * max(sample_std(first), sample_std(second)), min(len(first), len(second)))


def paired_differences(first: dict[int, float], second: dict[int, float]) -> list[float]:
    """`first` minus `second` for each seed both have, in seed order."""
    return [first[seed] - second[seed] for seed in sorted(first.keys() & second.keys())]


def stage_change(before: dict[int, float], after: dict[int, float]) -> tuple[Margin, list[float]]:
    """The per-seed change from `before` to `after` (seeds both have), its mean against twice its sample std."""
    changes = paired_differences(after, before)
    if not changes:
        raise ValueError("no seed has both stages")
    return Margin(sum(changes) / len(changes), 2 * sample_std(changes), len(changes)), changes


COMPARED = (("accuracy", "pass@1 (%)", 100.0, 1), ("accuracy_finished", "pass@1 finished (%)", 100.0, 1),
            ("truncation_rate", "truncated (%)", 100.0, 1), ("mean_backtracks", "backtracks", 1.0, 2),
            ("grounded_backtracks", "grounded (%)", 100.0, 0), ("mean_length", "length", 1.0, 1))
"""Stage results `compare_runs` shows: key, column, scale and decimals."""


def read_runs(root: str | Path) -> list[tuple[str, int, str, dict]]:
    """(arm, seed, stage, result) for every evaluated stage of the `<arm>-seed<N>` runs under `root`, unfinished
    runs too; the task's own verdicts (`Task.judge`) flattened to `task.<key>`."""
    paths = sorted(Path(root).glob("*/summary.json"))
    if not paths:
        raise ValueError(f"{root}: no <arm>-seed<N>/summary.json run folders")
    results = []
    for path in paths:
        run = json.loads(path.read_text())
        arm = re.sub(r"-seed\d+$", "", path.parent.name)
        results += [(arm, run["seed"], name, result | {f"task.{k}": v for k, v in result.get("task", {}).items()})
                    for name, result in run["stages"].items() if "accuracy" in result]
    return results


def compare_runs(root: str | Path) -> str:
    """The comparison of the runs under `root`: one row per arm and evaluated stage with each score as mean ± sample
    std over the seeds that have it (the task's verdicts, as fractions, after the common scores); pass@1 per seed;
    and the pass@1 margins between arms at each stage and between consecutive stages of each arm."""
    results = read_runs(root)
    arms = list(dict.fromkeys(arm for arm, *_ in results))
    stages = list(dict.fromkeys(name for _, _, name, _ in results))
    task_keys = list(dict.fromkeys(key[5:] for *_, result in results for key in result if key.startswith("task.")))
    columns = [*COMPARED, *((f"task.{key}", key, 1.0, 2) for key in task_keys)]
    lines = ["| arm | stage | seeds | " + " | ".join(title for _, title, _, _ in columns) + " |",
             "|---|---|---:|" + "---:|" * len(columns)]
    accuracy: dict[tuple[str, str], dict[int, float]] = {}  # (arm, stage) -> seed -> pass@1
    for arm in arms:
        for stage in stages:
            done = [(seed, result) for run_arm, seed, name, result in results if run_arm == arm and name == stage]
            if not done:
                continue
            accuracy[arm, stage] = {seed: result["accuracy"] for seed, result in done}
            cells = []
            for key, _, scale, digits in columns:
                values = [result[key] for _, result in done if result.get(key) is not None]
                cells.append(mean_std(values, scale, digits) if values else "-")
            seeds = ", ".join(str(seed) for seed, _ in done)
            lines.append(f"| {arm} | {stage} | {seeds} | " + " | ".join(cells) + " |")
    seeds = sorted({seed for per_seed in accuracy.values() for seed in per_seed})
    lines += ["", "pass@1 (%) per seed:", "",
              "| arm | stage | " + " | ".join(f"seed {seed}" for seed in seeds) + " |",
              "|---|---|" + "---:|" * len(seeds)]
    lines += [f"| {arm} | {stage} | " + " | ".join(f"{100 * per_seed[s]:.1f}" if s in per_seed else "-"
                                                   for s in seeds) + " |"
              for (arm, stage), per_seed in accuracy.items()]
    lines += ["", "pass@1 margins in points, beyond noise when more than twice the seed std that bounds them:", ""]
    lines += margin_lines(accuracy, arms, stages)
    if machines := machine_lines(root):
        lines += ["", "machines the runs' stages ran on (floating-point results, and so which restart draw forms a "
                  "skill, differ between them):", "", *machines]
    if restarts := restart_lines(root):
        lines += ["", "restarts from a fresh initialisation (each run's `PlateauRestart` verdicts):", "", *restarts]
    return "\n".join(lines)


def machine_lines(root: str | Path) -> list[str]:
    """One line per machine that `astro pipeline` recorded for a run's stages, naming the runs that ran there."""
    runs_on: dict[str, list[str]] = {}
    for path in sorted(Path(root).glob("*/summary.json")):
        stages = json.loads(path.read_text())["stages"].values()
        for machine in dict.fromkeys(stage["machine"] for stage in stages if stage.get("machine")):
            runs_on.setdefault(machine, []).append(path.parent.name)
    return [f"- {machine}: {', '.join(runs)}" for machine, runs in runs_on.items()]


RESTART_PREFIX = "PlateauRestart: "


def restart_lines(root: str | Path) -> list[str]:
    """One line per run stage whose log (`<run>/logs/<stage>.log`) holds restart verdicts, in the order printed."""
    lines = []
    for log in sorted(Path(root).glob("*-seed*/logs/*.log")):
        verdicts = [line.strip()[len(RESTART_PREFIX):] for line in log.read_text(errors="replace").splitlines()
                    if line.startswith(RESTART_PREFIX)]
        if verdicts:
            lines.append(f"- {log.parent.parent.name}, {log.stem}: " + "; ".join(verdicts))
    return lines


def margin_lines(accuracy: dict[tuple[str, str], dict[int, float]], arms: list[str], stages: list[str]) -> list[str]:
    """One line per pair of arms at each stage, and per arm for each pair of consecutive stages it has."""
    def verdict(margin: Margin) -> str:
        if margin.seeds < 2:
            return "one seed: no spread to judge by"
        return "beyond noise" if margin.beyond_noise else "within noise"

    def points(values: list[float]) -> str:
        return ", ".join(f"{100 * v:+.1f}" for v in values)

    lines = []
    for stage in stages:
        for first, second in combinations([arm for arm in arms if (arm, stage) in accuracy], 2):
            a, b = accuracy[first, stage], accuracy[second, stage]
            margin = arm_gap(list(a.values()), list(b.values()))
            lines.append(f"- {stage}: {first} - {second} = {100 * margin.difference:+.1f} "
                         f"(per seed {points(paired_differences(a, b))}); "
                         f"twice the larger seed std {100 * margin.bar:.1f}: {verdict(margin)}")
    for arm in arms:
        evaluated = [stage for stage in stages if (arm, stage) in accuracy]
        for before, after in pairwise(evaluated):
            try:
                margin, changes = stage_change(accuracy[arm, before], accuracy[arm, after])
            except ValueError:
                continue
            lines.append(f"- {arm}, {before} -> {after}: {100 * margin.difference:+.1f} (per seed {points(changes)}); "
                         f"twice its std {100 * margin.bar:.1f}: {verdict(margin)}")
    return lines
