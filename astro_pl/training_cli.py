"""`astro fit|validate|test`: LightningCLI over any LightningModule and LightningDataModule picked by class_path.

    astro fit --config configs/sft/synthetic.yaml
    astro fit --config configs/sft/synthetic.yaml --ckpt_path last     # resume (same W&B run)
    astro fit --config configs/sft/synthetic.yaml --print_config       # complete YAML that runs as is

Every run also gets `WandbRunId` (the W&B run id goes into each checkpoint, and a resumed run continues that run);
unless the config names its own, an `AtomicCheckpoint` saving `last` as a crash-safe link and a plain `ModelSummary`
(logged to stderr, where rich's default prints on stdout, which carries a command's results); and, beside the
configured loggers, a `MetricsFileLogger` writing `<default_root_dir>/metrics.jsonl` (what `astro report` plots,
with no W&B server). Checkpoints without a `dirpath` go to `<default_root_dir>/checkpoints`, never under the logger's
run id (a rerun gets a new id, and `--ckpt_path last` would find nothing); `--ckpt_path last` with no checkpoint
there is an error. The DataModule shards batches across ranks itself (resumable), so Lightning's
DistributedSampler is off by default. A fit ends by printing the progress-bar metrics of its last step.
"""

from __future__ import annotations

import netrc
import os
import pickle
import socket
import sys
import warnings
from pathlib import Path
from urllib.parse import urlparse

from jsonargparse import set_parsing_settings
from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from astro_pl.errors import UsageError
from astro_pl.modules.checkpointing import AtomicCheckpoint, WandbRunId, continue_wandb_run, read_run_id
from astro_pl.modules.metrics_file import MetricsFileLogger


def prepare_wandb(logger: WandbLogger) -> None:
    """Starts W&B without its two spurious warnings: Lightning passes `anonymous=None`, which wandb >= 0.19 warns
    is deprecated even when unset; and wandb looks for a git repository in the run folder before creating it
    ("git root ... does not exist"). With the folder made first, it finds the checkout's commit when there is one."""
    if logger._wandb_init.get("anonymous") is None:  # WandbLogger has no public way to leave it unset
        logger._wandb_init.pop("anonymous", None)
    if logger.save_dir:
        Path(logger.save_dir).mkdir(parents=True, exist_ok=True)


def format_final_metrics(step: int, metrics: dict[str, float]) -> str:
    """A one-row Markdown table of a fit's last progress-bar metrics."""
    header = ["step", *metrics]
    cells = [str(step), *(f"{float(v):.4g}" for v in metrics.values())]
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---:|" * len(header), "| " + " | ".join(cells) + " |"])


class AstroCLI(LightningCLI):
    """LightningCLI with subclass mode for model and data, crash-safe checkpoints and W&B run continuity."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"trainer.use_distributed_sampler": False})

    def instantiate_trainer(self, **kwargs):
        config = self._get(self.config_init, "trainer", default={})
        callbacks = config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        callbacks.append(WandbRunId())
        if not any(isinstance(c, ModelCheckpoint) for c in callbacks):
            callbacks.append(AtomicCheckpoint(save_last="link", every_n_train_steps=100))
        if config.get("enable_model_summary") is not False and not any(isinstance(c, ModelSummary) for c in callbacks):
            callbacks.append(ModelSummary())
        root = config.get("default_root_dir") or os.getcwd()
        loggers = config.get("logger")
        if isinstance(loggers, Logger) or isinstance(loggers, list) and loggers:  # True/False/None: Lightning's
            loggers = list(loggers) if isinstance(loggers, list) else [loggers]
            for logger in loggers:
                if isinstance(logger, WandbLogger):
                    prepare_wandb(logger)
            # after the configured ones: checkpoint folders follow the first logger
            loggers.append(MetricsFileLogger(root, run=loggers[0]))
            kwargs["logger"] = loggers
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

    def after_fit(self) -> None:
        if self.trainer.is_global_zero and self.trainer.progress_bar_metrics:
            print(format_final_metrics(self.trainer.global_step, self.trainer.progress_bar_metrics), flush=True)


def check_wandb_login(loggers: list) -> None:
    """Fails at once, not after W&B's network retries, when an online W&B logger has no API key or cannot reach
    its server."""
    online = [lg for lg in loggers if isinstance(lg, WandbLogger) and not lg._offline]
    if not online or os.environ.get("WANDB_MODE", "") in ("offline", "disabled", "dryrun"):
        return
    offline_hint = "or log offline (--trainer.logger.init_args.offline true or WANDB_MODE=offline)"
    if not os.environ.get("WANDB_API_KEY"):
        try:
            has_key = netrc.netrc().authenticators("api.wandb.ai") is not None
        except (FileNotFoundError, netrc.NetrcParseError):
            has_key = False
        if not has_key:
            raise UsageError(f"--trainer.logger: W&B is online but has no API key; run `wandb login`, set "
                             f"WANDB_API_KEY, {offline_hint}")
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as err:
        raise UsageError(f"--trainer.logger: W&B is online but {host} cannot be reached ({err}); {offline_hint}") \
            from None


def main(argv: list[str] | None = None) -> int:
    """Runs LightningCLI on argv (subcommand first, e.g. ["fit", "--config", "x.yaml"]).

    W&B runs silently unless WANDB_SILENT is set (its banner and sync hints are not results). Arguments that are
    this process's own command line reach LightningCLI through sys.argv, so it does not warn about getting both.
    """
    os.environ.setdefault("WANDB_SILENT", "true")
    # RLModule.training_step takes `dataloader_iter` (one step draws as many prompt batches as dynamic sampling
    # needs); Lightning flags that signature as experimental at every fit
    warnings.filterwarnings("ignore", message=r".*`dataloader_iter`")
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    AstroCLI(
        args=None if argv == sys.argv[1:] else argv,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        # flag errors reach the `astro` dispatch as one line
        parser_kwargs={"exit_on_error": False, **{name: {"exit_on_error": False} for name in ("fit", "validate",
                                                                                               "test")}},
    )
    return 0
