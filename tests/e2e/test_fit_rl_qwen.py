"""RL end to end on the tiny Qwen3 (q/k norms, <|im_end|> as EOS, Qwen3-style template): `astro fit` with the vLLM
engine, syncing one layer per bucket, samples from the policy the trainer holds."""

from __future__ import annotations

import torch
from rl_helpers import rl_config, run_astro, train_boxed_policy
from safetensors.torch import load_file
from test_fit_rl import wandb_summary


def test_fit_rl_on_qwen3_with_vllm(tiny_qwen_dirs, tmp_path):
    policy = train_boxed_policy(tiny_qwen_dirs["qwen3"], tmp_path / "policy")
    config = rl_config(tmp_path, policy, steps=2, model={"sync_bucket_mb": 1e-6})
    result = run_astro("fit", "--config", str(config), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    summary = wandb_summary(tmp_path / "run")
    assert summary["time/sync_s"] > 0  # the second step synced the updated policy layer by layer ...
    assert summary["train/engine_logp_gap"] < 0.01  # ... and vLLM sampled from it
    exported = load_file(tmp_path / "run" / "hf" / "model.safetensors")
    base = load_file(policy / "model.safetensors")
    assert exported.keys() == base.keys() and "model.layers.0.self_attn.q_norm.weight" in exported
    assert any(not torch.equal(exported[k], base[k]) for k in base)  # the policy moved
