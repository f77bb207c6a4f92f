"""`astro fit` resume and checkpoint failures (issue 20 items 1 and 9): checkpoints live at a path that does not
depend on the W&B run id, `--ckpt_path last` with none is an error, an explicit resume keeps `last.ckpt` at the
newest state, and a full disk, a corrupt checkpoint or an online W&B without a key are one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from cases import Case, check_case, limit_file_size

from tests.datamodules.test_traces import write_traces

# The quickstart's shape: a WandbLogger and a checkpoint callback without dirpath (the quickstart gets the CLI's
# default AtomicCheckpoint; this one saves every 2 steps so a short run leaves checkpoints).
CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_steps: 4
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
  logger:
    class_path: lightning.pytorch.loggers.WandbLogger
    init_args: {{project: astro-test, name: robust, save_dir: {root}, offline: true}}
  callbacks:
    - class_path: astro_pl.modules.checkpointing.AtomicCheckpoint
      init_args: {{save_last: link, every_n_train_steps: 2}}
model:
  class_path: astro_pl.modules.sft.SFTModule
  init_args: {{model_path: {model}, optim: {{lr: 1.0e-3}}}}
data:
  class_path: astro_pl.datamodules.traces.TraceDataModule
  init_args: {{tokenizer_path: {model}, train_file: {data}, max_seq_len: 64, batch_size: 2}}
"""
FIT = ["fit", "--config", "{config}"]
TIMEOUT = 300


@pytest.fixture(scope="module")
def paths(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("fit")
    data = write_traces(tmp / "traces.jsonl", n=24)
    root = tmp / "run"
    (tmp / "fit.yaml").write_text(CONFIG.format(root=root, model=tiny_model_dir, data=data))
    (tmp / "corrupt.ckpt").write_bytes(b"PK\x03\x04 not a whole checkpoint")
    return {"tmp": tmp, "config": tmp / "fit.yaml", "root": root, "ckpt": root / "checkpoints",
            "corrupt": tmp / "corrupt.ckpt"}


def step_of(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


def test_resume_finds_last_at_a_fixed_path_and_keeps_it_newest(paths, capsys):
    check_case(Case("last-before-any", [*FIT, "--ckpt_path", "last"], kind="silent-wrong",
                    message=r"--ckpt_path last: no checkpoint to resume in {ckpt}; drop --ckpt_path"),
               paths, capsys, timeout=TIMEOUT)
    check_case(Case("first-run", FIT, code=0, kind="clean"), paths, capsys, timeout=TIMEOUT)
    last = paths["ckpt"] / "last.ckpt"
    assert last.is_symlink() and step_of(last) == 4, "checkpoints under <default_root_dir>/checkpoints, not the run id"
    check_case(Case("resume-last", [*FIT, "--ckpt_path", "last", "--trainer.max_steps", "6"], code=0,
                    kind="silent-wrong"), paths, capsys, timeout=TIMEOUT)
    assert step_of(last) == 6, "resumed from step 4, not restarted"
    check_case(Case("resume-explicit", [*FIT, "--ckpt_path", str(paths["ckpt"] / "epoch=0-step=6.ckpt"),
                                        "--trainer.max_steps", "8"], code=0, kind="silent-wrong"),
               paths, capsys, timeout=TIMEOUT)
    assert step_of(last) == 8 and not list(paths["ckpt"].glob("last-v*")), "last.ckpt follows the newest state"


def test_full_disk_keeps_the_last_good_checkpoint(paths, capsys, tmp_path):
    """Resumed with files capped below a checkpoint's size: the save fails as on a full disk."""
    root = tmp_path / "full"
    config = tmp_path / "fit.yaml"
    config.write_text(paths["config"].read_text().replace(str(paths["root"]), str(root)))
    check_case(Case("first", ["fit", "--config", str(config), "--trainer.max_steps", "2"], code=0, kind="clean"),
               paths, capsys, timeout=TIMEOUT)
    last = root / "checkpoints" / "last.ckpt"
    target = os.readlink(last)
    size = (root / "checkpoints" / target).stat().st_size
    check_case(Case("disk-full", ["fit", "--config", str(config), "--ckpt_path", "last"], kind="data-loss",
                    message=r"step=4.ckpt: writing the checkpoint failed \(.*is the disk full or read-only\?\)"),
               paths, capsys, timeout=TIMEOUT, preexec_fn=limit_file_size(size // 2))
    assert os.readlink(last) == target and step_of(last) == 2
    assert not list((root / "checkpoints").glob("*.partial"))


CASES = [
    Case("missing-ckpt", [*FIT, "--ckpt_path", "{tmp}/none.ckpt"],
         message=r"--ckpt_path .*none.ckpt: no such checkpoint"),
    Case("corrupt-ckpt", [*FIT, "--ckpt_path", "{corrupt}"],
         message=r"--ckpt_path .*corrupt.ckpt: corrupt or truncated checkpoint"),
    Case("bad-flag", [*FIT, "--trainer.max_stepz", "3"], message=r"unrecognized arguments: --trainer.max_stepz 3",
         kind="clean"),
    Case("bad-type", [*FIT, "--trainer.max_steps", "many"], message=r'Parser key "trainer.max_steps"', kind="clean"),
    Case("no-model-folder", [*FIT, "--model.init_args.model_path", "{tmp}/nomodel"],
         message=r"--model.init_args.model_path .*nomodel: no such model folder", kind="traceback"),
    Case("no-tokenizer-files", [*FIT, "--data.init_args.tokenizer_path", "{tmp}"],
         message=r"--data.init_args.tokenizer_path .*: no tokenizer files in the folder", kind="traceback"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_case(case, paths, capsys):
    check_case(case, paths, capsys, timeout=TIMEOUT)


def test_online_wandb_without_a_key_fails_in_seconds(paths, capsys, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_API_KEY")} | {"HOME": str(tmp_path)}
    check_case(Case("wandb-no-key", [*FIT, "--trainer.logger.init_args.offline", "false"],
                    message=r"--trainer.logger: W&B is online but has no API key; run `wandb login`"),
               paths, capsys, timeout=120, env=env)


def test_online_wandb_without_a_network_fails_in_seconds(paths, capsys, tmp_path):
    """This machine has no network: an online logger with a key must stop at once with one line, not retry."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"} | {"WANDB_API_KEY": "x" * 40}
    check_case(Case("wandb-no-network", [*FIT, "--trainer.logger.init_args.offline", "false"],
                    message=r"--trainer.logger: W&B is online but api\.wandb\.ai cannot be reached", kind="hang"),
               paths, capsys, timeout=120, env=env)
