"""A `RolloutEngine` for logic tests: completions come from a script, not a model (the real engines have their own
tests with the tiny Llama)."""

from __future__ import annotations

from collections.abc import Callable

from astro_pl.rollout.base import Completion, SamplingArgs


class ScriptedEngine:
    """`reply(prompt, params)` gives the texts of one prompt (the first `params.n` are kept), each finished ("stop")
    with log-prob -0.5 per character when log-probs are asked for; `calls` records each call's prompts and params."""

    def __init__(self, reply: Callable[[str, SamplingArgs], list[str]]):
        self.reply, self.calls = reply, []

    def generate(self, prompts, params):
        self.calls.append((list(prompts), params))
        return [[Completion(t, [1] * max(len(t), 1), [-0.5] * max(len(t), 1) if params.logprobs else [], "stop")
                 for t in self.reply(p, params)[: params.n]] for p in prompts]

    def load_weights(self, named_tensors):
        raise NotImplementedError("a scripted engine has no weights")

    def sleep(self):
        return False

    def wake_up(self):
        return None

    def close(self):
        return None
