"""Helpers of the scale-out end-to-end tests: an SFT config on the tiny Llama, running `astro`, reading W&B offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ASTRO = [sys.executable, "-m", "astro_pl.cli"]


def run_env(**extra: str) -> dict[str, str]:
    """The environment of a child `astro` run: offline W&B, one thread per process (2 cores, 2 ranks)."""
    return {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            **extra}


def sft_config(root: Path, model: Path, data: Path, *, steps: int, devices: int = 1, every: int = 2,
               name: str = "run", batch_size: int = 2, lr: float = 1e-3, lr_schedule: str = "warmup_ratio: 0.1",
               export: bool = False) -> str:
    """A complete SFT config on the tiny Llama: FSDP2 (`ModelParallelStrategy`) when devices > 1, W&B offline,
    with `export` an HF export in root/hf."""
    strategy = "auto" if devices == 1 else (
        "{class_path: lightning.pytorch.strategies.ModelParallelStrategy, "
        f"init_args: {{data_parallel_size: {devices}, tensor_parallel_size: 1}}}}"
    )
    hf_export = f"""
    - class_path: astro_pl.modules.export.HFExport
      init_args: {{dirpath: {root}/hf, dtype: float32}}""" if export else ""
    return f"""
seed_everything: 0
trainer:
  accelerator: cpu
  devices: {devices}
  strategy: {strategy}
  max_steps: {steps}
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
  logger:
    class_path: lightning.pytorch.loggers.WandbLogger
    init_args: {{project: astro-test, name: {name}, save_dir: {root}, offline: true}}
  callbacks:
    - class_path: astro_pl.modules.checkpointing.AtomicCheckpoint
      init_args: {{dirpath: {root}/ckpt, save_last: link, every_n_train_steps: {every}}}{hf_export}
model:
  class_path: astro_pl.modules.sft.SFTModule
  init_args:
    model_path: {model}
    optim: {{lr: {lr}, {lr_schedule}}}
data:
  class_path: astro_pl.datamodules.traces.TraceDataModule
  init_args: {{tokenizer_path: {model}, train_file: {data}, max_seq_len: 128, batch_size: {batch_size}}}
"""


def run(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path = REPO,
        timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs a command (from the repository root unless `cwd`); a failure raises with the tail of its output."""
    result = subprocess.run(cmd, cwd=cwd, env=env or run_env(), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-5000:]}")
    return result


def wandb_run(run_file: Path) -> dict:
    """Config, summary, id and state of one offline W&B run, read back by W&B's own reader."""
    out = run([sys.executable, "-m", "wandb", "leet", "inspect", "--summary", "--json", str(run_file)], timeout=120)
    return json.loads(out.stdout)


def wandb_run_files(root: Path) -> list[Path]:
    """The .wandb files of every offline run under root/wandb, oldest first."""
    return sorted((root / "wandb").glob("offline-run-*/*.wandb"))
