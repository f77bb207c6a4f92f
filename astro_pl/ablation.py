"""`astro ablation`: one pipeline config per arm, run for every seed, then the side-by-side comparison.

Runs go to `<output_dir>/<arm>-seed<N>`, seeds outermost (after the first seed every arm has a result), each an
ordinary `astro pipeline` run: resumable stage by stage, and any one of them can be rerun by hand. The comparison
(`astro pipeline --compare <output_dir>`) is printed and written to `<output_dir>/comparison.md` once every run is
done.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

from astro_pl.errors import UsageError
from astro_pl.evaluation.html_report import write_run_report
from astro_pl.options import parse_dataclass
from astro_pl.pipeline import PipelineArgs, compare_runs, run_pipeline


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


def run_ablation(args: AblationArgs) -> str:
    """Every arm for every seed (finished stages are skipped), then the comparison table."""
    pipelines = {name: parse_dataclass(PipelineArgs, "astro pipeline", "", ["--config", arm.config])
                 for name, arm in args.arms.items()}
    total, start = len(args.seeds) * len(pipelines), time.perf_counter()
    for i, (seed, arm) in enumerate(product(args.seeds, pipelines), start=1):
        run_dir = Path(args.output_dir) / f"{arm}-seed{seed}"
        print(f"\n##### ablation run {i}/{total}: {arm}, seed {seed} -> {run_dir} "
              f"({time.perf_counter() - start:.0f} s so far)", flush=True)
        pipeline = pipelines[arm]
        run_pipeline(pipeline.stages, str(run_dir), seed, variables=pipeline.variables | args.arms[arm].variables)
        write_run_report(str(run_dir))
    table = compare_runs(args.output_dir)
    (Path(args.output_dir) / "comparison.md").write_text(table + "\n", encoding="utf-8")
    return table


def main(argv: list[str] | None = None) -> int:
    args = parse_dataclass(AblationArgs, "astro ablation", __doc__.split("\n\n")[0], argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    print("\n" + run_ablation(args), flush=True)
    print(f"\ncomparison: {Path(args.output_dir) / 'comparison.md'}", flush=True)
    return 0
