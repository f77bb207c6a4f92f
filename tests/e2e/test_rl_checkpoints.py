"""The backtracking analysis across RL training, end to end: a short RL fit exports the policy every N optimiser
steps, and `astro eval-checkpoints` evaluates those exports (plus the starting policy) into one table and plot."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from rl_helpers import EASY, rl_config, run_astro
from safetensors.torch import load_file

from astro_pl.modules.export import HFExport


def test_rl_exports_every_n_steps_then_eval_checkpoints_resumes(rl_policy_dir, tmp_path):
    config = rl_config(tmp_path, rl_policy_dir, steps=4, engine="hf", trainer={"limit_val_batches": 0})
    settings = yaml.safe_load(config.read_text())
    export = next(c for c in settings["trainer"]["callbacks"] if c["class_path"].endswith("HFExport"))
    export["init_args"]["every_n_steps"] = 2
    config.write_text(yaml.safe_dump(settings))
    result = run_astro("fit", "--config", str(config), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("hf*")) == ["hf", "hf-step2", "hf-step4"]
    steps = {name: json.loads((run / name / "export.json").read_text())["global_step"]
             for name in ("hf", "hf-step2", "hf-step4")}
    assert steps == {"hf": 4, "hf-step2": 2, "hf-step4": 4}
    weights = {name: load_file(run / name / "model.safetensors") for name in ("hf", "hf-step2", "hf-step4")}
    start = load_file(rl_policy_dir / "model.safetensors")
    assert any(not torch.equal(weights["hf-step2"][k], start[k]) for k in start)  # step 2 is trained ...
    assert any(not torch.equal(weights["hf-step2"][k], weights["hf-step4"][k]) for k in start)  # ... not final
    assert all(torch.equal(weights["hf"][k], weights["hf-step4"][k]) for k in start)  # the final export = step 4

    eval_config = tmp_path / "eval.yaml"
    eval_config.write_text(yaml.safe_dump({
        "engine": {"kind": "hf"}, "task": {"class_path": "astro_pl.tasks.ArithmeticTask",
                                           "init_args": {"num_test": 4, "test_seed": 3, **EASY}},
        "num_samples": 2, "temperature": 1.0, "top_p": 1.0, "max_tokens": 16, "pass_at": [1], "batch_size": 4}))
    out = tmp_path / "analysis"
    command = ("eval-checkpoints", "--eval_config", str(eval_config), "--folder", str(run),
               "--checkpoints", f"[{rl_policy_dir}]", "--steps", "[0]", "--out_dir", str(out))
    result = run_astro(*command)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    table = json.loads((out / "checkpoints.json").read_text())
    assert [(r["step"], r["benchmark"]) for r in table["rows"]] == [(0, "synthetic"), (2, "synthetic"),
                                                                    (4, "synthetic")]
    for row in table["rows"]:  # each row is its checkpoint's own evaluation
        summary = json.loads((out / f"step{row['step']}" / "summary.json").read_text())
        assert row["pass@1"] == summary["benchmarks"]["synthetic"]["pass@1"]
        assert row["mean_length"] == summary["benchmarks"]["synthetic"]["mean_length"]
        assert summary["settings"]["model"] == row["checkpoint"]
    assert table["rows"][0]["checkpoint"] == str(rl_policy_dir)
    assert table["pearson_r"]["synthetic"]["checkpoints"] == 3
    assert (out / "checkpoints.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 2 | synthetic |" in (out / "checkpoints.md").read_text()
    assert (out / "step2" / "backtracks.png").exists()  # the per-response plot of each evaluation stays
    # one engine took each checkpoint's weights in turn: step 4's samples are those of a fresh `astro eval` of it
    result = run_astro("eval", "--config", str(eval_config), "--model", str(run / "hf"),
                       "--out_dir", str(tmp_path / "e"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert (tmp_path / "e" / "samples.jsonl").read_text() == (out / "step4" / "samples.jsonl").read_text()

    # a rerun evaluates nothing again: every checkpoint's summary is there with the same settings
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("step*/samples.jsonl")}
    result = run_astro(*command)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert result.stdout.count("is done, skipped") == 3
    assert {p: p.stat().st_mtime_ns for p in out.glob("step*/samples.jsonl")} == stamps
    assert json.loads((out / "checkpoints.json").read_text()) == table

    # two worker processes (steps 0 and 4 in one, step 2 in the other) score every checkpoint as one process does
    parallel = tmp_path / "parallel"
    result = run_astro(*command[:-1], str(parallel), "--workers", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert json.loads((parallel / "checkpoints.json").read_text()) == table
    for step in (0, 2, 4):
        assert (parallel / f"step{step}" / "samples.jsonl").read_text() == \
            (out / f"step{step}" / "samples.jsonl").read_text()

    # a pipeline's own eval of the final model is read, not scored again
    again = tmp_path / "again"
    result = run_astro(*command[:-1], str(again), "--evaluated", f"[{tmp_path / 'e'}]")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert f"{run / 'hf'} was scored in {tmp_path / 'e'}" in result.stdout
    assert sorted(p.name for p in again.glob("step*")) == ["step0", "step2"]
    assert json.loads((again / "checkpoints.json").read_text())["rows"] == table["rows"]


def test_hf_export_interval_must_be_positive():
    with pytest.raises(ValueError, match="every_n_steps must be >= 1 or null, got 0"):
        HFExport(every_n_steps=0)
