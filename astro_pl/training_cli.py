"""`astro fit|validate|test`: LightningCLI over any LightningModule and LightningDataModule picked by class_path.

    astro fit --config configs/sft/synthetic.yaml
    astro fit --config configs/sft/synthetic.yaml --ckpt_path last     # resume (same W&B run)
    astro fit --config configs/sft/synthetic.yaml --print_config       # complete YAML that runs as is

Every run also gets `WandbRunId` (the W&B run id goes into each checkpoint, and a resumed run continues that run)
and, unless the config names a ModelCheckpoint, an `AtomicCheckpoint` saving `last` as a crash-safe link.
The DataModule shards batches across ranks itself (resumable), so Lightning's DistributedSampler is off by default.
"""

from __future__ import annotations

from jsonargparse import set_parsing_settings
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

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
        return super().instantiate_trainer(callbacks=callbacks, **kwargs)

    def before_fit(self) -> None:
        ckpt_path = self._get(self.config_init, "ckpt_path")
        if ckpt_path is None:
            return
        resolved = self.trainer._checkpoint_connector._parse_ckpt_path(
            TrainerFn.FITTING, ckpt_path, model_provided=True, model_connected=True
        )
        run_id = read_run_id(resolved) if resolved else None
        for logger in self.trainer.loggers:
            if run_id and isinstance(logger, WandbLogger):
                rank_zero_info(f"resuming W&B run {run_id} from {resolved}")
                continue_wandb_run(logger, run_id)


def main(argv: list[str] | None = None) -> int:
    """Runs LightningCLI on argv (subcommand first, e.g. ["fit", "--config", "x.yaml"])."""
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    AstroCLI(
        args=argv,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
    )
    return 0
