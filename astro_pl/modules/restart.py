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


def restart_due(losses: list[float], above: float) -> bool:
    """Whether the mean of the last steps' `losses` is above the bar (no finite loss: yes)."""
    finite = [x for x in losses if math.isfinite(x)]
    return not finite or sum(finite) / len(finite) > above


class PlateauRestart(L.Callback):
    """Restarts training from a fresh initialisation while the loss is still above `above` at `at_step`.

    At `at_step` optimiser steps into each attempt, the mean of `monitor` over the last `window` steps is judged; above
    `above` (and with restarts left), `pl_module.model` is drawn afresh from seed `seed + 1000 * k` (restart k), the
    optimisers' state is cleared and each learning-rate schedule starts over, and `max_steps` grows by the steps of the
    attempt, so the kept attempt trains as long as a run without restarts. One process only; not for LoRA models.

    Args:
        at_step: Steps into an attempt at which it is judged.
        above: The loss bar: an attempt whose mean loss is above it restarts.
        max_restarts: Restarts allowed; the last attempt is kept whatever its loss.
        window: Steps whose logged `monitor` values are averaged.
        monitor: The logged training metric judged.
        seed: Base of the new initialisations' seeds; None: the run's `seed_everything` (0 if none).
    """

    def __init__(self, at_step: int, above: float, max_restarts: int = 2, window: int = 50,
                 monitor: str = "train/loss", seed: int | None = None) -> None:
        if at_step < 1 or window < 1 or max_restarts < 0:
            raise ValueError(f"PlateauRestart needs at_step >= 1, window >= 1 and max_restarts >= 0, got {at_step}, "
                             f"{window} and {max_restarts}")
        if window > at_step:
            raise ValueError(f"PlateauRestart's window ({window}) must not be longer than at_step ({at_step})")
        self.at_step, self.above, self.max_restarts = at_step, above, max_restarts
        self.monitor, self.seed = monitor, seed
        self.restarts, self.attempt_start, self.judged, self.extra_steps = 0, 0, False, 0
        self._losses: deque[float] = deque(maxlen=window)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Checks the setting and, on a resumed run, lengthens it again (before the loop sees max_steps reached)."""
        if trainer.world_size > 1:
            raise ValueError("PlateauRestart runs on one process: a restart draws every weight in place")
        if hasattr(pl_module.model, "peft_config"):
            raise ValueError("PlateauRestart would draw a LoRA model's frozen base weights afresh; use it without LoRA")
        trainer.fit_loop.epoch_loop.max_steps += self.extra_steps  # a run resumed after restarts keeps its length

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
                           ) -> None:
        steps = trainer.global_step - self.attempt_start
        if self.judged or steps < self.at_step - self._losses.maxlen:
            return  # only the window before the judgement is read: no device sync on the other steps
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise ValueError(f"PlateauRestart: the module logs no {self.monitor!r} to judge")
        self._losses.append(float(value))
        if steps < self.at_step:
            return
        mean = sum(self._losses) / len(self._losses)
        if self.restarts == self.max_restarts or not restart_due(list(self._losses), self.above):
            self.judged = True
            announce(f"PlateauRestart: kept attempt {self.restarts + 1}, {self.monitor} {mean:.3f} at step "
                     f"{self.at_step} of it (bar {self.above})")
            return
        self.restarts += 1
        base = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        seed = base + 1000 * self.restarts
        announce(f"PlateauRestart: {self.monitor} {mean:.3f} > {self.above} at step {self.at_step} of attempt "
                 f"{self.restarts}; restart {self.restarts} of {self.max_restarts}, initialisation seed {seed}")
        reinitialise(pl_module.model, seed)
        for optimizer in trainer.optimizers:
            optimizer.state.clear()
        for config in trainer.lr_scheduler_configs:
            config.scheduler.last_epoch = -1
            config.scheduler.step()
        spent = trainer.global_step - self.attempt_start
        trainer.fit_loop.epoch_loop.max_steps += spent
        self.extra_steps += spent
        self.attempt_start = trainer.global_step
        self._losses.clear()
        pl_module.log("train/restarts", float(self.restarts), rank_zero_only=True)

    def state_dict(self) -> dict:
        return {"restarts": self.restarts, "attempt_start": self.attempt_start, "judged": self.judged,
                "extra_steps": self.extra_steps}

    def load_state_dict(self, state_dict: dict) -> None:
        self.restarts, self.attempt_start = state_dict["restarts"], state_dict["attempt_start"]
        self.judged, self.extra_steps = state_dict["judged"], state_dict["extra_steps"]
