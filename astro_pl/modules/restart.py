"""Restarting a run from a fresh initialisation when a skill that forms suddenly has not formed by a given step.

Why: some skills a tiny model learns in a phase change, early or never. The graph task's edge look-up (an induction
circuit) forms within about 2,000 steps in some initialisations and in none of the next 2,000 in the others
(docs/graph-task-log.md), so over seeds the result measures the draw, not the method. Judging the training loss at
a step and, above a bar, drawing every weight afresh (new seed, fresh optimiser moments, the schedule from its start,
the run lengthened by the steps spent) gives each seed a few draws; the restarts are logged and counted. When no draw
passes, the one that came closest is trained on (a draw with the look-up but not yet the terminal check beats one with
neither), not merely the last.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

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


def attempt_score(passed: int, excesses: Sequence[float]) -> tuple[int, float]:
    """How close a failed attempt came, larger is closer: the bars it passed first, then how little its failed metrics
    were above their bars (summed; a NaN mean is infinitely far)."""
    excess = sum(math.inf if math.isnan(x) else x for x in excesses)
    return passed, -excess


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
    attempt is kept once every metric has passed. When the last restart fails too, `keep` decides: "best" trains on
    the failed attempt that came closest (`attempt_score`), from where it was judged (weights, optimiser and schedule
    as they were then; a copy is held in CPU memory and in checkpoints), "last" the last one. One process only; not
    for LoRA models.

    Args:
        bars: Logged training metric -> its judgement, e.g. {"train/loss": {at_step: 1750, above: 0.22},
            "train/loss_terminal": {at_step: 2500, above: 0.25}} (the second logged by
            `SFTModule(token_losses=...)`): skills that form at different times are judged at different steps.
        max_restarts: Restarts allowed; after the last, an attempt is kept whatever its losses.
        window: Steps whose logged values are averaged.
        seed: Base of the new initialisations' seeds; None: the run's `seed_everything` (0 if none).
        keep: Which attempt trains on when none passed: the closest ("best") or the last.
    """

    def __init__(self, bars: dict[str, Bar], max_restarts: int = 2, window: int = 50, seed: int | None = None,
                 keep: Literal["best", "last"] = "best") -> None:
        if window < 1 or max_restarts < 0:
            raise ValueError(f"PlateauRestart needs window >= 1 and max_restarts >= 0, got {window} and {max_restarts}")
        if not bars:
            raise ValueError("PlateauRestart needs at least one metric in bars")
        for name, bar in bars.items():
            if window > bar.at_step:
                raise ValueError(f"PlateauRestart: bars.{name}.at_step must not be shorter than the window ({window}), "
                                 f"got {bar.at_step}")
        if keep not in ("best", "last"):
            raise ValueError(f"PlateauRestart: keep must be 'best' or 'last', got {keep!r}")
        self.bars, self.max_restarts, self.window, self.seed, self.keep = dict(bars), max_restarts, window, seed, keep
        self.restarts, self.attempt_start, self.extra_steps = 0, 0, 0
        self.best: dict | None = None  # the failed attempt that came closest, as it was when judged
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
        if not failed:
            self._passed.update(due)
            verdict = "kept" if self.judged else "passed"
            announce(f"PlateauRestart: attempt {self.restarts + 1} {verdict}: {judged} at step {steps} of it")
            return
        score = attempt_score(len(self._passed) + len(due) - len(failed),
                              [window_mean(self._losses[name]) - self.bars[name].above for name in failed])
        if self.restarts == self.max_restarts:
            if self.keep == "best" and self.best is not None and tuple(self.best["score"]) > score:
                self._return_to_best(trainer, pl_module, steps)
                self._passed = set(self.bars)
                announce(f"PlateauRestart: attempt {self.restarts + 1} failed too: {judged} at step {steps} of it; "
                         f"attempt {self.best['attempt']} came closest and trains on from its step "
                         f"{self.best['steps']} (no restart left)")
            else:
                self._passed.update(due)
                announce(f"PlateauRestart: attempt {self.restarts + 1} above a bar, kept (no restart left): {judged} "
                         f"at step {steps} of it")
            return
        if self.keep == "best" and (self.best is None or score > tuple(self.best["score"])):
            self.best = {"attempt": self.restarts + 1, "steps": steps, "score": list(score),
                         "model": {k: v.detach().to("cpu", copy=True) for k, v in pl_module.model.state_dict().items()},
                         "optimizers": [copy.deepcopy(o.state_dict()) for o in trainer.optimizers],
                         "schedulers": [copy.deepcopy(c.scheduler.state_dict()) for c in trainer.lr_scheduler_configs]}
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
        self._lengthen(trainer, steps)
        self._passed.clear()
        for losses in self._losses.values():
            losses.clear()
        pl_module.log("train/restarts", float(self.restarts), rank_zero_only=True)

    def _lengthen(self, trainer: L.Trainer, steps: int) -> None:
        """Counts `steps` out of the kept attempt: the run is lengthened by them, and the attempt starts after them."""
        trainer.fit_loop.epoch_loop.max_steps += steps
        self.extra_steps += steps
        self.attempt_start += steps

    def _return_to_best(self, trainer: L.Trainer, pl_module: L.LightningModule, steps: int) -> None:
        """Trains on from the closest failed attempt as it was when judged: its steps already taken count again, the
        current attempt's do not."""
        best = self.best
        device = next(pl_module.model.parameters()).device
        pl_module.model.load_state_dict({k: v.to(device) for k, v in best["model"].items()})
        for optimizer, state in zip(trainer.optimizers, best["optimizers"], strict=True):
            optimizer.load_state_dict(state)
        for config, state in zip(trainer.lr_scheduler_configs, best["schedulers"], strict=True):
            config.scheduler.load_state_dict(state)
        self._lengthen(trainer, steps - best["steps"])

    def state_dict(self) -> dict:
        return {"restarts": self.restarts, "attempt_start": self.attempt_start, "extra_steps": self.extra_steps,
                "passed": sorted(self._passed), "best": self.best}

    def load_state_dict(self, state_dict: dict) -> None:
        self.restarts, self.attempt_start = state_dict["restarts"], state_dict["attempt_start"]
        self.extra_steps, self._passed = state_dict["extra_steps"], set(state_dict["passed"])
        self.best = state_dict.get("best")
