"""`astro eval-checkpoints`, its pure parts: steps of checkpoints, Pearson r across them, the table."""

from __future__ import annotations

import json

import pytest

from astro_pl.evaluation.checkpoints import (
    CheckpointEvalArgs,
    across_checkpoints,
    checkpoint_step,
    eval_args_for,
    find_checkpoints,
    markdown,
    pearson,
    plot,
)


def test_pearson_hand_values():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # x = 0, 1, 2, 3; y = 0, 1, 1, 0: covariance 0 -> r = 0
    assert pearson([0, 1, 2, 3], [0, 1, 1, 0]) == pytest.approx(0.0)
    # x = 1, 2, 3; y = 1, 3, 2: dx = -1, 0, 1; dy = -1, 1, 0 -> r = 1 / (sqrt(2) * sqrt(2)) = 0.5
    assert pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert pearson([1, 2, 3], [5, 5, 5]) is None and pearson([1], [2]) is None


def summary(**benchmarks):
    return {"benchmarks": {name: {"pass@1": acc, "mean_backtracks": bt, "mean_length": length,
                                  "grounded_backtracks": grounded, "maj@4": 0.0}
                           for name, (acc, bt, length, grounded) in benchmarks.items()}}


def test_table_across_checkpoints():
    summaries = [(0, "sft", summary(math=(0.1, 1.0, 100.0, 0.5), aime=(0.0, 1.0, 200.0, None))),
                 (10, "hf-step10", summary(math=(0.2, 2.0, 90.0, 0.75), aime=(0.0, 2.0, 250.0, 1.0))),
                 (20, "hf-step20", summary(math=(0.3, 3.0, 120.0, 1.0), aime=(0.1, 2.0, 300.0, 1.0)))]
    table = across_checkpoints(summaries)
    assert [(r["step"], r["benchmark"]) for r in table["rows"]] == [(0, "math"), (0, "aime"), (10, "math"),
                                                                    (10, "aime"), (20, "math"), (20, "aime")]
    assert table["rows"][2] == {"step": 10, "checkpoint": "hf-step10", "benchmark": "math", "pass@1": 0.2,
                                "mean_backtracks": 2.0, "mean_length": 90.0, "grounded_backtracks": 0.75}
    math = table["pearson_r"]["math"]
    assert math["checkpoints"] == 3 and math["accuracy_vs_backtracks"] == pytest.approx(1.0)
    # accuracy 0.1, 0.2, 0.3 against length 100, 90, 120: dx = -1, 0, 1; dy = -3.33, -13.33, 16.67
    # r = (3.33 + 16.67) / (sqrt(2) * sqrt(11.11 + 177.78 + 277.78)) = 20 / (1.4142 * 21.602) = 0.6547
    assert math["accuracy_vs_length"] == pytest.approx(0.6547, abs=1e-4)
    # aime accuracy 0, 0, 0.1 against backtracks 1, 2, 2 -> r = 0.5; length 200, 250, 300 -> r = 0.866
    assert table["pearson_r"]["aime"]["accuracy_vs_backtracks"] == pytest.approx(0.5)
    assert table["pearson_r"]["aime"]["accuracy_vs_length"] == pytest.approx(0.8660, abs=1e-4)
    text = markdown(table).splitlines()
    assert text[0] == "| step | benchmark | pass@1 | backtracks / response | grounded | mean length |"
    assert text[2] == "| 0 | math | 10.0 | 1.00 | 50% | 100.0 |"
    assert text[3] == "| 0 | aime | 0.0 | 1.00 | n/a | 200.0 |"
    assert text[-2] == "Pearson r across 3 checkpoints, math: accuracy vs backtracks 1.00, accuracy vs length 0.65"
    json.dumps(table, allow_nan=False)


def test_plot_is_a_png(tmp_path):
    table = across_checkpoints([(0, "a", summary(math=(0.1, 1.0, 100.0, None))),
                                (5, "b", summary(math=(0.2, 1.5, 110.0, 0.5)))])
    data = plot(table, tmp_path / "p.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_steps_from_export_json_or_name(tmp_path):
    export = tmp_path / "hf"
    export.mkdir()
    (export / "export.json").write_text('{"global_step": 24}')
    assert checkpoint_step(export) == 24
    assert checkpoint_step(tmp_path / "hf-step8") == 8
    assert checkpoint_step(tmp_path / "epoch=0-step=12.ckpt") == 12
    with pytest.raises(ValueError, match="give --steps"):
        checkpoint_step(tmp_path / "final")
    (export / "export.json").write_text('{"step": 3}')
    with pytest.raises(ValueError, match="export.json: no integer 'global_step'"):
        checkpoint_step(export)


def test_find_checkpoints_in_a_folder_and_a_list(tmp_path):
    run = tmp_path / "run"
    for name, step in (("hf", 4), ("hf-step2", 2), ("hf-step4", 4)):
        (run / name).mkdir(parents=True)
        (run / name / "export.json").write_text(json.dumps({"global_step": step}))
    (run / "checkpoints").mkdir()  # not an export: left out
    sft = tmp_path / "sft"
    sft.mkdir()
    found = find_checkpoints(CheckpointEvalArgs(eval_config="e.yaml", checkpoints=[str(sft)], steps=[0],
                                                folder=str(run)))
    assert found == [(0, sft), (2, run / "hf-step2"), (4, run / "hf")]  # hf and hf-step4: one step, kept once
    with pytest.raises(ValueError, match="does not exist"):
        find_checkpoints(CheckpointEvalArgs(eval_config="e.yaml", checkpoints=[str(tmp_path / "nope")], steps=[1]))
    with pytest.raises(ValueError, match="no HF export"):
        find_checkpoints(CheckpointEvalArgs(eval_config="e.yaml", folder=str(sft)))
    with pytest.raises(ValueError, match="one step per checkpoint"):
        CheckpointEvalArgs(eval_config="e.yaml", checkpoints=["a", "b"], steps=[1])
    with pytest.raises(ValueError, match="--checkpoints and/or --folder"):
        CheckpointEvalArgs(eval_config="e.yaml")


def test_eval_overrides_apply_after_the_eval_config(tmp_path):
    args = CheckpointEvalArgs(eval_config="configs/graph/eval.yaml", checkpoints=["m"], steps=[0],
                              eval_overrides=["--task.init_args.arms", "4", "--max_tokens", "64"])
    eval_args = eval_args_for(args, tmp_path / "hf-step8", tmp_path / "step8")
    assert (eval_args.task.shape["arms"], eval_args.max_tokens, eval_args.temperature) == (4, 64, 0.6)
    assert (eval_args.model, eval_args.out_dir) == (str(tmp_path / "hf-step8"), str(tmp_path / "step8"))
