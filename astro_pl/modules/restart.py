"""Restarting a run from a fresh initialisation when a skill that forms suddenly has not formed by a given step.

Why: some skills a tiny model learns in a phase change, early or never. The graph task's edge look-up (an induction
circuit) forms within about 2,000 steps in some initialisations and in none of the next 2,000 in the others
(docs/graph-task-log.md), so over seeds the result measures the draw, not the method. Judging the training loss at
a step and, above a bar, drawing every weight afresh (new seed, fresh optimiser moments, the schedule from its start,
the run lengthened by the steps spent) gives each seed a few draws; the restarts are logged and counted.
"""

from __future__ import annotations

import itertools
import math
import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import lightning as L
import torch


def reinitialise(model: torch.nn.Module, seed: int) -> None:
    """Draws every weight of a Hugging Face `model` afresh from `seed`, as building it from its config does.

    transformers marks loaded tensors as initialised and then skips them; the marks are cleared first. The global
    random state is left as it was.
    """
    for item in itertools.chain(model.modules(), model.parameters(), model.buffers()):
        if getattr(item, "_is_hf_initialized", False):
            item._is_hf_initialized = False
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        model.init_weights()


def announce(message: str) -> None:
    """A restart is a result a person needs: on stdout, which `astro pipeline` shows (library logs go to stderr), on a
    line of its own rather than after the progress bar's last redraw."""
    print(f"\n{message}", flush=True)


def window_mean(losses: Sequence[float]) -> float:
    """Mean of the finite values (NaN if none: a batch without the tokens a loss is over logs NaN)."""
    finite = [x for x in losses if math.isfinite(x)]
    return sum(finite) / len(finite) if finite else math.nan


def restart_due(losses: Sequence[float], above: float) -> bool:
    """Whether the mean of the last steps' `losses` is above the bar (no finite loss: yes)."""
    mean = window_mean(losses)
    return math.isnan(mean) or mean > above


@dataclass(frozen=True)
class Bar:
    """One judgement: at `at_step` steps into an attempt, the mean of a metric over the window must be <= `above`."""

    at_step: int
    above: float


class PlateauRestart(L.Callback):
    """Restarts training from a fresh initialisation while a logged loss is still above its bar at its step.

    Each metric in `bars` is judged once per attempt, at its `at_step` steps into it: the mean of its last `window`
    logged values. If one is above its bar (and restarts are left), `pl_module.model` is drawn afresh from seed
    `seed + 1000 * k` (restart k), the optimisers' state is cleared and each learning-rate schedule starts over, and
    `max_steps` grows by the steps of the attempt, so the kept attempt trains as long as a run without restarts. An
    attempt is kept once every metric has passed, or when no restart is left. One process only; not for LoRA models.

    Args:
        bars: Logged training metric -> its judgement, e.g. {"train/loss": {at_step: 1750, above: 0.22},
            "train/loss_terminal": {at_step: 2500, above: 0.25}} (the second logged by
            `SFTModule(token_losses=...)`): skills that form at different times are judged at different steps.
        max_restarts: Restarts allowed; the last attempt is kept whatever its losses.
        window: Steps whose logged values are averaged.
        seed: Base of the new initialisations' seeds; None: the run's `seed_everything` (0 if none).
    """

    def __init__(self, bars: dict[str, Bar], max_restarts: int = 2, window: int = 50, seed: int | None = None
                 ) -> None:
        if window < 1 or max_restarts < 0:
            raise ValueError(f"PlateauRestart needs window >= 1 and max_restarts >= 0, got {window} and {max_restarts}")
        if not bars:
            raise ValueError("PlateauRestart needs at least one metric in bars")
        for name, bar in bars.items():
            if window > bar.at_step:
                raise ValueError(f"PlateauRestart: bars.{name}.at_step must not be shorter than the window ({window}), "
                                 f"got {bar.at_step}")
        self.bars, self.max_restarts, self.window, self.seed = dict(bars), max_restarts, window, seed
        self.restarts, self.attempt_start, self.extra_steps = 0, 0, 0
        self._losses: dict[str, deque[float]] = {name: deque(maxlen=window) for name in self.bars}
        self._passed: set[str] = set()  # metrics of this attempt judged below their bar

    @property
    def judged(self) -> bool:
        """Whether the kept attempt is settled: every metric passed (or was let pass with no restart left)."""
        return self._passed == set(self.bars)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Checks the setting and, on a resumed run, lengthens it again (before the loop sees max_steps reached)."""
        if trainer.world_size > 1:
            raise ValueError("PlateauRestart runs on one process: a restart draws every weight in place")
        if hasattr(pl_module.model, "peft_config"):
            raise ValueError("PlateauRestart would draw a LoRA model's frozen base weights afresh; use it without LoRA")
        trainer.fit_loop.epoch_loop.max_steps += self.extra_steps  # a run resumed after restarts keeps its length

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
                           ) -> None:
        if self.judged:
            return
        steps = trainer.global_step - self.attempt_start
        due = []
        for name, bar in self.bars.items():
            if name in self._passed or steps < bar.at_step - self.window:
                continue  # only the window before a judgement is read: no device sync on the other steps
            value = trainer.callback_metrics.get(name)
            if value is None:
                raise ValueError(f"PlateauRestart: the module logs no {name!r} to judge")
            self._losses[name].append(float(value))
            if steps >= bar.at_step:
                due.append(name)
        if not due:
            return
        judged = ", ".join(f"{name} {window_mean(self._losses[name]):.3f} (bar {self.bars[name].above})"
                           for name in due)
        failed = [name for name in due if restart_due(self._losses[name], self.bars[name].above)]
        if not failed or self.restarts == self.max_restarts:
            self._passed.update(due)
            verdict = ("kept" if self.judged else "passed") + (" (no restart left)" if failed else "")
            announce(f"PlateauRestart: attempt {self.restarts + 1} {verdict}: {judged} at step {steps} of it")
            return
        self.restarts += 1
        base = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        seed = base + 1000 * self.restarts
        announce(f"PlateauRestart: {judged} at step {steps} of attempt {self.restarts}; restart "
                 f"{self.restarts} of {self.max_restarts}, initialisation seed {seed}")
        reinitialise(pl_module.model, seed)
        for optimizer in trainer.optimizers:
            optimizer.state.clear()
        for config in trainer.lr_scheduler_configs:
            config.scheduler.last_epoch = -1
            config.scheduler.step()
        trainer.fit_loop.epoch_loop.max_steps += steps
        self.extra_steps += steps
        self.attempt_start = trainer.global_step
        self._passed.clear()
        for losses in self._losses.values():
            losses.clear()
        pl_module.log("train/restarts", float(self.restarts), rank_zero_only=True)

    def state_dict(self) -> dict:
        return {"restarts": self.restarts, "attempt_start": self.attempt_start, "extra_steps": self.extra_steps,
                "passed": sorted(self._passed)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.restarts, self.attempt_start = state_dict["restarts"], state_dict["attempt_start"]
        self.extra_steps, self._passed = state_dict["extra_steps"], set(state_dict["passed"])
