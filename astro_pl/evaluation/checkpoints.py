"""`astro eval-checkpoints`: the paper's backtracking analysis across RL training, one `astro eval` per checkpoint.

    astro eval-checkpoints --eval_config configs/eval/synthetic.yaml --folder runs/rl/synthetic
    astro eval-checkpoints --eval_config configs/eval/math.yaml --checkpoints [runs/sft/hf,runs/rl/hf] --steps [0,500]

Each checkpoint (an HF export, or a Lightning .ckpt whose weights replace the eval config's model) is evaluated by
`astro_pl.evaluation.run.evaluate` into `out_dir/step<N>/`, with the eval config's benchmarks and sampling, by one
engine that takes each checkpoint's weights in turn; a checkpoint whose summary.json is there with the same scored
settings is not evaluated again, so a killed run resumes at the checkpoint it was on. Then `checkpoints.json`,
`checkpoints.md` and `checkpoints.png` give, per benchmark and RL step, pass@1, mean backtracks, mean length and
the grounded-backtrack share, and Pearson r across checkpoints of accuracy against backtracks and against length
(the paper reports r of about 0.82-0.85; most likely measured this way, across checkpoints, rather than per
response, which each evaluation's own plot shows).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from astro_pl.evaluation.metrics import pearson_from_sums
from astro_pl.evaluation.run import EvalArgs, build_engine, checkpoint_weights, evaluate, scored_settings
from astro_pl.evaluation.run import parse_args as parse_eval_args
from astro_pl.options import parse_dataclass

STEP_IN_NAME = re.compile(r"step[=_-]?(\d+)")
"""The step in a checkpoint's name: `hf-step20`, Lightning's `step=20.ckpt`, `step_20`."""
COLUMNS = ("pass@1", "mean_backtracks", "mean_length", "grounded_backtracks")
"""Per-benchmark scores of an `astro eval` summary that the table carries."""


@dataclass
class CheckpointEvalArgs:
    """Which checkpoints, evaluated how, written where."""

    eval_config: str
    """An `astro eval` YAML (benchmarks, engine, sampling); its `model` is replaced by each HF checkpoint and is the
    base model of .ckpt checkpoints; its `out_dir` is replaced by `out_dir/step<N>`."""
    eval_overrides: list[str] = field(default_factory=list)
    """More `astro eval` arguments, applied after `eval_config` as on its command line, e.g.
    `[--task.init_args.arms, "4"]`: the checkpoints scored as the pipeline's own eval stages score them."""
    checkpoints: list[str] = field(default_factory=list)
    """HF model folders or Lightning .ckpt files, in any order (sorted by step)."""
    steps: list[int] | None = None
    """The RL step of each of `checkpoints` (default: `export.json`'s global_step, else "step<N>" in the name)."""
    folder: str | None = None
    """Also every HF export in this folder that records its step (`hf-step<N>/` and `hf/` written by `HFExport`)."""
    out_dir: str = "runs/eval/checkpoints"
    """Output folder: one evaluation folder per checkpoint, and the table and plot across them."""
    evaluated: list[str] = field(default_factory=list)
    """Folders of `astro eval` runs already done, such as a pipeline's own eval stages of the SFT and the final RL
    model: a checkpoint scored there with the same settings is read from there, not evaluated again."""
    workers: int = 1
    """Processes evaluating checkpoints at once, each with its own engine and an equal share of the cores; the scores do
    not depend on it. More than 1 pays for a tiny model, whose sampling is Python-bound; a large model's engine wants
    the whole machine."""

    def __post_init__(self) -> None:
        if not self.checkpoints and not self.folder:
            raise ValueError("give --checkpoints and/or --folder")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.steps is not None and len(self.steps) != len(self.checkpoints):
            raise ValueError(f"--steps needs one step per checkpoint: {len(self.steps)} steps for "
                             f"{len(self.checkpoints)} --checkpoints")


