"""`astro ablation`: every arm for every seed through real `astro` subprocess stages, arms told apart by their
variables, then the comparison table written beside the runs."""

from __future__ import annotations

import json
import os
import sys

import pytest
import yaml

from astro_pl.ablation import AblationArgs, Arm, Run, core_shares, launch, run_ablation
from astro_pl.errors import UsageError


def eval_summary(path, accuracy: float, recovered: float | None) -> str:
    scores = {"pass@1": accuracy, "truncation_rate": 0.0, "pass@1_finished": accuracy, "mean_backtracks": 1.0,
              "grounded_backtracks": 1.0, "mean_length": 12.0, "task": {"recovered": recovered}}
    path.write_text(json.dumps({"benchmarks": {"graph": scores}}))
    return str(path)


def test_ablation_runs_each_arm_and_seed_and_compares(tmp_path, capsys):
    # the stage is a real `astro` command; which summary it "produced" is the arm's variable
    pipeline = {"stages": [{"name": "sft-eval", "command": ["--help"], "summary": "{result}"}],
                "variables": {"result": "unset"}}
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(pipeline))
    arms = {"direct": Arm(str(config), {"result": eval_summary(tmp_path / "d.json", 0.25, None)}),
            "astro": Arm(str(config), {"result": eval_summary(tmp_path / "a.json", 0.75, 0.5)})}
    table = run_ablation(AblationArgs(arms=arms, seeds=[0, 1], output_dir=str(tmp_path / "runs")))
    assert sorted(p.name for p in (tmp_path / "runs").iterdir() if p.is_dir()) == [
        "astro-seed0", "astro-seed1", "direct-seed0", "direct-seed1"]
    assert json.loads((tmp_path / "runs/astro-seed1/summary.json").read_text())["seed"] == 1
    assert "| direct | sft-eval | 0, 1 | 25.0 ± 0.0 |" in table and "| astro | sft-eval | 0, 1 | 75.0 ± 0.0 |" in table
    assert table.splitlines()[0].endswith("| recovered |") and table.splitlines()[2].endswith("| 0.50 ± 0.00 |")
    assert (tmp_path / "runs/comparison.md").read_text() == table + "\n"
    assert (tmp_path / "runs/astro-seed0/report.html").exists()
    assert "ablation run 4/4: astro, seed 1" in capsys.readouterr().out


def test_parallel_runs_are_pinned_and_a_failed_run_is_named_after_the_others(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"stages": [{"name": "sft-eval", "command": ["--help"], "summary": "{result}"}]}))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"stages": [{"name": "sft", "command": ["no-such-command"]}]}))
    arms = {"astro": Arm(str(good), {"result": eval_summary(tmp_path / "a.json", 0.5, None)}), "broken": Arm(str(bad))}
    with pytest.raises(UsageError, match=r"2 of 4 ablation runs failed: .*broken-seed0 \(see its console.log\), "
                                         r".*broken-seed1 \(see its console.log\)$") as failure:
        run_ablation(AblationArgs(arms=arms, seeds=[0, 1], output_dir=str(tmp_path / "runs"), jobs=2), poll_s=0.1)
    assert "astro-seed" not in str(failure.value)
    out = capsys.readouterr().out
    assert "on cores [0]" in out and "on cores [1]" in out  # two at once, one core each
    for seed in (0, 1):  # the working arm finished whatever the broken one did, and is in the table
        assert json.loads((tmp_path / f"runs/astro-seed{seed}/summary.json").read_text())["seed"] == seed
        assert "no-such-command" in (tmp_path / f"runs/broken-seed{seed}/console.log").read_text()
    assert "| astro | sft-eval | 0, 1 | 50.0 ± 0.0 |" in (tmp_path / "runs/comparison.md").read_text()


def test_a_pinned_run_sees_only_its_cores_and_binds_its_threads_there(tmp_path):
    cores = core_shares(2)[1]
    show = ("import os; print(','.join(map(str, sorted(os.sched_getaffinity(0)))), os.environ['OMP_NUM_THREADS'], "
            "os.environ['VLLM_CPU_OMP_THREADS_BIND'])")
    run = Run(1, "astro", 0, tmp_path / "run", [sys.executable, "-c", show])
    assert launch(run, cores).wait() == 0
    assert (tmp_path / "run/console.log").read_text().split() == [
        ",".join(map(str, cores)), str(len(cores)), ",".join(map(str, cores))]
    assert sorted(os.sched_getaffinity(0)) != cores  # the parent keeps every core


def test_ablation_refuses_bad_arms(tmp_path):
    with pytest.raises(UsageError, match="--arms is required"):
        AblationArgs()
    with pytest.raises(UsageError, match="no such pipeline config: nope.yaml"):
        AblationArgs(arms={"direct": Arm("nope.yaml")})
    config = tmp_path / "p.yaml"
    config.write_text("stages: []\n")
    with pytest.raises(UsageError, match="not ending in a digit"):
        AblationArgs(arms={"arm2": Arm(str(config))})
    with pytest.raises(UsageError, match="--seeds must be distinct"):
        AblationArgs(arms={"a": Arm(str(config))}, seeds=[0, 0])
    with pytest.raises(UsageError, match="--jobs must be between 1 and the"):
        AblationArgs(arms={"a": Arm(str(config))}, jobs=len(os.sched_getaffinity(0)) + 1)
