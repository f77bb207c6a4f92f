"""`astro fit --ckpt_path last` with the transformers engine after a crash: the resumed run ends bit for bit where
the uninterrupted one does (policy, optimiser, schedule, prompt sampler, step counters all restored)."""

from __future__ import annotations

import pytest
import torch
from rl_helpers import rl_config, with_callback
from safetensors.torch import load_file

from astro_pl.modules.rl import RolloutFailure
from astro_pl.training_cli import main


def test_crash_then_resume_is_bit_for_bit_with_hf_engine(rl_policy_dir, tmp_path):
    # 2 optimiser steps per rollout; 6 steps = 3 rollouts; truncated IS and clip-higher on to cover them too
    settings = dict(engine="hf", steps=6, trainer={"logger": False},
                    grpo={"epochs": 1, "mini_batches": 2, "tis_cap": 2.0, "eps_high": 0.28})
    for name in ("whole", "split"):
        (tmp_path / name).mkdir()
    whole = rl_config(tmp_path / "whole", rl_policy_dir, **settings)
    main(["fit", "--config", str(whole)])

    # the third rollout's loss is made NaN (a callback poisons the final norm's output): the run stops with a
    # checkpoint instead of skipping the batch, and the same run without the callback resumes from it
    split = rl_config(tmp_path / "split", rl_policy_dir, **settings)
    poisoned = with_callback(split, {"class_path": "rl_helpers.NaNHiddenAt", "init_args": {"step": 2}})
    with pytest.raises(RolloutFailure, match="non-finite loss at step 2") as failure:
        main(["fit", "--config", str(poisoned)])
    failed = tmp_path / "split" / "run" / "checkpoints" / "failed-step2.ckpt"
    assert failed.is_file() and str(failed) in str(failure.value)
    main(["fit", "--config", str(split), "--ckpt_path", "last"])

    a = load_file(tmp_path / "whole" / "run" / "hf" / "model.safetensors")
    b = load_file(tmp_path / "split" / "run" / "hf" / "model.safetensors")
    base = load_file(rl_policy_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert any(not torch.equal(a[k], base[k]) for k in base)  # the policy did move
    ckpt = torch.load(tmp_path / "split" / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["rl_state"]["rollout_step"] == 3 and ckpt["PromptDataModule"] == {"position": 6}