def checkpoint_step(path: Path) -> int:
    """The training step of a checkpoint: `export.json` of an HF export, else "step<N>" in its name."""
    meta = path / "export.json"
    if meta.is_file():
        try:
            return int(json.loads(meta.read_text(encoding="utf-8"))["global_step"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{meta}: no integer 'global_step' ({e})") from None
    found = STEP_IN_NAME.findall(path.name)
    if not found:
        raise ValueError(f"{path}: cannot tell its training step (no export.json, no 'step<N>' in the name); "
                         "give --steps")
    return int(found[-1])


def find_checkpoints(args: CheckpointEvalArgs) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint, sorted by step; of two with one step (`hf/` and `hf-step<N>/` after the
    last step) the first by name is kept."""
    paths = [Path(p) for p in args.checkpoints]
    for path in paths:
        if not path.exists():
            raise ValueError(f"--checkpoints: {path} does not exist")
    found = [(step, path) for step, path in zip(args.steps or map(checkpoint_step, paths), paths, strict=True)]
    if args.folder:
        folder = Path(args.folder)
        exports = sorted(p for p in folder.iterdir() if (p / "export.json").is_file()) if folder.is_dir() else []
        if not exports:
            raise ValueError(f"--folder {folder}: no HF export with an export.json in it (HFExport writes them)")
        found += [(checkpoint_step(path), path) for path in exports]
    by_step: dict[int, Path] = {}
    for step, path in sorted(found, key=lambda item: (item[0], str(item[1]))):
        by_step.setdefault(step, path)
    return sorted(by_step.items())


def eval_args_for(args: CheckpointEvalArgs, path: Path, out_dir: Path) -> EvalArgs:
    """The eval config with this checkpoint as its model (an HF folder) or its weights (a .ckpt file)."""
    which = "--checkpoint" if path.suffix == ".ckpt" else "--model"
    eval_args = parse_eval_args(["--config", args.eval_config, *args.eval_overrides,
                                 which, str(path), "--out_dir", str(out_dir)])
    if eval_args.shard or eval_args.merge:
        raise ValueError(f"--eval_config {args.eval_config}: shard/merge do not apply here; remove them")
    return eval_args


def finished_summary(eval_args: EvalArgs, evaluated: Sequence[dict] = ()) -> dict | None:
    """The summary of a finished evaluation with these settings: in its own folder (other settings there raise), else
    among `evaluated` (summaries of earlier `astro eval` runs); None when there is none."""
    settings = json.loads(json.dumps(scored_settings(eval_args)))  # as the file holds them (tuples become lists)
    path = Path(eval_args.out_dir) / "summary.json"
    if not path.is_file():
        for summary in evaluated:
            if summary.get("settings") == settings:
                print(f"astro eval-checkpoints: {eval_args.model or eval_args.checkpoint} was scored in "
                      f"{summary['folder']}")
                return summary
        return None
    summary = json.loads(path.read_text(encoding="utf-8"))
    if summary.get("settings") != settings:
        raise ValueError(f"{path} was written with other settings (model, sampling or benchmarks); remove "
                         f"{path.parent} or choose another --out_dir")
    print(f"astro eval-checkpoints: {path.parent} is done, skipped")
    return summary


def read_evaluated(folders: Sequence[str]) -> list[dict]:
    """The summaries of `--evaluated` folders, each with its folder; a folder without one is an error."""
    summaries = []
    for folder in folders:
        path = Path(folder) / "summary.json"
        if not path.is_file():
            raise ValueError(f"--evaluated {folder}: no summary.json (an `astro eval` output folder has one)")
        summaries.append(json.loads(path.read_text(encoding="utf-8")) | {"folder": folder})
    return summaries


def checkpoint_tensors(path: Path, eval_args: EvalArgs) -> Iterator[tuple[str, torch.Tensor]]:
    """Hugging Face-named weights of a checkpoint: an export's safetensors files, or a Lightning .ckpt's state."""
    if path.suffix == ".ckpt":
        yield from checkpoint_weights(path, eval_args.model).items()
        return
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{path}: no *.safetensors weights (an export of HFExport with merge_lora: true has them)")
    for file in files:
        yield from load_file(file).items()


def evaluate_all(runs: Sequence[tuple[int, Path, EvalArgs]], evaluated: Sequence[dict] = (),
                 workers: int = 1) -> list[tuple[int, str, dict]]:
    """(step, path, summary) of every checkpoint, evaluating those not done in `workers` processes (each takes every
    `workers`-th of them in turn)."""
    summaries = [finished_summary(eval_args, evaluated) for _, _, eval_args in runs]
    pending = [run for run, summary in zip(runs, summaries, strict=True) if summary is None]
    groups = [pending[i::workers] for i in range(min(workers, len(pending)))]
    if len(groups) > 1:
        evaluate_in_processes(groups)
    elif groups:
        evaluate_in_turn(groups[0])
    return [(step, str(path), summary or read_summary(eval_args))
            for (step, path, eval_args), summary in zip(runs, summaries, strict=True)]


def read_summary(eval_args: EvalArgs) -> dict:
    return json.loads((Path(eval_args.out_dir) / "summary.json").read_text(encoding="utf-8"))


def evaluate_in_turn(runs: Sequence[tuple[int, Path, EvalArgs]]) -> None:
    """Evaluates checkpoints with one engine: built for the first, then given each next checkpoint's weights (an
    engine start can take minutes for a large model)."""
    engine = None
    try:
        for _, path, eval_args in runs:
            if engine is None:
                engine = build_engine(eval_args)
            else:
                engine.load_weights(checkpoint_tensors(path, eval_args))
            evaluate(eval_args, engine=engine)
    finally:
        if engine is not None:
            engine.close()


def _evaluate_forked(runs: Sequence[tuple[int, Path, EvalArgs]], threads: int) -> None:
    torch.set_num_threads(threads)
    evaluate_in_turn(runs)


def evaluate_in_processes(groups: Sequence[Sequence[tuple[int, Path, EvalArgs]]]) -> None:
    """Each group evaluated in its own forked process with an equal share of this process's cores. The results do not
    depend on the split: every evaluation seeds its own batches, and a tiny model's sampling gains little from a second
    thread (`astro eval` on the graph task: 21 s on one, 23 s on two)."""
    threads = max(1, len(os.sched_getaffinity(0)) // len(groups))
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_evaluate_forked, args=(group, threads)) for group in groups]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    failed = [(group, process.exitcode) for group, process in zip(groups, processes, strict=True) if process.exitcode]
    if failed:
        raise ValueError("; ".join(f"the worker evaluating steps {[step for step, _, _ in group]} failed (exit code "
                                   f"{code}, its error is above)" for group, code in failed))


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson r of paired values; None when undefined (fewer than 2 points or a constant variable)."""
    n = len(xs)
    r = pearson_from_sums(n, sum(xs), sum(ys), sum(x * x for x in xs), sum(y * y for y in ys),
                          sum(x * y for x, y in zip(xs, ys, strict=True)))
    return None if r != r else r  # NaN -> None


def across_checkpoints(summaries: Sequence[tuple[int, str, dict]]) -> dict:
    """Rows (step, benchmark, scores, the task's own verdicts when it has any) and, per benchmark, Pearson r across
    checkpoints of pass@1 against mean backtracks and against mean length.

    Args:
        summaries: (step, checkpoint path, `astro eval` summary), sorted by step.
    """
    rows = [{"step": step, "checkpoint": path, "benchmark": name, **{key: scores.get(key) for key in COLUMNS},
             **({"task": scores["task"]} if scores.get("task") else {})}
            for step, path, summary in summaries for name, scores in summary["benchmarks"].items()]
    correlations = {}
    for name in dict.fromkeys(row["benchmark"] for row in rows):
        mine = [row for row in rows if row["benchmark"] == name]
        accuracy = [row["pass@1"] for row in mine]
        correlations[name] = {"checkpoints": len(mine),
                              "accuracy_vs_backtracks": pearson(accuracy, [row["mean_backtracks"] for row in mine]),
                              "accuracy_vs_length": pearson(accuracy, [row["mean_length"] for row in mine])}
    return {"rows": rows, "pearson_r": correlations}


def _r(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def markdown(table: dict) -> str:
    """The rows in percent, then one line of Pearson r per benchmark."""
    lines = ["| step | benchmark | pass@1 | backtracks / response | grounded | mean length |",
             "|---:|---|---:|---:|---:|---:|"]
    for row in table["rows"]:
        grounded = row["grounded_backtracks"]
        lines.append(f"| {row['step']} | {row['benchmark']} | {100 * row['pass@1']:.1f} | "
                     f"{row['mean_backtracks']:.2f} | {'n/a' if grounded is None else f'{100 * grounded:.0f}%'} | "
                     f"{row['mean_length']:.1f} |")
    lines.append("")
    lines += [f"Pearson r across {r['checkpoints']} checkpoints, {name}: accuracy vs backtracks "
              f"{_r(r['accuracy_vs_backtracks'])}, accuracy vs length {_r(r['accuracy_vs_length'])}"
              for name, r in table["pearson_r"].items()]
    return "\n".join(lines)


def plot(table: dict, path: Path) -> Path:
    """PNG: pass@1, mean backtracks and mean length against step, one line per benchmark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=100)
    for name, r in table["pearson_r"].items():
        mine = [row for row in table["rows"] if row["benchmark"] == name]
        steps = [row["step"] for row in mine]
        axes[0].plot(steps, [100 * row["pass@1"] for row in mine], marker="o", label=name)
        axes[1].plot(steps, [row["mean_backtracks"] for row in mine], marker="o",
                     label=f"{name} (r with accuracy = {_r(r['accuracy_vs_backtracks'])})")
        axes[2].plot(steps, [row["mean_length"] for row in mine], marker="o",
                     label=f"{name} (r with accuracy = {_r(r['accuracy_vs_length'])})")
    for ax, label in zip(axes, ("pass@1 (%)", "backtracks per response", "mean length (tokens)"), strict=True):
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        ax.legend(fontsize="small")
    fig.suptitle("Across checkpoints: accuracy, backtracking and length")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def evaluate_checkpoints(args: CheckpointEvalArgs) -> dict:
    """Evaluates every checkpoint not yet done, then writes the table (JSON, Markdown) and the plot."""
    out_dir = Path(args.out_dir)
    checkpoints = find_checkpoints(args)
    runs = [(step, path, eval_args_for(args, path, out_dir / f"step{step}")) for step, path in checkpoints]
    table = across_checkpoints(evaluate_all(runs, read_evaluated(args.evaluated), args.workers))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "checkpoints.json").write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    text = markdown(table)
    (out_dir / "checkpoints.md").write_text(text + "\n", encoding="utf-8")
    plot(table, out_dir / "checkpoints.png")
    print(text)
    return table


def parse_args(argv: list[str] | None) -> CheckpointEvalArgs:
    return parse_dataclass(CheckpointEvalArgs, "astro eval-checkpoints", __doc__.split("\n\n")[0], argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        evaluate_checkpoints(args)
    except ValueError as e:
        print(f"astro eval-checkpoints: {e}", file=sys.stderr)
        return 2
    return 0
