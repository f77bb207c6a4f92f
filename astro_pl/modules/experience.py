"""Rollout records for the RL step: the groups kept by dynamic sampling and the padded tensors trained on.

A `Group` is one prompt with its G completions and rewards. `GroupBuffer` collects groups across draws until the
batch is full (DAPO refills). `pack_experience` lays the kept groups out as right-padded [N, L] token rows
(prompt then response), with everything else aligned to the shifted positions [N, L-1]: column t holds the
log-prob of token t+1 given tokens <= t, so `logits[:, :-1]` lines up with `input_ids[:, 1:]`.
`plan_micro_batches` decides which rows share a forward/backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from astro_pl.rollout.base import Completion


class Group(NamedTuple):
    """One prompt and its samples."""

    prompt_ids: list[int]
    """Prompt token ids, [P]."""
    completions: list[Completion]
    """G completions of the prompt."""
    rewards: list[float]
    """Reward of each completion, [G]."""
    answer: str
    """Gold answer (for logging)."""
    step_rewards: list[list[float]] | None = None
    """Per completion, the step rewards on each of its tokens ([G][T], `astro_pl.rewards.steps`), or None."""

    def has_step_signal(self) -> bool:
        """Whether a step reward marks any token: the group has something to learn even when its outcomes tie."""
        return any(any(tokens) for tokens in self.step_rewards or [])


class GroupBuffer:
    """Groups kept so far in one step, and every group sampled (for reward statistics)."""

    def __init__(self) -> None:
        self.groups: list[Group] = []
        self.sampled: list[Group] = []
        self.drawn = 0
        self.dropped = 0

    def add(self, groups: Sequence[Group], keep: Sequence[bool]) -> None:
        self.drawn += len(groups)
        self.sampled.extend(groups)
        for group, kept in zip(groups, keep, strict=True):
            if kept:
                self.groups.append(group)
            else:
                self.dropped += 1

    def __len__(self) -> int:
        return len(self.groups)


class Experience(NamedTuple):
    """One rollout batch as tensors; N = sequences, L = longest prompt + response."""

    input_ids: torch.Tensor
    """[N, L] prompt then response, right-padded."""
    attention_mask: torch.Tensor
    """[N, L] 1 on real tokens."""
    response_mask: torch.Tensor
    """[N, L-1] 1 on shifted positions whose next token is a counted response token."""
    engine_logp: torch.Tensor
    """[N, L-1] the engine's log-prob of each response token (0 elsewhere)."""
    advantages: torch.Tensor
    """[N] advantage of each sequence, or [N, L-1] per shifted position when step rewards add to some tokens."""
    old_logp: torch.Tensor | None = None
    """[N, L-1] trainer log-probs at rollout time, when the batch is reused for several optimiser steps."""
    ref_logp: torch.Tensor | None = None
    """[N, L-1] reference-model log-probs, when the KL term is on."""

    @property
    def num_sequences(self) -> int:
        return self.input_ids.shape[0]

    def select(self, rows: torch.Tensor | slice) -> Experience:
        """The sub-batch of `rows`, trimmed to its own longest sequence."""
        picked = self._replace(**{k: None if t is None else t[rows] for k, t in self._asdict().items()})
        length = max(int(picked.attention_mask.sum(1).max()), 2) if picked.num_sequences else 2

        def trim(name: str, t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None or (name == "advantages" and t.dim() == 1):
                return t
            return t[:, :length] if name in ("input_ids", "attention_mask") else t[:, : length - 1]

        return picked._replace(**{k: trim(k, t) for k, t in picked._asdict().items()})


def plan_micro_batches(lengths: torch.Tensor, max_sequences: int, max_tokens: int | None = None,
                       count: int | None = None) -> list[torch.Tensor]:
    """Splits sequences into micro-batches, longest first, so that little of the compute goes to padding.

    A micro-batch is padded to its longest sequence; sorting by length puts sequences of similar length together.
    The sum of the micro-batches' losses (with normalisers taken over the whole mini-batch) is the same whatever
    the split, so this changes speed and memory, not the update.

    Args:
        lengths: [N] sequence lengths.
        max_sequences: Most sequences per micro-batch.
        max_tokens: Most padded tokens (sequences x longest) per micro-batch, as veRL's dynamic batch size; a
            single longer sequence still gets a micro-batch of its own. None: no token limit.
        count: Exactly this many micro-batches (at least the number needed, at most N): the ones with the most
            padded tokens are halved until there are enough. Ranks of one FSDP group must run the same number
            of forward/backward passes.

    Returns:
        Indices into `lengths`, one tensor per micro-batch.
    """
    order = torch.argsort(lengths, descending=True, stable=True).tolist()
    batches: list[list[int]] = []
    for i in order:
        current = batches[-1] if batches else None
        # the first index of a batch is its longest sequence
        fits = current is not None and len(current) < max_sequences and (
            max_tokens is None or (len(current) + 1) * int(lengths[current[0]]) <= max_tokens)
        if fits:
            current.append(i)
        else:
            batches.append([i])
    if count is not None:
        if not len(batches) <= count <= len(order):
            raise ValueError(f"cannot split {len(order)} sequences into {count} micro-batches "
                             f"(at least {len(batches)} needed)")
        while len(batches) < count:
            splittable = [j for j, b in enumerate(batches) if len(b) > 1]
            j = max(splittable, key=lambda j: len(batches[j]) * int(lengths[batches[j][0]]))
            half = (len(batches[j]) + 1) // 2
            batches[j: j + 1] = [batches[j][:half], batches[j][half:]]
    return [torch.tensor(b, dtype=torch.long) for b in batches]


def pack_experience(groups: Sequence[Group], advantages: torch.Tensor, pad_id: int,
                    mask_truncated: bool = False) -> Experience:
    """Pads the groups' sequences into an `Experience`.

    Args:
        groups: Kept groups; sequence order is group after group, as in `advantages`.
        advantages: [N] one advantage per completion.
        pad_id: Token id used for padding (never attended to, never counted).
        mask_truncated: Zero the response mask of completions that hit max_tokens (finish_reason "length"),
            so a cut-off answer is neither rewarded nor punished (DAPO's overlong filtering).

    Returns:
        `Experience` without old/ref log-probs; its advantages are [N, L-1] (the sequence's advantage plus the step
        rewards on each response token) when a group carries step rewards, else [N].
    """
    rows = [(g.prompt_ids, c) for g in groups for c in g.completions]
    if len(rows) != advantages.numel():
        raise ValueError(f"{len(rows)} completions but {advantages.numel()} advantages")
    length = max(len(p) + len(c.token_ids) for p, c in rows)
    n = len(rows)
    input_ids = torch.full((n, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(n, length, dtype=torch.long)
    response_mask = torch.zeros(n, max(length - 1, 1), dtype=torch.float32)
    engine_logp = torch.zeros(n, max(length - 1, 1), dtype=torch.float32)
    steps = [g.step_rewards[j] if g.step_rewards else None for g in groups for j in range(len(g.completions))]
    per_token = any(s is not None for s in steps)
    token_advantages = torch.zeros(n, max(length - 1, 1), dtype=torch.float32)
    for i, (prompt, completion) in enumerate(rows):
        p, t = len(prompt), len(completion.token_ids)
        input_ids[i, : p + t] = torch.tensor(prompt + list(completion.token_ids), dtype=torch.long)
        attention_mask[i, : p + t] = 1
        if t and not (mask_truncated and completion.finish_reason == "length"):
            response_mask[i, p - 1 : p - 1 + t] = 1
        if completion.logprobs:
            engine_logp[i, p - 1 : p - 1 + t] = torch.tensor(completion.logprobs, dtype=torch.float32)
        if per_token:
            token_advantages[i, p - 1 : p - 1 + t] = float(advantages[i])
            if steps[i] is not None:
                if len(steps[i]) != t:
                    raise ValueError(f"completion {i} has {t} tokens but {len(steps[i])} step rewards")
                token_advantages[i, p - 1 : p - 1 + t] += torch.tensor(steps[i], dtype=torch.float32)
    return Experience(input_ids, attention_mask, response_mask, engine_logp,
                      token_advantages if per_token else advantages.float())
