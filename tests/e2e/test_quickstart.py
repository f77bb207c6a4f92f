"""The quickstart pipelines end to end, at toy size: the real stages of configs/graph_quickstart.yaml (what `make
quickstart` runs) and configs/quickstart.yaml (arithmetic), each shrunk by extra flags appended to its command
(later flags win), run through `astro pipeline` as subprocesses; the console stays short and free of library log
lines, and the run ends with its report.html."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

SHRINK = {
    "search": ["--limit", "12"],
    "model": ["--hidden_size", "64", "--num_attention_heads", "1", "--num_hidden_layers", "2",
              "--intermediate_size", "128"],
    "sft": ["--trainer.max_epochs", "1", "--trainer.max_steps", "3", "--trainer.log_every_n_steps", "1"],
    "rl": ["--trainer.max_steps", "2", "--trainer.limit_train_batches", "2", "--model.init_args.sampling.max_tokens",
           "24", "--data.init_args.batch_size", "2", "--model.init_args.grpo.group_size", "2",
           "--model.init_args.grpo.dynamic_sampling", "false"],
}
GRAPH_SHRINK = {"model": ["--num_attention_heads", "2", "--num_hidden_layers", "2"]}  # LFM2: a convolution, attention
# library log lines: vLLM's "INFO 11-30 ...", Python warnings ("UserWarning: ..."), W&B's "wandb: ...", c10's "[W1130"
LIBRARY_LINE = re.compile(r"\b(DEBUG|INFO|WARNING|WARN)\b|Warning:|^wandb:|^\[[WE]\d{4}|^\(\w+ pid=\d+\)")
EVAL_SHRINK = ["--task.init_args.num_test", "3", "--num_samples", "2", "--max_tokens", "24", "--pass_at", "[1, 2]",
               "--maj_at", "[2]"]


@pytest.mark.parametrize("name", ["graph_quickstart", "quickstart"])
def test_quickstart_pipeline_runs_every_stage_and_reports(tmp_path, name):
    config = yaml.safe_load((REPO / f"configs/{name}.yaml").read_text())
    shrink = SHRINK | (GRAPH_SHRINK if name == "graph_quickstart" else {})
    for stage in config["stages"]:
        stage["command"] += EVAL_SHRINK if stage["command"][0] == "eval" else shrink.get(stage["name"], [])
    small = tmp_path / "quickstart.yaml"
    small.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    run = subprocess.run([sys.executable, "-m", "astro_pl.cli", "pipeline", "--config", str(small),
                          "--output_dir", str(out), "--seed", "1"],
                         cwd=REPO, capture_output=True, timeout=900)
    # bytes: text mode would turn the progress line's "\r" redraws into line breaks
    console = (run.stdout + run.stderr).decode("utf-8", "replace")
    assert run.returncode == 0, console[-6000:]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["seed"] == 1
    assert list(summary["stages"]) == [s["name"] for s in config["stages"]]
    for stage in ("sft-eval", "rl-eval", *(["untrained"] if name == "quickstart" else [])):
        assert 0.0 <= summary["stages"][stage]["accuracy"] <= 1.0
        assert summary["stages"][stage]["mean_backtracks"] >= 0.0
    if name == "graph_quickstart":  # the task's own verdicts, and accuracy across the RL checkpoints
        assert set(summary["stages"]["sft-eval"]["task"]) >= {"first_move_correct", "recovered", "false_yes"}
        table = json.loads((out / "eval/checkpoints/checkpoints.json").read_text())
        # one rollout batch, trained on in 4 passes of 2 mini-batches (configs/graph/rl.yaml): 8 optimiser steps
        assert [row["step"] for row in table["rows"]] == [0, 8] and "recovered" in table["rows"][0]["task"]
    assert Path(summary["stages"]["search"]["artifacts"]["traces"]).stat().st_size > 0
    for stage in ("sft", "rl"):
        assert (Path(summary["stages"][stage]["artifacts"]["model"]) / "config.json").exists()
    assert "| rl-eval |" in console and "summary:" in console

    # per stage: the command, one progress line (redrawn with "\r"), the result; the rest is in the stage's log
    lines = console.split("\n")
    assert len(lines) < 100, console
    assert [line for line in lines if LIBRARY_LINE.search(line)] == []
    assert console.count("=== stage ") == len(config["stages"]) and "| step | reward |" in console
    assert re.search(r"\| step \| train/loss \|", console) and "Epoch 0: 100%" in console
    assert "INFO" not in (out / "logs/rl.log").read_text()  # vLLM logs warnings only, unless the user asks
    assert "Seed set to 1" in (out / "logs/sft.log").read_text()  # Lightning's messages go to the log

    # the training curves beside W&B's files, and the report that reads them
    assert "train/loss" in (out / "sft/metrics.jsonl").read_text()
    assert "train/engine_logp_gap" in (out / "rl/metrics.jsonl").read_text()
    report = (out / "report.html").read_text()
    assert f"report: {out / 'report.html'}" in console
    for title in ("Accuracy per stage", "Accuracy against backtracks", "sft: loss", "rl: reward", "rl: entropy"):
        assert title in report, title
    assert (out / "report_trees/tree-0.html").exists() and 'href="report_trees/tree-0.html"' in report
