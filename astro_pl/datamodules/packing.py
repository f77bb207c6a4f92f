"""Turning tokenised SFT examples into batches: packing, length grouping, collation and a resumable loader.

Packing puts several examples in one fixed-length row. Attention stays inside each example because position ids
restart at 0 for every example: flash_attention_2 turns them into varlen sequence boundaries and transformers'
sdpa/eager paths build the matching block-diagonal mask (the model must be called with `attention_mask=None` and
`use_cache=False`). The first token of every example gets label -100 so no example is trained to predict the next
one. Rows are packed once (best-fit decreasing) and only their order is shuffled per epoch, so the number of batches
is the same every epoch.

`ResumableLoader` counts the batches it has handed out; Lightning saves its `state_dict()` in the checkpoint
(every loader with `state_dict`/`load_state_dict` is treated as stateful) and a resumed run continues with the next
unseen batch of the same epoch.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Sampler

IGNORE_INDEX = -100


def pack_best_fit(lengths: Sequence[int], max_len: int) -> list[list[int]]:
    """Groups example indices into rows of total length <= max_len (best-fit decreasing).

    Args:
        lengths: Token count of each example; each must be <= max_len.
        max_len: Row capacity in tokens.

    Returns:
        Rows, each a list of example indices in ascending order.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (remaining capacity, row id)
    for i in order:
        if lengths[i] > max_len:
            raise ValueError(f"example {i} has {lengths[i]} tokens, more than max_len={max_len}")
        slot = bisect.bisect_left(free, (lengths[i], -1))
        if slot < len(free):
            remaining, row = free.pop(slot)
        else:
            remaining, row = max_len, len(rows)
            rows.append([])
        rows[row].append(i)
        bisect.insort(free, (remaining - lengths[i], row))
    return [sorted(r) for r in rows]


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, seed: int, group_factor: int = 50
) -> list[list[int]]:
    """Batches of similar-length examples: shuffle, sort within chunks of batch_size * group_factor, cut, shuffle."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * group_factor
    batches = []
    for start in range(0, len(order), chunk):
        group = sorted(order[start : start + chunk], key=lambda i: -lengths[i])
        batches += [group[j : j + batch_size] for j in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches


def collate_packed(rows: list[list[dict]], pad_id: int, pad_to_multiple_of: int = 8) -> dict[str, torch.Tensor]:
    """Concatenates the examples of each row; position ids restart per example and padding is its own segment.

    Args:
        rows: Per row, the examples (dicts with 1-D `input_ids` and `labels`) packed into it.
        pad_id: Token id used for padding.
        pad_to_multiple_of: The batch length is the longest row rounded up to this.

    Returns:
        input_ids, labels, position_ids: [B, T]; num_tokens: real tokens; num_positions: B * T.
    """
    longest = max(sum(len(ex["input_ids"]) for ex in row) for row in rows)
    length = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), length), dtype=torch.long)
    num_tokens = 0
    for b, row in enumerate(rows):
        offset = 0
        for ex in row:
            n = len(ex["input_ids"])
            input_ids[b, offset : offset + n] = ex["input_ids"]
            labels[b, offset : offset + n] = ex["labels"]
            labels[b, offset] = IGNORE_INDEX  # never predict this example from the previous one
            position_ids[b, offset : offset + n] = torch.arange(n)
            offset += n
        position_ids[b, offset:] = torch.arange(length - offset)
        num_tokens += offset
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "num_tokens": torch.tensor(num_tokens),
        "num_positions": torch.tensor(input_ids.numel()),
    }


def collate_padded(examples: list[dict], pad_id: int, pad_to_multiple_of: int = 8) -> dict[str, torch.Tensor]:
    """Right-pads examples to the longest in the batch; adds a 2-D attention mask."""
    longest = max(len(ex["input_ids"]) for ex in examples)
    length = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for b, ex in enumerate(examples):
        n = len(ex["input_ids"])
        input_ids[b, :n] = ex["input_ids"]
        labels[b, :n] = ex["labels"]
        attention_mask[b, :n] = 1
    return {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention_mask,
        "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),
        "num_tokens": attention_mask.sum(),
        "num_positions": torch.tensor(input_ids.numel()),
    }


def shard_batches(units: Sequence[list[int]], batch_size: int, rank: int, world_size: int, seed: int,
                  shuffle: bool = True, drop_last: bool = False) -> list[list[list[int]]]:
    """This rank's batches for one epoch; a global batch holds batch_size * world_size units.

    A unit is a packed row (list of example indices) or, for padding, a one-example list. Rank r takes units
    r, r + W, r + 2W, ... of every global batch, so the union over ranks equals the 1-process batch. The unit list is
    wrapped around to a multiple of world_size so every rank gets the same number of batches.
    """
    order = list(range(len(units)))
    if shuffle:
        random.Random(seed).shuffle(order)
    if drop_last:
        order = order[: len(order) - len(order) % (batch_size * world_size)]
    elif len(order) % world_size:
        order += order[: world_size - len(order) % world_size]
    global_size = batch_size * world_size
    batches = []
    for start in range(0, len(order), global_size):
        mine = order[start : start + global_size][rank::world_size]
        batches.append([units[i] for i in mine])
    return batches


class EpochBatchSampler(Sampler[list[int]]):
    """Yields this rank's batches (lists of unit indices into `units`) for `epoch`, starting at `start`."""

    def __init__(self, units: list[list[int]], batch_size: int, rank: int, world_size: int, seed: int,
                 shuffle: bool, drop_last: bool, grouped_lengths: Sequence[int] | None = None) -> None:
        self.units, self.batch_size, self.rank, self.world_size = units, batch_size, rank, world_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.grouped_lengths = grouped_lengths
        self.epoch, self.start = 0, 0

    def epoch_batches(self) -> list[list[list[int]]]:
        seed = self.seed + self.epoch
        if self.grouped_lengths is None:
            return shard_batches(self.units, self.batch_size, self.rank, self.world_size, seed, self.shuffle,
                                 self.drop_last)
        groups = length_grouped_batches(self.grouped_lengths, self.batch_size * self.world_size, seed)
        if self.drop_last:
            groups = [g for g in groups if len(g) == self.batch_size * self.world_size]
        # a short last group is wrapped so every rank gets at least one example
        return [[[i] for i in (g + g[: (-len(g)) % self.world_size])[self.rank :: self.world_size]] for g in groups]

    def __len__(self) -> int:
        return len(self.epoch_batches())

    def __iter__(self) -> Iterator[list[list[int]]]:
        yield from self.epoch_batches()[self.start :]


