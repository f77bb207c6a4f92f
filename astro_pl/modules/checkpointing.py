"""Crash-safe checkpoints and W&B run continuity, for every `astro fit` run (SFT and RL).

`AtomicCheckpoint` writes each checkpoint (a file, or a directory of shards under `ModelParallelStrategy`) to a
temporary path and renames it into place, points `last.ckpt` at it with an atomic symlink swap, and deletes
superseded checkpoints only after `last` points at the new one. A kill at any moment leaves `last` loadable, a
failed write (full or read-only disk) removes its partial file and leaves `last` at the last good checkpoint, and
`last` keeps its name when a run resumes from another checkpoint (Lightning would start `last-v1`).
`WandbRunId` stores the W&B run id in every checkpoint; the CLI reads it back on resume so the run continues.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.load import _METADATA_FILENAME
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger

from astro_pl.errors import UsageError

RUN_ID_KEY = "wandb_run_id"


def replace_path(src: str, dst: str) -> None:
    """Moves file or directory `src` to `dst`; a file or a fresh name is replaced atomically."""
    if os.path.isdir(dst) and not os.path.islink(dst):
        old = f"{dst}.old{os.getpid()}"
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old)
    else:
        os.replace(src, dst)


class AtomicCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose saves, `last` links and removals survive a kill at any point.

    Use `save_last: link` so `last.ckpt` is a symlink to the newest checkpoint (each has its own name).
    """

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        tmp = f"{filepath}.partial"
        try:
            super()._save_checkpoint(trainer, tmp)
        except (OSError, RuntimeError) as err:  # torch's writer reports a full disk as a RuntimeError
            if trainer.is_global_zero and os.path.lexists(tmp):
                shutil.rmtree(tmp) if os.path.isdir(tmp) else os.remove(tmp)
            last = f"; {self.last_model_path} still holds the last good state" if self.last_model_path else ""
            detail = getattr(err, "strerror", None) or str(err).splitlines()[0]
            raise UsageError(f"{filepath}: writing the checkpoint failed ({detail}; is the disk full or "
                             f"read-only?){last}") from err
        if trainer.is_global_zero:
            replace_path(tmp, filepath)
        trainer.strategy.barrier()
        self._last_checkpoint_saved = filepath

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        if self.save_last:  # replace `last` in place (atomically), never version it as last-v1
            self.last_model_path = self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST)
        super()._save_last_checkpoint(trainer, monitor_candidates)

    @staticmethod
    def _link_checkpoint(trainer: L.Trainer, filepath: str, linkpath: str) -> None:
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            tmp = f"{linkpath}.link"
            if os.path.lexists(tmp):
                os.remove(tmp)
            os.symlink(os.path.relpath(filepath, os.path.dirname(linkpath)), tmp)
            if os.path.isdir(linkpath) and not os.path.islink(linkpath):
                shutil.rmtree(linkpath)
            os.replace(tmp, linkpath)
        trainer.strategy.barrier()

    def _remove_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        self.__dict__.setdefault("_pending_removal", []).append(filepath)

    def _flush_removals(self, trainer: L.Trainer) -> None:
        keep = os.path.realpath(self.last_model_path) if self.last_model_path else None
        for path in self.__dict__.pop("_pending_removal", []):
            if os.path.realpath(path) != keep:
                super()._remove_checkpoint(trainer, path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._flush_removals(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._flush_removals(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        self._flush_removals(trainer)


class WandbRunId(L.Callback):
    """Saves the W&B run id of the trainer's `WandbLogger` in each checkpoint."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and logger.version:
                checkpoint[RUN_ID_KEY] = logger.version


def read_run_id(path: str | Path) -> str | None:
    """The W&B run id stored in a checkpoint file or sharded checkpoint directory, if any."""
    path = Path(path)
    meta = path / _METADATA_FILENAME if path.is_dir() else path
    if not meta.exists():
        return None
    try:
        checkpoint = torch.load(meta, map_location="cpu", weights_only=False, mmap=not path.is_dir())
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
        raise UsageError(f"--ckpt_path {path}: corrupt or truncated checkpoint ({str(err).splitlines()[0]})") from err
    if not isinstance(checkpoint, dict):
        raise UsageError(f"--ckpt_path {path}: not a Lightning checkpoint")
    return checkpoint.get(RUN_ID_KEY)


def continue_wandb_run(logger: WandbLogger, run_id: str) -> None:
    """Makes a not-yet-started WandbLogger resume run `run_id` (WandbLogger has no public setter for this)."""
    logger._wandb_init.update(id=run_id, resume="allow")
    logger._id = run_id
