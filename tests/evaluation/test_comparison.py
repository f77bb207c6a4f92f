"""The ablation's comparison: the margins as pure functions, then the tables from real run folders."""

from __future__ import annotations

import json

import pytest

from astro_pl.evaluation.comparison import arm_gap, compare_runs, sample_std, stage_change


def test_arm_gap_is_beyond_noise_only_past_twice_the_larger_std():
    wide, narrow = [0.60, 0.02, 0.71], [0.035, 0.029, 0.031]  # the weight-decay ablation's pass@1 after SFT
    margin = arm_gap(wide, narrow)
    assert margin.difference == pytest.approx(1.33 / 3 - 0.095 / 3)
    assert margin.bar == pytest.approx(2 * sample_std(wide))  # the larger std bounds it, not the narrow arm's
    assert not margin.beyond_noise  # ahead by 41 points, but the seeds spread by 37
    assert arm_gap([0.9, 0.95, 0.92], narrow).beyond_noise
    assert arm_gap(narrow, [0.9, 0.95, 0.92]).beyond_noise  # behind beyond noise is beyond noise too
    assert not arm_gap([0.9], [0.1]).beyond_noise  # one seed a side: no spread to judge by


def test_stage_change_pairs_seeds_and_judges_the_spread_of_the_changes():
    margin, changes = stage_change({0: 0.601, 1: 0.025, 2: 0.710}, {0: 0.637, 1: 0.021, 2: 0.725, 3: 0.5})
    assert changes == pytest.approx([0.036, -0.004, 0.015])  # seed 3 has no "before": left out
    assert margin.difference == pytest.approx(0.047 / 3) and margin.seeds == 3
    assert margin.bar == pytest.approx(2 * sample_std(changes)) and not margin.beyond_noise
    assert stage_change({0: 0.1, 1: 0.2, 2: 0.3}, {0: 0.31, 1: 0.4, 2: 0.52})[0].beyond_noise
    with pytest.raises(ValueError, match="no seed has both"):
        stage_change({0: 0.1}, {1: 0.2})


def test_compare_runs_gives_mean_and_spread_per_arm(tmp_path):
    def write(name, seed, sft, rl, task=None):
        (tmp_path / name).mkdir()
        common = {"truncation_rate": 0.5, "grounded_backtracks": None, "mean_length": 10.0}
        stages = {"search": {"seconds": 1.0},
                  "sft-eval": {"accuracy": sft, "mean_backtracks": 1.0, **common, **({"task": task} if task else {})},
                  "rl-eval": {"accuracy": rl, "mean_backtracks": 2.0, **common}}
        (tmp_path / name / "summary.json").write_text(json.dumps({"seed": seed, "stages": stages}))

    write("astro-seed0", 0, 0.10, 0.20, {"recovered": 0.5})
    write("astro-seed1", 1, 0.30, 0.40, {"recovered": None})
    write("direct-seed0", 0, 0.05, 0.10)
    table = compare_runs(tmp_path)
    assert table.splitlines()[0].endswith("| grounded (%) | length | recovered |")
    # astro sft: mean 20.0, sample std sqrt(((10-20)^2 + (30-20)^2) / 1) = 14.1; recovered only where not None
    assert "| astro | sft-eval | 0, 1 | 20.0 ± 14.1 | - | 50.0 ± 0.0 | 1.00 ± 0.00 | - | 10.0 ± 0.0 | 0.50 |" in table
    assert "| astro | rl-eval | 0, 1 | 30.0 ± 14.1 |" in table
    assert "| direct | sft-eval | 0 | 5.0 | - | 50.0 | 1.00 | - | 10.0 | - |" in table
    (tmp_path / "aaa-seed0").mkdir()  # an unfinished run sorts first; the other runs' stages still show
    (tmp_path / "aaa-seed0/summary.json").write_text(json.dumps(
        {"seed": 0, "stages": {"sft-eval": {"accuracy": 0.5, "mean_backtracks": 0.0}}}))
    table = compare_runs(tmp_path)
    assert "| aaa | sft-eval | 0 | 50.0 | - | - | 0.00 |" in table and "| aaa | rl-eval" not in table
    with pytest.raises(ValueError, match="no <arm>-seed<N>"):
        compare_runs(tmp_path / "astro-seed0")
    text = compare_runs(tmp_path)
    assert "| astro | sft-eval | 10.0 | 30.0 |" in text and "| direct | sft-eval | 5.0 | - |" in text  # per seed
    assert "- sft-eval: aaa - astro = +30.0 (per seed +40.0);" in text
    assert "- rl-eval: astro - direct = +20.0 (per seed +10.0); twice the larger seed std 28.3: one seed" in text
    assert "- astro, sft-eval -> rl-eval: +10.0 (per seed +10.0, +10.0); twice its std 0.0: beyond noise" in text
    assert "- direct, sft-eval -> rl-eval: +5.0 (per seed +5.0); twice its std 0.0: one seed" in text


def test_compare_runs_lists_each_runs_restart_verdicts_from_its_stage_logs(tmp_path):
    astro_log = ("Epoch 0: 10%|#| 20/200 [loss=5.3]\r\nPlateauRestart: train/loss 0.291 (bar 0.22) at step 1750 of "
                 "attempt 1; restart 1 of 3\nEpoch 0: 11%\r\n"
                 "PlateauRestart: attempt 2 kept: train/loss 0.116 (bar 0.22) at step 1750 of it\n")
    for name, log in [("astro-seed0", astro_log), ("direct-seed0", "no restart judged here\n")]:
        (tmp_path / name / "logs").mkdir(parents=True)
        (tmp_path / name / "logs" / "sft.log").write_text(log)
        (tmp_path / name / "summary.json").write_text(json.dumps(
            {"seed": 0, "stages": {"sft-eval": {"accuracy": 0.5, "mean_backtracks": 0.0}}}))
    text = compare_runs(tmp_path)
    assert text.endswith("\n- astro-seed0, sft: train/loss 0.291 (bar 0.22) at step 1750 of attempt 1; restart 1 of 3; "
                         "attempt 2 kept: train/loss 0.116 (bar 0.22) at step 1750 of it")
    assert "direct-seed0, sft" not in text
    (tmp_path / "astro-seed0" / "logs" / "sft.log").write_text("")
    assert "restarts from a fresh initialisation" not in compare_runs(tmp_path)  # no verdicts: no section



def test_compare_runs_names_the_machines_the_runs_ran_on(tmp_path):
    runs = {"astro-seed0": ["EPYC (AVX2), torch 2.13.0", "EPYC (AVX2), torch 2.13.0"],
            "astro-seed1": ["EPYC (AVX2), torch 2.13.0", "EPYC (AVX512), torch 2.13.0"],  # resumed elsewhere
            "direct-seed0": [None, None]}  # written before stages recorded their machine
    for name, machines in runs.items():
        stages = {stage: {"accuracy": 0.5, "mean_backtracks": 0.0, **({"machine": m} if m else {})}
                  for stage, m in zip(["sft-eval", "rl-eval"], machines, strict=True)}
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"seed": int(name[-1]), "stages": stages}))
    text = compare_runs(tmp_path)
    assert text.endswith("\n- EPYC (AVX2), torch 2.13.0: astro-seed0, astro-seed1\n"
                         "- EPYC (AVX512), torch 2.13.0: astro-seed1")
    (tmp_path / "astro-seed0/summary.json").unlink()
    (tmp_path / "astro-seed1/summary.json").unlink()
    assert "machines the runs" not in compare_runs(tmp_path)  # none recorded: no section
