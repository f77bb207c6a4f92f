"""`astro fit|validate|test`: LightningCLI over any LightningModule and LightningDataModule picked by class_path.

    astro fit --config configs/sft/synthetic.yaml
    astro fit --config configs/sft/synthetic.yaml --ckpt_path last     # resume (same W&B run)
    astro fit --config configs/sft/synthetic.yaml --print_config       # complete YAML that runs as is

Every run also gets `WandbRunId` (the W&B run id goes into each checkpoint, and a resumed run continues that run)
and, unless the config names a ModelCheckpoint, an `AtomicCheckpoint` saving `last` as a crash-safe link.
Checkpoints without a `dirpath` go to `<default_root_dir>/checkpoints`, never under the logger's run id (a rerun
gets a new id, and `--ckpt_path last` would find nothing); `--ckpt_path last` with no checkpoint there is an error.
The DataModule shards batches across ranks itself (resumable), so Lightning's DistributedSampler is off by default.
"""

from __future__ import annotations

import netrc
import os
import pickle
from pathlib import Path

from jsonargparse import set_parsing_settings
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from astro_pl.errors import UsageError
from astro_pl.modules.checkpointing import AtomicCheckpoint, WandbRunId, continue_wandb_run, read_run_id


class AstroCLI(LightningCLI):
    """LightningCLI with subclass mode for model and data, crash-safe checkpoints and W&B run continuity."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"trainer.use_distributed_sampler": False})

    def instantiate_trainer(self, **kwargs):
        callbacks = self._get(self.config_init, "trainer", default={}).get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        callbacks.append(WandbRunId())
        if not any(isinstance(c, ModelCheckpoint) for c in callbacks):
            callbacks.append(AtomicCheckpoint(save_last="link", every_n_train_steps=100))
        root = self._get(self.config_init, "trainer", default={}).get("default_root_dir") or os.getcwd()
        for callback in callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = os.path.realpath(os.path.join(root, "checkpoints"))
        return super().instantiate_trainer(callbacks=callbacks, **kwargs)

    def _parse_ckpt_path(self) -> None:
        """LightningCLI reads the checkpoint's hyperparameters before anything else: name a corrupt file there."""
        try:
            super()._parse_ckpt_path()
        except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
            ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
            raise UsageError(f"--ckpt_path {ckpt_path}: corrupt or truncated checkpoint "
                             f"({str(err).splitlines()[0]})") from err

    def before_fit(self) -> None:
        check_wandb_login(self.trainer.loggers)
        ckpt_path = self._get(self.config_init, "ckpt_path")
        if ckpt_path is None:
            return
        if ckpt_path not in ("last", "best", "hpc", "registry") and not Path(ckpt_path).exists():
            raise UsageError(f"--ckpt_path {ckpt_path}: no such checkpoint")
        resolved = self.trainer._checkpoint_connector._parse_ckpt_path(
            TrainerFn.FITTING, ckpt_path, model_provided=True, model_connected=True
        )
        if ckpt_path == "last" and not resolved:
            folders = sorted({str(c.dirpath) for c in self.trainer.checkpoint_callbacks if c.dirpath})
            raise UsageError(f"--ckpt_path last: no checkpoint to resume in {', '.join(folders) or 'any folder'}; "
                             "drop --ckpt_path to start a new run")
        run_id = read_run_id(resolved) if resolved else None
        for logger in self.trainer.loggers:
            if run_id and isinstance(logger, WandbLogger):
                rank_zero_info(f"resuming W&B run {run_id} from {resolved}")
                continue_wandb_run(logger, run_id)


def check_wandb_login(loggers: list) -> None:
    """Fails at once, not after W&B's network retries, when an online W&B logger has no API key."""
    online = [lg for lg in loggers if isinstance(lg, WandbLogger) and not lg._offline]
    if not online or os.environ.get("WANDB_MODE", "") in ("offline", "disabled", "dryrun") or \
            os.environ.get("WANDB_API_KEY"):
        return
    try:
        has_key = netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        has_key = False
    if not has_key:
        raise UsageError("--trainer.logger: W&B is online but has no API key; run `wandb login`, set WANDB_API_KEY, "
                         "or log offline (--trainer.logger.init_args.offline true or WANDB_MODE=offline)")


def main(argv: list[str] | None = None) -> int:
    """Runs LightningCLI on argv (subcommand first, e.g. ["fit", "--config", "x.yaml"])."""
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    AstroCLI(
        args=argv,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        # flag errors reach the `astro` dispatch as one line
        parser_kwargs={"exit_on_error": False, **{name: {"exit_on_error": False} for name in ("fit", "validate",
                                                                                               "test")}},
    )
    return 0
