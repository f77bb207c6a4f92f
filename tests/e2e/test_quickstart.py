"""The quickstart pipeline end to end, at toy size: the real configs/quickstart.yaml stages, each shrunk by
extra flags appended to its command (later flags win), run through `astro pipeline` as subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]

SHRINK = {
    "search": ["--limit", "12"],
    "model": ["--hidden_size", "64", "--num_attention_heads", "1", "--num_hidden_layers", "2",
              "--intermediate_size", "128"],
    "sft": ["--trainer.max_epochs", "1", "--trainer.max_steps", "3"],
    "rl": ["--trainer.max_steps", "2", "--model.init_args.sampling.max_tokens", "24", "--data.init_args.batch_size",
           "2", "--model.init_args.grpo.group_size", "2", "--model.init_args.grpo.dynamic_sampling", "false"],
}
EVAL_SHRINK = ["--task.init_args.num_test", "3", "--num_samples", "2", "--max_tokens", "24", "--pass_at", "[1, 2]",
               "--maj_at", "[2]"]


def test_quickstart_pipeline_runs_every_stage_and_reports(tmp_path):
    config = yaml.safe_load((REPO / "configs/quickstart.yaml").read_text())
    for stage in config["stages"]:
        stage["command"] += EVAL_SHRINK if stage["command"][0] == "eval" else SHRINK.get(stage["name"], [])
    small = tmp_path / "quickstart.yaml"
    small.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    run = subprocess.run([sys.executable, "-m", "astro_pl.cli", "pipeline", "--config", str(small),
                          "--output_dir", str(out), "--seed", "1"],
                         cwd=REPO, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["seed"] == 1
    assert list(summary["stages"]) == [s["name"] for s in config["stages"]]
    for name in ("untrained", "sft-eval", "rl-eval"):
        assert 0.0 <= summary["stages"][name]["accuracy"] <= 1.0
        assert summary["stages"][name]["mean_backtracks"] >= 0.0
    assert Path(summary["stages"]["search"]["artifacts"]["traces"]).stat().st_size > 0
    for stage in ("sft", "rl"):
        assert (Path(summary["stages"][stage]["artifacts"]["model"]) / "config.json").exists()
    assert "| rl-eval |" in run.stdout and "summary:" in run.stdout
