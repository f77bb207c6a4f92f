"""RL end to end with vLLM: `astro fit` on two CPU processes (FSDP2, one engine per rank), and a resume that
draws the same prompts and gets the same rewards as the uninterrupted run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch
from rl_helpers import EASY, rl_config, run_astro
from safetensors.torch import load_file

from astro_pl.datamodules.prompts import PromptDataModule
from astro_pl.modules.rl import GRPOArgs, RLModule
from astro_pl.rollout.base import SamplingArgs
from astro_pl.tasks import ArithmeticTask


def wandb_summary(root: Path) -> dict:
    run_file = next((root / "wandb" / "latest-run").glob("*.wandb"))
    out = subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--summary", "--json",
                          str(run_file)], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)["summary"]


def test_fit_rl_two_processes_fsdp_vllm(rl_policy_dir, tmp_path):
    # skipping zero-advantage sequences: ranks then have different numbers of rows to run, and must still run
    # the same number of passes (fillers), or FSDP's collectives would hang; syncing one layer per bucket, as an
    # 8B model does, so the log-prob gap below also checks vLLM's layer-by-layer reload from gathered shards
    config = rl_config(tmp_path, rl_policy_dir, steps=2, devices=2, grpo={"skip_zero_advantage": True},
                       model={"sync_bucket_mb": 1e-6})
    result = run_astro("fit", "--config", str(config), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    meta = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt" / "meta.pt", weights_only=False)
    # 2 steps x 2 prompts x 2 ranks drawn from the shared stream: each rank took its own share
    assert meta["PromptDataModule"] == {"position": 8}
    assert meta["rl_state"]["rollout_step"] == 2 and meta["global_step"] == 2
    summary = wandb_summary(tmp_path / "run")
    for key in ("reward/mean", "reward/correct", "reward/accuracy", "rollout/tokens_per_s",
                "rollout/groups_dropped_frac", "rollout/truncated_frac", "rollout/backtracks", "train/clip_frac",
                "train/entropy", "train/computed_frac", "time/sync_s", "time/train_s", "val/accuracy"):
        assert key in summary, key
    assert summary["time/sync_s"] > 0  # the second step synced the updated policy
    # ... and the engine sampled from it: its log-probs of the sampled tokens equal the trainer's
    assert summary["train/engine_logp_gap"] < 0.01
    exported = load_file(tmp_path / "run" / "hf" / "model.safetensors")
    base = load_file(rl_policy_dir / "model.safetensors")
    assert exported.keys() == base.keys()
    assert any(not torch.equal(exported[k], base[k]) for k in base)  # the policy moved


def test_two_ranks_sharing_one_engine_submit_both_shares(rl_policy_dir, tmp_path):
    # the layout of a tensor-parallel vLLM engine under external_launcher, here with the transformers engine
    config = rl_config(tmp_path, rl_policy_dir, steps=1, devices=2, engine="hf", model={"engine_group_size": 2},
                       trainer={"limit_val_batches": 0})
    result = run_astro("fit", "--config", str(config), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    summary = wandb_summary(tmp_path / "run")
    assert summary["rollout/engine_prompts"] == 4  # 2 prompts per rank, both ranks' prompts per engine call
    meta = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt" / "meta.pt", weights_only=False)
    assert meta["PromptDataModule"] == {"position": 4} and meta["global_step"] == 1


def _run(model_dir, root, engine, steps, ckpt_path=None):
    module = RLModule(str(model_dir), sampling=SamplingArgs(max_tokens=16, temperature=1.0),
                      grpo=GRPOArgs(group_size=4, micro_batch_size=8, epochs=1, mini_batches=2))
    module.attach_engine(engine)
    data = PromptDataModule(ArithmeticTask(num_train=64, **EASY), batch_size=2)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, default_root_dir=str(root), logger=False,
                        enable_progress_bar=False, limit_val_batches=0, enable_model_summary=False)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    groups = module.last_rollout.groups
    return [g.prompt_ids for g in groups], [(g.rewards, [c.token_ids for c in g.completions]) for g in groups], module


def test_resume_with_vllm_same_prompts_and_rewards(rl_policy_dir, tiny_model_dir, tmp_path, vllm_engine):
    """The session engine holds the tiny model's weights; the module syncs its own policy in before rolling out."""
    try:
        # 2 optimiser steps per rollout: 6 steps = 3 rollouts; the resumed run stops after 2 rollouts and goes on
        prompts_a, rewards_a, _ = _run(rl_policy_dir, tmp_path / "a", vllm_engine, 6)
        _run(rl_policy_dir, tmp_path / "b", vllm_engine, 4)
        ckpt = next((tmp_path / "b" / "checkpoints").glob("*.ckpt"))
        prompts_b, rewards_b, module = _run(rl_policy_dir, tmp_path / "b", vllm_engine, 6, ckpt_path=str(ckpt))
        assert module.rollout_step == 3
        assert prompts_b == prompts_a
        assert rewards_b == rewards_a
        # the resumed policy was synced into the engine: same weights, same seeds -> the very same samples
    finally:
        vllm_engine.load_weights(load_file(tiny_model_dir / "model.safetensors").items())
