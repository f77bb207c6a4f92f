"""`MetricsFileLogger`: every logged metric of a run in `<save_dir>/metrics.jsonl`, beside W&B's offline files.

`astro fit` adds it next to the configured loggers (astro_pl/training_cli.py); `astro report` reads the file. A
JSONL file, appended line by line, so a killed run keeps what it logged and a resumed run continues it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

METRICS_FILENAME = "metrics.jsonl"


class MetricsFileLogger(Logger):
    """Appends every logged step to `<save_dir>/metrics.jsonl`: {"step": s, "<metric>": value, ...} per line.

    A run's curves then live in its own folder, readable without W&B. A resumed run appends after the old lines, so
    a step can appear twice: the later line is the resumed run's. Non-finite values are written as null.

    Args:
        save_dir: Folder of metrics.jsonl (created on the first write).
        run: The logger this one sits beside; its version is this one's, so the progress bar's `v_num` stays the
            W&B run's.
    """

    def __init__(self, save_dir: str, run: Logger | None = None) -> None:
        super().__init__()
        self._save_dir, self._run = save_dir, run

    @property
    def name(self) -> str:
        return "metrics"

    @property
    def version(self) -> str | int | None:
        return self._run.version if self._run is not None else None

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def path(self) -> Path:
        return Path(self._save_dir) / METRICS_FILENAME

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        row: dict = {"step": step}
        for key, value in metrics.items():
            value = float(value)
            row[key] = value if math.isfinite(value) else None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        """Hyperparameters are in the config.yaml LightningCLI saves beside."""
