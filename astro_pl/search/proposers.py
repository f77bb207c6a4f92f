"""The language-model step proposer: where MCTS gets candidate steps and rollouts when a model searches.

`LLMStepProposer` prompts a model through any `RolloutEngine` for the next step of a partial solution (sampling
stops at the step delimiter) and for rollouts to a final answer. One engine call carries the expansions (or the
rollouts) of every state passed in, so MCTS batches across trees and across a node's samples. The protocol it
implements (`StepProposer`) is in `astro_pl.tasks.base`, beside the scripted teachers tasks provide.

Departure from the paper: the prior of a step is exp(mean token log-prob) normalised over its siblings (the
paper's "length-normalised likelihood", whose exact form is not published).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from astro_pl.data.chat import render_prompt
from astro_pl.rollout.base import Completion, RolloutEngine, SamplingArgs
from astro_pl.tasks.base import State, Step, Task, normalise


@dataclass
class LLMProposerArgs:
    """How the LLM proposer prompts and samples.

    Args:
        few_shot: Worked examples (problem and step-by-step solution, steps separated by the delimiter), put
            before the problem in the user turn.
        system_prompt: Optional system turn.
        step_delimiter: Separates steps; sampling a step stops here.
        temperature: Sampling temperature for steps and rollouts.
        top_p: Nucleus mass for steps and rollouts.
        max_step_tokens: Most tokens of one step.
        max_rollout_tokens: Most tokens of a rollout to the final answer.
        seed: Base sampling seed; each engine call uses the next block of seeds.
    """

    few_shot: list[str] = field(default_factory=list)
    system_prompt: str | None = None
    step_delimiter: str = "\n\n"
    temperature: float = 1.0
    top_p: float = 1.0
    max_step_tokens: int = 128
    max_rollout_tokens: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.step_delimiter:
            raise ValueError("--llm.step_delimiter must be non-empty")
        if self.temperature <= 0:
            raise ValueError(f"--llm.temperature must be > 0 (search needs diverse samples), got {self.temperature}")
        if self.max_step_tokens < 1 or self.max_rollout_tokens < 1:
            raise ValueError("--llm.max_step_tokens and --llm.max_rollout_tokens must be >= 1")


class LLMStepProposer:
    """Steps and rollouts sampled from a language model through a `RolloutEngine`."""

    def __init__(self, engine: RolloutEngine, tokenizer, task: Task, args: LLMProposerArgs | None = None):
        """`task` reads what the model writes: a sampled step through `Task.read_step` (the domain's rules, so an
        illegal step is dropped), a rollout's final answer through `Task.final_answer` (none when cut off)."""
        self.engine, self.tokenizer, self.task, self.args = engine, tokenizer, task, args or LLMProposerArgs()
        self._calls = 0

    def prompt(self, state: State) -> str:
        """Rendered problem (few-shot examples first) followed by the partial solution and a delimiter."""
        delim = self.args.step_delimiter
        user = delim.join([*self.args.few_shot, state.problem])
        text = render_prompt(self.tokenizer, user, self.args.system_prompt)
        return text + "".join(step + delim for step in state.steps)

    def _sampling(self, n: int, max_tokens: int, stop: tuple[str, ...], logprobs: bool) -> SamplingArgs:
        # A fresh seed block per call: prompt i of call c samples with seed + c * 2**20 + i.
        seed = self.args.seed + self._calls * (1 << 20)
        self._calls += 1
        return SamplingArgs(n=n, temperature=self.args.temperature, top_p=self.args.top_p, max_tokens=max_tokens,
                            stop=stop, seed=seed, logprobs=logprobs)

    def propose(self, states: Sequence[State], k: int) -> list[list[Step]]:
        if not states:
            return []
        params = self._sampling(k, self.args.max_step_tokens, (self.args.step_delimiter,), logprobs=True)
        outputs = self.engine.generate([self.prompt(s) for s in states], params)
        return [self._steps(state, completions) for state, completions in zip(states, outputs, strict=True)]

    def _steps(self, state: State, completions: Sequence[Completion]) -> list[Step]:
        # An empty completion (the model ended, or wrote only the delimiter) is no step, nor is one the task reads as
        # illegal: it is dropped, so it never becomes a node, a terminal or an empty paragraph of a trace; priors are
        # normalised over the steps kept.
        read = [(c, self.task.read_step(state, c.text.strip())) for c in completions if c.text.strip()]
        kept = [(c, step) for c, step in read if step is not None]
        weights = [math.exp(sum(c.logprobs) / len(c.logprobs)) if c.logprobs else 0.0 for c, _ in kept]
        return [Step(step.text, prior, step.terminal, step.answer)
                for (_, step), prior in zip(kept, normalise(weights) if kept else [], strict=True)]

    def rollout(self, states: Sequence[State], m: int) -> list[list[str | None]]:
        if not states:
            return []
        params = self._sampling(m, self.args.max_rollout_tokens, (), logprobs=False)  # only the answer counts
        outputs = self.engine.generate([self.prompt(s) for s in states], params)
        return [[self.task.final_answer(c.text, c.finish_reason) for c in completions] for completions in outputs]
