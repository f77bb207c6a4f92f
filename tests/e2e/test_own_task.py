"""A task and a reward from outside the package (docs/examples/digit_sum.py), plugged into `astro eval` and
`astro fit` (RL) by YAML and flags only, as the README shows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "docs" / "examples"


def astro(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLES), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "astro_pl.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


def test_own_task_in_eval_and_own_reward_in_rl(tiny_model_dir, tmp_path):
    out = tmp_path / "eval"
    run = astro("eval", "--task", "digit_sum.DigitSumTask", "--task.init_args.num_test", "3", "--model",
                str(tiny_model_dir), "--engine.kind", "hf", "--num_samples", "2", "--max_tokens", "8",
                "--out_dir", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmarks"]["digit_sum"]["num_problems"] == 3
    assert summary["settings"]["task"]["class_path"] == "digit_sum.DigitSumTask"
    first = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    assert first["problem_id"] == "test-0" and first["gold"].isdigit()

    root = tmp_path / "rl"
    run = astro("fit", "--config", str(EXAMPLES / "digit_sum_rl.yaml"), "--model.init_args.model_path",
                str(tiny_model_dir), "--trainer.default_root_dir", str(root),
                "--trainer.logger.init_args.save_dir", str(root))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    run_file = next((root / "wandb" / "latest-run").glob("*.wandb"))
    inspect = subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--summary", "--json",
                              str(run_file)], capture_output=True, text=True, timeout=120, check=True)
    logged = json.loads(inspect.stdout)["summary"]
    # each reward under its own name; the random model's long answers cost brevity, and its total is the weighted sum
    assert logged["reward/correct"] == -1.0 and logged["reward/brevity"] <= 0.0
    assert abs(logged["reward/mean"] - (logged["reward/correct"] + 0.5 * logged["reward/brevity"])) < 1e-6
