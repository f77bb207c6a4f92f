"""One RL step's rollouts: sample G completions per prompt, score them with the reward functions, keep groups.

`collect_rollouts` is the whole of it, as a function of its inputs (engine, prompt source, sampling, rewards, task):
it draws prompts, generates (ranks sharing one engine submit together), calls every reward function once per draw
in TRL's signature (`astro_pl.rewards.functions`), combines them with their weights, puts any step rewards on their
tokens (`astro_pl.rewards.steps`), and, with dynamic sampling (DAPO), drops groups whose rewards are all equal and
that no step reward marks, and draws again until every rank holds `batch_size` groups or `max_extra_draws` is used
up. `rollout_metrics` turns what was sampled into the step's logged numbers.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from astro_pl.data.problems import PROBLEM_FIELDS, Problem
from astro_pl.evaluation.backtracks import DEFAULT_BACKTRACK_PHRASES, count_backtracks
from astro_pl.modules.advantages import dynamic_sampling_mask
from astro_pl.modules.collectives import all_reduce_scalar, generate_shared
from astro_pl.modules.experience import Group, GroupBuffer
from astro_pl.rewards.functions import RewardFn, call_rewards, combine_rewards
from astro_pl.rewards.steps import StepRewardFn, TokenEnds, call_step_rewards
from astro_pl.rollout.base import Completion, RolloutEngine, SamplingArgs


class Rollouts(NamedTuple):
    """What one step sampled."""

    buffer: GroupBuffer
    """Every group drawn, and which were kept."""
    reward_values: dict[str, list[float | None]]
    """Each reward function's values over every completion drawn (for logging), by name."""
    generate_s: float
    reward_s: float
    wanted: int
    """Groups each rank needs (the prompts of one draw)."""


def reward_columns(problems: Sequence[Problem], prompts: Sequence[str], outputs: Sequence[Sequence[Completion]],
                   task) -> dict:
    """The keyword arguments of a reward call: one entry per completion (problem fields repeated over its group),
    as TRL passes dataset columns, plus the task (for checkers)."""
    rows = [(problem, prompt, c) for problem, prompt, completions in zip(problems, prompts, outputs, strict=True)
            for c in completions]
    columns = {
        "prompts": [prompt for _, prompt, _ in rows],
        "completions": [c.text for _, _, c in rows],
        "completion_ids": [list(c.token_ids) for _, _, c in rows],
        "finish_reason": [c.finish_reason for _, _, c in rows],
        "task": task,
    }
    for name in PROBLEM_FIELDS:
        columns[name] = [getattr(problem, name) for problem, _, _ in rows]
    return columns


def score_groups(problems: Sequence[Problem], prompts: Sequence[str], prompt_ids: Sequence[list[int]],
                 outputs: Sequence[Sequence[Completion]], rewards: Sequence[RewardFn], weights: Sequence[float], task,
                 step_rewards: Sequence[StepRewardFn] = (), decode: Callable[[list[int]], str] | None = None
                 ) -> tuple[list[Group], dict[str, list[float | None]]]:
    """Groups with their combined rewards (and step rewards per token, summed over the step reward functions),
    and each reward's own values (a step reward's: its sum over each completion's tokens)."""
    columns = reward_columns(problems, prompts, outputs, task)
    values = call_rewards(rewards, **columns)
    totals = iter(combine_rewards(values, weights))
    per_token = None
    if step_rewards:
        if decode is None:
            raise ValueError("step rewards need `decode` to find where each token's text ends")
        char_ends = [TokenEnds(decode, ids) for ids in columns["completion_ids"]]
        step_values = call_step_rewards(step_rewards, char_ends, **columns)
        if clash := sorted(values.keys() & step_values.keys()):
            raise ValueError(f"a reward and a step reward are both named {clash[0]!r}; give one a distinct __name__")
        values.update({name: [sum(tokens) for tokens in column] for name, column in step_values.items()})
        per_token = iter([[sum(column[c][t] for column in step_values.values()) for t in range(len(ends))]
                          for c, ends in enumerate(char_ends)])
    groups = [Group(ids, list(completions), [next(totals) for _ in completions], problem.answer,
                    None if per_token is None else [next(per_token) for _ in completions])
              for problem, ids, completions in zip(problems, prompt_ids, outputs, strict=True)]
    return groups, values


