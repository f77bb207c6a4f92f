"""`astro ablation`: every arm for every seed through real `astro` subprocess stages, arms told apart by their
variables, then the comparison table written beside the runs."""

from __future__ import annotations

import json

import pytest
import yaml

from astro_pl.ablation import AblationArgs, Arm, run_ablation
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
