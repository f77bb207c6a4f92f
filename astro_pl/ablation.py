"""`astro ablation`: one pipeline config per arm, run for every seed, then the side-by-side comparison.

Runs go to `<output_dir>/<arm>-seed<N>`, seeds outermost (after the first seed every arm has a result), each an
ordinary `astro pipeline` run in its own process: resumable stage by stage, and any one of them can be rerun by
hand. With `--jobs N` (a CPU machine), N runs go at once, each pinned to its own share of the cores with vLLM's and
torch's OpenMP threads bound there: two runs that share all cores instead spin against each other's threads, and
each is then slower than two runs on one core each. A failed run does not stop the others; the command fails at the
end naming it. The comparison (`astro pipeline --compare <output_dir>`) is printed and written to
`<output_dir>/comparison.md` once every run has ended.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from itertools import product
from pathlib import Path
from typing import NamedTuple

from astro_pl.errors import UsageError
from astro_pl.evaluation.comparison import compare_runs
from astro_pl.options import parse_dataclass
from astro_pl.pipeline import PipelineArgs


@dataclass
class Arm:
    """One arm: a pipeline config and the variables it runs with (over the config's own)."""

    config: str
    """The `astro pipeline` config."""
    variables: dict[str, str] = field(default_factory=dict)
    """{name} -> value substitutions that make this arm differ from the others."""


@dataclass
class AblationArgs:
    """`astro ablation`: the arms, the seeds and where the runs go."""

    arms: dict[str, Arm] = field(default_factory=dict)
    """Arm name -> its pipeline config and variables (the arms should differ in one thing only)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds every arm runs with (substituted for {seed} in its stages)."""
    output_dir: str = "runs/ablation"
    """Parent folder of the `<arm>-seed<N>` runs."""
    jobs: int = 1
    """Runs at once. Above 1, each run is pinned to its own share of the cores and its console goes to
    `<run>/console.log`."""

    def __post_init__(self) -> None:
        if not self.arms:
            raise UsageError("--arms is required: arm name -> {config: PIPELINE.yaml, variables: {...}}")
        bad = [name for name in self.arms if not name or "/" in name or name.endswith(tuple("0123456789"))]
        if bad:
            raise UsageError(f"--arms: arm names must be non-empty folder names not ending in a digit, got {bad}")
        missing = [arm.config for arm in self.arms.values() if not Path(arm.config).is_file()]
        if missing:
            raise UsageError(f"--arms: no such pipeline config: {', '.join(missing)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise UsageError(f"--seeds must be distinct and at least one, got {self.seeds}")
        cores = len(os.sched_getaffinity(0))
        if not 1 <= self.jobs <= cores:
            raise UsageError(f"--jobs must be between 1 and the {cores} usable cores, got {self.jobs}")


class Run(NamedTuple):
    """One pipeline run of the ablation: its place in the order, arm, seed, folder and `astro pipeline` command."""

    number: int
    arm: str
    seed: int
    folder: Path
    command: list[str]


def core_shares(jobs: int) -> list[list[int]]:
    """The usable cores split into `jobs` equal shares of neighbouring cores (a remainder stays unused)."""
    cores = sorted(os.sched_getaffinity(0))
    size = len(cores) // jobs
    return [cores[i * size:(i + 1) * size] for i in range(jobs)]


def pinned_env(cores: list[int]) -> dict[str, str]:
    """Environment that binds a run's OpenMP threads (vLLM's engine and torch) to its cores."""
    return os.environ | {"VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cores)), "OMP_NUM_THREADS": str(len(cores))}


def launch(run: Run, cores: list[int] | None) -> subprocess.Popen:
    """Starts a run: on the console as it is (`cores` None), or pinned to `cores` with its console in a file."""
    if cores is None:
        return subprocess.Popen(run.command)
    run.folder.mkdir(parents=True, exist_ok=True)
    with (run.folder / "console.log").open("ab") as console:
        return subprocess.Popen(run.command, stdout=console, stderr=subprocess.STDOUT, env=pinned_env(cores),
                                preexec_fn=partial(os.sched_setaffinity, 0, cores))


def ablation_runs(args: AblationArgs) -> list[Run]:
    """Every arm for every seed, seeds outermost, each as an `astro pipeline` command with the arm's variables."""
    variables = {name: parse_dataclass(PipelineArgs, "astro pipeline", "", ["--config", arm.config]).variables
                 | arm.variables for name, arm in args.arms.items()}
    runs = []
    for number, (seed, arm) in enumerate(product(args.seeds, args.arms), start=1):
        folder = Path(args.output_dir) / f"{arm}-seed{seed}"
        command = [sys.executable, "-m", "astro_pl.cli", "pipeline", "--config", args.arms[arm].config,
                   "--seed", str(seed), "--output_dir", str(folder), "--variables", json.dumps(variables[arm])]
        runs.append(Run(number, arm, seed, folder, command))
    return runs


def run_ablation(args: AblationArgs, poll_s: float = 1.0) -> str:
    """Runs every arm for every seed, `args.jobs` at a time (finished stages are skipped), then writes and returns
    the comparison table; raises naming the runs that failed, after the others have ended."""
    runs, start = ablation_runs(args), time.perf_counter()
    pending, failed = list(runs), []
    shares = core_shares(args.jobs) if args.jobs > 1 else [None]
    running: dict[int, tuple[subprocess.Popen, Run]] = {}  # share index -> its run
    try:
        while pending or running:
            for share in [i for i in range(len(shares)) if i not in running][:len(pending)]:
                run = pending.pop(0)
                where = f" on cores {shares[share]}, console: {run.folder / 'console.log'}" if shares[share] else ""
                print(f"\n##### ablation run {run.number}/{len(runs)}: {run.arm}, seed {run.seed} -> {run.folder}"
                      f"{where} ({time.perf_counter() - start:.0f} s so far)", flush=True)
                running[share] = launch(run, shares[share]), run
            time.sleep(poll_s)
            for share, (process, run) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[share]
                failed += [run] if process.returncode else []
                print(f"##### ablation run {run.number}/{len(runs)} ({run.arm}, seed {run.seed}) "
                      f"{'failed' if process.returncode else 'finished'} ({time.perf_counter() - start:.0f} s so far)",
                      flush=True)
    finally:  # interrupted: the runs still going stop too (each resumes from its last finished stage)
        for process, _ in running.values():
            process.terminate()
            process.wait()
    table = compare_runs(args.output_dir) if any(Path(args.output_dir).glob("*/summary.json")) else ""
    if table:
        (Path(args.output_dir) / "comparison.md").write_text(table + "\n", encoding="utf-8")
    if failed:
        where = "console.log" if args.jobs > 1 else "logs/"
        raise UsageError(f"{len(failed)} of {len(runs)} ablation runs failed: "
                         + ", ".join(f"{run.folder} (see its {where})" for run in failed))
    return table


def main(argv: list[str] | None = None) -> int:
    args = parse_dataclass(AblationArgs, "astro ablation", __doc__.split("\n\n")[0], argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    print("\n" + run_ablation(args), flush=True)
    print(f"\ncomparison: {Path(args.output_dir) / 'comparison.md'}", flush=True)
    return 0