def collect_rollouts(engine: RolloutEngine, next_problems: Callable[[], list[Problem]],
                     render: Callable[[list[Problem]], tuple[list[str], list[list[int]]]],
                     sampling: SamplingArgs, seed_of_draw: Callable[[int], int], rewards: Sequence[RewardFn],
                     weights: Sequence[float], task, dynamic_sampling: bool = False,
                     max_extra_draws: int = 0, engine_group=None, step_rewards: Sequence[StepRewardFn] = (),
                     decode: Callable[[list[int]], str] | None = None) -> Rollouts:
    """Draws, generates and scores until every rank holds as many kept groups as one draw has prompts (one draw
    without dynamic sampling). Every rank calls it in lockstep: the number of draws is agreed through an all-reduce.

    Args:
        engine: Where completions come from (already synced with the policy).
        next_problems: The next batch of problems for this rank; every batch has the same size, the number of
            groups wanted.
        render: Problems -> (prompt texts, their token ids); the engine gets ids, so it cannot add a second BOS.
        sampling: Sampling settings; `n` is the group size G.
        seed_of_draw: Sampling seed of draw d of this step.
        rewards: Reward functions (TRL signature), called once per draw.
        weights: One weight per reward function.
        task: Passed to the reward functions (the default reward checks answers with it).
        dynamic_sampling: Drop groups whose rewards are all equal (zero advantage) and draw again.
        max_extra_draws: Most extra draws per step with dynamic sampling.
        engine_group: Process group of the ranks sharing this rank's engine, or None.
        step_rewards: Step reward functions (`astro_pl.rewards.steps`); a group they mark is kept by dynamic
            sampling even when its outcomes tie.
        decode: Token ids -> text (the policy's tokenizer), to put step rewards on tokens.
    """
    buffer, values = GroupBuffer(), {}
    generate_s = reward_s = 0.0
    wanted = 0
    for draw in range(max_extra_draws + 1 if dynamic_sampling else 1):
        try:
            problems = next_problems()
        except StopIteration:
            if draw == 0:
                raise  # no prompts left: the epoch ends
            break  # they ran out during the extra draws: the step trains on the groups kept so far
        wanted = wanted or len(problems)
        prompts, prompt_ids = render(problems)
        start = time.perf_counter()
        params = dataclasses.replace(sampling, seed=seed_of_draw(draw))
        outputs = generate_shared(engine, prompt_ids, params, engine_group)
        generate_s += time.perf_counter() - start
        start = time.perf_counter()
        groups, draw_values = score_groups(problems, prompts, prompt_ids, outputs, rewards, weights, task,
                                           step_rewards, decode)
        for name, column in draw_values.items():
            values.setdefault(name, []).extend(column)
        reward_s += time.perf_counter() - start
        if dynamic_sampling:
            flat = torch.tensor([r for g in groups for r in g.rewards])
            differ = dynamic_sampling_mask(flat, sampling.n).tolist()
            buffer.add(groups, [d or g.has_step_signal() for d, g in zip(differ, groups, strict=True)])
        else:
            buffer.add(groups, [True] * len(groups))
        if all_reduce_scalar(len(buffer), "min") >= wanted:
            break
    return Rollouts(buffer, values, generate_s, reward_s, wanted)


def rollout_metrics(rollouts: Rollouts, kept: int, correct_reward: float | None = None,
                    backtrack_phrases: Sequence[str] = DEFAULT_BACKTRACK_PHRASES) -> dict[str, float]:
    """The step's rollout numbers, over everything sampled (before dynamic sampling dropped any group)."""
    buffer = rollouts.buffer
    sampled = buffer.sampled
    totals = torch.tensor([r for g in sampled for r in g.rewards] or [0.0])
    completions = [c for g in sampled for c in g.completions]
    count = max(len(completions), 1)
    tokens = sum(len(c.token_ids) for c in completions)
    metrics = {
        "reward/mean": totals.mean().item(),
        "reward/std": totals.std().item() if totals.numel() > 1 else 0.0,
        "rollout/groups_dropped_frac": buffer.dropped / max(buffer.drawn, 1),
        "rollout/groups_kept": float(kept),
        "rollout/response_len": tokens / count,
        "rollout/truncated_frac": sum(c.finish_reason == "length" for c in completions) / count,
        "rollout/backtracks": sum(count_backtracks(c.text, backtrack_phrases) for c in completions) / count,
        "rollout/tokens_per_s": tokens / max(rollouts.generate_s, 1e-9),
        "time/generate_s": rollouts.generate_s,
        "time/reward_s": rollouts.reward_s,
    }
    for name, column in rollouts.reward_values.items():
        applied = [v for v in column if v is not None]
        metrics[f"reward/{name}"] = sum(applied) / len(applied) if applied else 0.0
    if correct_reward is not None and "correct" in rollouts.reward_values:
        column = rollouts.reward_values["correct"]
        metrics["reward/accuracy"] = sum(v is not None and v >= correct_reward for v in column) / max(len(column), 1)
    return metrics
