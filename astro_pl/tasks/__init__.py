"""Tasks: a domain's problems, prompt and answer check in one class that search, RL and evaluation name in YAML."""

from astro_pl.tasks.arithmetic import ArithmeticTask
from astro_pl.tasks.base import Split, State, Step, StepProposer, Task, flat_problems
from astro_pl.tasks.math import MathTask

__all__ = ["ArithmeticTask", "MathTask", "Split", "State", "Step", "StepProposer", "Task", "flat_problems"]
