"""A task and a reward written outside astro-pl, plugged in by YAML only (README, "Your own task and reward").

Put this file's folder on PYTHONPATH and name the classes by their import path:

    PYTHONPATH=docs/examples astro eval --task digit_sum.DigitSumTask --model runs/quickstart/rl/hf ...
    PYTHONPATH=docs/examples astro fit --config docs/examples/digit_sum_rl.yaml

`DigitSumTask` generates its problems and keeps the default prompt and `\\boxed{}` answer check; `brevity` is a
reward in TRL's signature, so the same function works in TRL's GRPOTrainer.
"""

from __future__ import annotations

import random

from astro_pl.data.problems import Problem
from astro_pl.tasks import Task


class DigitSumTask(Task):
    """ "What is the sum of the digits of 4821?" with exact integer gold.

    Args:
        num_train: Training problems (RL prompts).
        num_test: Evaluation problems.
        digits: Digits per number.
        seed: Seed of the training problems (the test problems use seed + 1).
        system_prompt: Optional system turn.
    """

    def __init__(self, num_train: int = 256, num_test: int = 50, digits: int = 4, seed: int = 0,
                 system_prompt: str | None = None):
        super().__init__(system_prompt)
        self.sizes, self.digits, self.seed = {"train": num_train, "val": 0, "test": num_test}, digits, seed

    def problems(self, split):
        rng = random.Random(f"{self.seed}:{split}")
        numbers = [rng.randrange(10 ** (self.digits - 1), 10**self.digits) for _ in range(self.sizes[split])]
        return {"digit_sum": [Problem(f"{split}-{i}", f"What is the sum of the digits of {n}?",
                                      str(sum(map(int, str(n))))) for i, n in enumerate(numbers)]}


def brevity(completions, **kwargs):
    """-0.001 per character beyond 64: a TRL-style reward (completions in, one float each out)."""
    return [-0.001 * max(0, len(text) - 64) for text in completions]
