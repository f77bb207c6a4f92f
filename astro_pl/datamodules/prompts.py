"""RL prompts: a task's problems drawn by a resumable sampler (the RL module renders them with its tokenizer).

The training stream is endless: epoch e visits the problems in a permutation seeded by (seed, e), and every rank
takes its own slice of each draw, so ranks never see the same prompt in a step. The sampler's whole state is
one integer (prompts drawn so far, summed over ranks); it is saved in checkpoints through the DataModule's
`state_dict`, so a resumed run continues with exactly the prompts an uninterrupted run would have drawn.
Validation is the held-out set, in order.
"""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset
from typing_extensions import override

from astro_pl.data.problems import Problem
from astro_pl.seeds import derive_seed
from astro_pl.tasks.base import Task, describe_task, flat_problems


class PromptSampler:
    """Endless, seeded, resumable order over `num_items` problems, sharded across ranks."""

    def __init__(self, num_items: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if num_items < 1:
            raise ValueError("the prompt set is empty")
        self.num_items, self.seed, self.rank, self.world_size = num_items, seed, rank, world_size
        self.position = 0
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _index(self, i: int) -> int:
        epoch, offset = divmod(i, self.num_items)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, "prompt-order", epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.num_items, generator=generator)
        return int(self._perm[offset])

    def draw(self, k: int) -> list[int]:
        """The next `k` indices for this rank; every rank must call it with the same `k`."""
        start = self.position + self.rank * k
        indices = [self._index(i) for i in range(start, start + k)]
        self.position += k * self.world_size
        return indices


class _PromptStream(IterableDataset):
    def __init__(self, items: list[Problem], sampler: PromptSampler, batch_size: int):
        self.items, self.sampler, self.batch_size = items, sampler, batch_size

    def __iter__(self) -> Iterator[list[Problem]]:
        while True:
            yield [self.items[i] for i in self.sampler.draw(self.batch_size)]


class _ListDataset(Dataset):
    def __init__(self, items: list[Problem]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Problem:
        return self.items[i]


def _as_list(batch: list[Problem]) -> list[Problem]:
    return batch


class PromptDataModule(L.LightningDataModule):
    """Problems for RL: training batches from an endless resumable stream, validation from a held-out set.

    Args:
        task: The domain (class_path + init_args): its "train" split gives the prompts, its "val" split the
            held-out problems (none: no validation); the RL module renders prompts and checks answers with it.
        batch_size: Prompts per step per rank (B); each gets `grpo.group_size` samples.
        val_batch_size: Prompts per validation batch.
        train_limit: Keep only the first problems of the training split (after `train_skip`).
        train_skip: Leave out the first problems of the training split: those the search (and so SFT) used, when
            RL should sample problems the policy was not fine-tuned on.
        val_limit: Keep only the first problems of the validation split.
        seed: Seed of the training order.
    """

    def __init__(
        self,
        task: Task,
        batch_size: int = 4,
        val_batch_size: int = 16,
        train_limit: int | None = None,
        train_skip: int = 0,
        val_limit: int | None = None,
        seed: int = 0,
    ):
        super().__init__()
        for flag, value in (("batch_size", batch_size), ("val_batch_size", val_batch_size)):
            if value < 1:
                raise ValueError(f"--data.{flag} must be >= 1, got {value}")
        for flag, value in (("train_skip", train_skip), ("train_limit", train_limit or 0)):
            if value < 0:
                raise ValueError(f"--data.{flag} must be >= 0, got {value}")
        self.save_hyperparameters(ignore=["task"])
        self.hparams["task"] = describe_task(task)
        self.task = task
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.train_limit, self.train_skip, self.val_limit, self.seed = train_limit, train_skip, val_limit, seed
        self.train_items: list[Problem] = []
        self.val_items: list[Problem] = []
        self.sampler: PromptSampler | None = None
        self._pending_position = 0

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.sampler is not None:
            return
        self.train_items = flat_problems(self.task, "train")[self.train_skip:][:self.train_limit]
        if not self.train_items:
            raise ValueError(f"--data.task: the task's training split has no problem after --data.train_skip "
                             f"{self.train_skip}")
        self.val_items = flat_problems(self.task, "val", self.val_limit)
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        self.sampler = PromptSampler(len(self.train_items), self.seed, rank, world)
        self.sampler.position = self._pending_position

    @override
    def train_dataloader(self) -> DataLoader:
        return DataLoader(_PromptStream(self.train_items, self.sampler, self.batch_size), batch_size=None)

    @override
    def val_dataloader(self) -> DataLoader | list:
        if not self.val_items:
            return []
        return DataLoader(_ListDataset(self.val_items), batch_size=self.val_batch_size, collate_fn=_as_list)

    @override
    def state_dict(self) -> dict:
        return {"position": self.sampler.position if self.sampler else self._pending_position}

    @override
    def load_state_dict(self, state: dict) -> None:
        self._pending_position = int(state["position"])
        if self.sampler is not None:
            self.sampler.position = self._pending_position