class ResumableLoader(DataLoader):
    """A DataLoader over an `EpochBatchSampler` whose position (epoch, batches handed out) is checkpointed.

    Batches are counted when they leave the loader, not when workers prefetch them, so a checkpoint taken after
    step n resumes at batch n + 1. A new iteration after the last batch of an epoch starts the next epoch (with
`limit_train_batches` an epoch is left unfinished, and the next one continues it).
    """

    batch_sampler: EpochBatchSampler

    def __iter__(self):
        sampler = self.batch_sampler
        if sampler.start >= len(sampler):  # the previous epoch was used up: begin the next one
            sampler.epoch, sampler.start = sampler.epoch + 1, 0
        for batch in super().__iter__():
            sampler.start += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.batch_sampler.epoch, "batches_seen": self.batch_sampler.start}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.epoch, self.batch_sampler.start = state["epoch"], state["batches_seen"]


def pack_sequences(sequences: Sequence[torch.Tensor], pad_id: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Packs token sequences into as few rows as the longest of them allows (the RL update's packed micro-batch).

    The rows are `pack_best_fit` + `collate_packed`'s, so attention stays inside each sequence as in SFT.

    Args:
        sequences: 1-D token id tensors.
        pad_id: Token id of the padding after the last sequence of a row.

    Returns:
        (`collate_packed`'s batch; its labels are the inputs, unused by RL) and [N, 2] (row, offset) of each
        sequence's first token in that batch.
    """
    lengths = [len(s) for s in sequences]
    rows = pack_best_fit(lengths, max(lengths))
    batch = collate_packed([[{"input_ids": sequences[i], "labels": sequences[i]} for i in row] for row in rows],
                           pad_id)
    where = torch.zeros(len(sequences), 2, dtype=torch.long)
    for r, row in enumerate(rows):
        offset = 0
        for i in row:
            where[i] = torch.tensor([r, offset])
            offset += lengths[i]
    return batch, where
