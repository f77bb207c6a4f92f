"""Resume at scale: a 2-process FSDP2 `astro fit` (ModelParallelStrategy over gloo, W&B offline) is SIGKILLed, whole
process group, after it wrote a distributed checkpoint; `--ckpt_path last` relaunched with torchrun (the launcher
docs/scaling.md gives for clusters) finishes at the expected step inside the same W&B run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch
from scale_helpers import ASTRO, REPO, run, run_env, sft_config, wandb_run, wandb_run_files

from astro_pl.modules.checkpointing import RUN_ID_KEY
from tests.datamodules.test_traces import write_traces

STEPS = 8


def wait_for_checkpoint(proc: subprocess.Popen, last, timeout: float = 150) -> None:
    """Polls until `last` links to a complete sharded checkpoint (its meta file is written last)."""
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if (last / "meta.pt").is_file():
            return
        time.sleep(0.05)
    raise AssertionError(f"no distributed checkpoint at {last} (process exit code {proc.poll()})")


def test_killed_fsdp2_run_resumes_from_distributed_checkpoint_in_the_same_wandb_run(tiny_model_dir, tmp_path):
    data = write_traces(tmp_path / "traces.jsonl", n=64)
    config = tmp_path / "c.yaml"
    config.write_text(sft_config(tmp_path, tiny_model_dir, data, steps=STEPS, devices=2, every=2, name="dist"))
    # Lightning launches rank 1 itself; a new session makes both ranks one process group to kill together
    proc = subprocess.Popen([*ASTRO, "fit", "--config", str(config)], cwd=REPO, env=run_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    last = tmp_path / "ckpt" / "last.ckpt"
    try:
        wait_for_checkpoint(proc, last)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert last.is_symlink() and last.resolve().is_dir(), "last must link to a sharded checkpoint directory"
    meta = torch.load(last / "meta.pt", weights_only=False, map_location="cpu")
    killed_at, run_id = meta["global_step"], meta[RUN_ID_KEY]
    assert 0 < killed_at < STEPS and run_id
    shards = sorted(p.name for p in last.resolve().glob("*.distcp"))
    assert len(shards) == 2, f"expected one shard per rank, got {shards}"

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    run([*torchrun, "-m", "astro_pl.cli", "fit", "--config", str(config), "--ckpt_path", "last"],
        env=run_env(LOGLEVEL="WARNING"))

    final = torch.load(last / "meta.pt", weights_only=False, map_location="cpu")
    assert final["global_step"] == STEPS and final[RUN_ID_KEY] == run_id
    files = wandb_run_files(tmp_path)
    # the killed run and the resumed one wrote into the same W&B run: one offline directory each, one id
    assert len(files) == 2 and all(f.parent.name.endswith(f"-{run_id}") for f in files), files
    resumed = wandb_run(files[-1])
    assert resumed["run_id"] == run_id and resumed["state"] == "finished"
    assert resumed["summary"]["trainer/global_step"] == STEPS - 1
    assert resumed["config"]["optim"]["lr"] == 1.0e-3
