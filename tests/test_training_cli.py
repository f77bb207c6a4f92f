"""`astro fit` plumbing: the metrics file beside W&B, W&B started without its spurious warnings, the final table."""

from __future__ import annotations

import json

from lightning.pytorch.loggers import WandbLogger

from astro_pl.modules.metrics_file import MetricsFileLogger
from astro_pl.training_cli import format_final_metrics, prepare_wandb


def test_metrics_file_appends_rows_and_writes_non_finite_as_null(tmp_path):
    logger = MetricsFileLogger(str(tmp_path / "run"))
    logger.log_metrics({"train/loss": 2.5, "epoch": 0}, step=0)
    logger.log_metrics({"train/loss": float("nan"), "reward/mean": float("-inf")}, step=1)
    MetricsFileLogger(str(tmp_path / "run")).log_metrics({"train/loss": 1.0}, step=1)  # a resumed run appends
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 0, "train/loss": 2.5, "epoch": 0.0}, {"step": 1, "train/loss": None, "reward/mean": None},
                    {"step": 1, "train/loss": 1.0}]


def test_metrics_file_takes_the_version_of_the_logger_beside_it(tmp_path):
    wandb = WandbLogger(save_dir=str(tmp_path), offline=True, id="abc123")
    assert MetricsFileLogger(str(tmp_path), run=wandb).version == "abc123"
    assert MetricsFileLogger(str(tmp_path)).version is None


def test_wandb_starts_without_anonymous_and_git_root_warnings(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "false")  # show what W&B prints, so the test can see the warnings
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(save_dir=str(tmp_path / "not" / "yet"), offline=True, project="astro-test")
    prepare_wandb(logger)
    assert "anonymous" not in logger._wandb_init and (tmp_path / "not/yet").is_dir()
    logger.experiment.log({"x": 1.0})
    logger.experiment.finish()
    printed = capfd.readouterr()
    assert "wandb" in printed.err + printed.out  # W&B did speak (not silenced) ...
    assert "anonymous" not in printed.err + printed.out and "git root" not in printed.err + printed.out  # ... cleanly


def test_final_metrics_table():
    assert format_final_metrics(24, {"reward": -0.25, "val/accuracy": 0.123456}) == (
        "| step | reward | val/accuracy |\n|---:|---:|---:|\n| 24 | -0.25 | 0.1235 |")
