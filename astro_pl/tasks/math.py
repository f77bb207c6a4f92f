"""Math with a final `\\boxed{}` answer: MATH, AMC, AIME, GSM8K, your own files or Hugging Face datasets.

The answer check is `astro_pl.rewards.math` (extraction of the last complete box, then equivalence with time
limits, never `eval`/`sympify` of model text). The paper's setting: search and RL on MATH train, evaluation on
MATH-500, AMC 2023 and AIME 2024.
"""

from __future__ import annotations

from astro_pl.data.problems import Problem, ProblemSource, as_source, check_unique_ids
from astro_pl.tasks.base import Split, Task


class MathTask(Task):
    """Problems with gold answers from named benchmarks, files or hub datasets, checked by mathematical equivalence.

    Args:
        train: Problem sources for search and RL prompts (a name, path or "hf:NAME[:SPLIT]", or a full
            `ProblemSource` with limit and field map).
        val: Held-out sources for RL's validation.
        test: Sources `astro eval` evaluates, each reported under its own name.
        system_prompt: Optional system turn.
    """

    def __init__(self, train: list[str | ProblemSource] | None = None, val: list[str | ProblemSource] | None = None,
                 test: list[str | ProblemSource] | None = None, system_prompt: str | None = None):
        super().__init__(system_prompt)
        self.sources = {
            "train": [as_source(s) for s in (["math_train"] if train is None else train)],
            "val": [as_source(s) for s in (val or [])],
            "test": [as_source(s) for s in (["math500", "amc23", "aime24"] if test is None else test)],
        }
        for split, sources in self.sources.items():
            labels = [s.label for s in sources]
            if len(set(labels)) != len(labels):
                raise ValueError(f"--task.{split}: two sources share a name ({labels}); give each a distinct `name`")

    def problems(self, split: Split) -> dict[str, list[Problem]]:
        sets = {source.label: source.load() for source in self.sources[split]}
        for label, problems in sets.items():
            check_unique_ids(problems, f"--task.{split} {label!r}")
        return sets
