"""`astro fit` as a user runs it: --print_config round trip, W&B offline read-back, SIGKILL + bit-exact resume
into the same W&B run, and FSDP2 on 2 CPU processes (with a checkpoint resume) matching 1 process."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from scale_helpers import ASTRO, REPO, run, sft_config, wandb_run, wandb_run_files

from astro_pl.evaluation.html_report import metric_curves, read_jsonl
from tests.datamodules.test_traces import write_traces

STEPS = 8


def config_yaml(root: Path, model: Path, data: Path, *, steps: int = STEPS,
                lr_schedule: str = "warmup_ratio: 0.25", **kwargs) -> str:
    return sft_config(root, model, data, steps=steps, lr=3e-3, lr_schedule=lr_schedule, export=True, **kwargs)


def astro(*args: str) -> subprocess.CompletedProcess:
    return run([*ASTRO, *args])


def wandb_runs(root: Path) -> list[dict]:
    return [wandb_run(path) for path in wandb_run_files(root)]


def final_weights(root: Path) -> dict[str, torch.Tensor]:
    return load_file(str(root / "hf" / "model.safetensors"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_traces(tmp_path_factory.mktemp("data") / "traces.jsonl", n=24)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir, data) -> Path:
    """An uninterrupted run from the YAML that `--print_config` printed."""
    root = tmp_path_factory.mktemp("reference")
    (root / "base.yaml").write_text(config_yaml(root, tiny_model_dir, data, name="reference"))
    printed = astro("fit", "--config", str(root / "base.yaml"), "--print_config").stdout
    assert "class_path: astro_pl.modules.sft.SFTModule" in printed and "use_distributed_sampler: false" in printed
    (root / "printed.yaml").write_text(printed)
    astro("fit", "--config", str(root / "printed.yaml"))
    return root


def test_printed_config_runs_and_wandb_holds_metrics_and_config(reference):
    [run] = wandb_runs(reference)
    assert run["state"] == "finished" and run["name"] == "reference"
    summary = run["summary"]
    for key in ("train/loss", "train/lr", "train/tokens_per_sec", "train/padding_fraction", "train/grad_norm"):
        assert key in summary, key
    assert summary["trainer/global_step"] == STEPS - 1 and summary["data/train/examples"] == 24
    assert 0 <= summary["train/padding_fraction"] < 1 and summary["train/tokens_per_sec"] > 0
    assert run["config"]["optim"]["lr"] == 3.0e-3 and run["config"]["max_seq_len"] == 128
    assert (reference / "hf" / "config.json").exists() and (reference / "hf" / "tokenizer.json").exists()


def test_sigkill_then_resume_from_last_is_bit_exact_and_continues_the_wandb_run(reference, tiny_model_dir, data,
                                                                               tmp_path):
    (tmp_path / "c.yaml").write_text(config_yaml(tmp_path, tiny_model_dir, data, name="killed"))
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*ASTRO, "fit", "--config", str(tmp_path / "c.yaml")], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "ckpt" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = torch.load(last, weights_only=False, map_location="cpu")["global_step"]
    assert 0 < killed_at < STEPS and not (tmp_path / "hf").exists()

    astro("fit", "--config", str(tmp_path / "c.yaml"), "--ckpt_path", "last")
    resumed, expected = final_weights(tmp_path), final_weights(reference)
    assert resumed.keys() == expected.keys()
    assert all(torch.equal(resumed[k], expected[k]) for k in expected), "resumed weights differ from uninterrupted"
    # both processes wrote to the W&B run whose id the checkpoint holds (the killed one's records may be torn)
    run_dirs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    run_id = torch.load(last, weights_only=False, map_location="cpu")["wandb_run_id"]
    assert len(run_dirs) == 2 and all(d.name.endswith(f"-{run_id}") for d in run_dirs)
    final = wandb_runs(tmp_path)[-1]
    assert final["run_id"] == run_id and final["summary"]["trainer/global_step"] == STEPS - 1
    # metrics.jsonl holds the killed run's steps, then the resumed run's from its checkpoint on (later lines win)
    losses = metric_curves(read_jsonl(tmp_path / "metrics.jsonl"))["train/loss"]
    assert len(losses) == STEPS and losses == metric_curves(read_jsonl(reference / "metrics.jsonl"))["train/loss"]


def test_fsdp2_on_two_processes_with_resume_matches_one_process(tiny_model_dir, tmp_path):
    # enough rows that 4 steps of 4 rows stay inside epoch 0 (an odd last global batch is wrapped on 2 ranks)
    data = write_traces(tmp_path / "traces.jsonl", n=96)
    # constant lr: the schedule must not depend on max_steps across the resume; a large eps keeps AdamW's update
    # linear in tiny gradients (with eps ~ 0 a 1e-9 gradient still moves a weight by +-lr, so rounding flips signs)
    constant = "warmup_ratio: 0.0, min_lr_ratio: 1.0, eps: 1.0e-3"
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    (one / "c.yaml").write_text(config_yaml(one, tiny_model_dir, data, steps=4, batch_size=4, lr_schedule=constant))
    astro("fit", "--config", str(one / "c.yaml"))
    (two / "c.yaml").write_text(config_yaml(two, tiny_model_dir, data, steps=2, batch_size=2, devices=2,
                                            lr_schedule=constant))
    astro("fit", "--config", str(two / "c.yaml"))
    assert (two / "ckpt" / "last.ckpt" / "meta.pt").exists()  # a sharded (distributed) checkpoint directory
    astro("fit", "--config", str(two / "c.yaml"), "--trainer.max_steps", "4", "--ckpt_path", "last")
    a, b = final_weights(one), final_weights(two)
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), (k, (a[k] - b[k]).abs().max().item())
    assert any(not torch.allclose(a[k], base[k], atol=1e-3) for k in a)  # training moved the weights


@pytest.mark.parametrize("name", ["synthetic", "llama3_8b"])
def test_sft_configs_parse(name, capsys):
    from astro_pl.training_cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "configs" / "sft" / f"{name}.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "astro_pl.modules.sft.SFTModule" in printed and "astro_pl.datamodules.traces.TraceDataModule" in printed


def test_validate_and_test_subcommands_report_the_loss_of_a_checkpoint(reference, data, capsys):
    from astro_pl.training_cli import main

    ckpt = str(reference / "ckpt" / "last.ckpt")
    common = ["--config", str(reference / "printed.yaml"), "--trainer.logger", "false", "--ckpt_path", ckpt]
    main(["validate", *common, "--data.init_args.val_file", str(data)])
    main(["test", *common, "--data.init_args.test_file", str(data)])
    out = capsys.readouterr().out
    assert "val/loss" in out and "test/loss" in out
