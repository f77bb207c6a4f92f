"""RL prompts: problems with gold answers, rendered with the chat template, drawn by a resumable sampler.

The training stream is endless: epoch e visits the problems in a permutation seeded by (seed, e), and every rank
takes its own slice of each draw, so ranks never see the same prompt in a step. The sampler's whole state is
one integer (prompts drawn so far, summed over ranks); it is saved in checkpoints through the DataModule's
`state_dict`, so a resumed run continues with exactly the prompts an uninterrupted run would have drawn.
Validation is the held-out set, in order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from astro_pl.datamodules.chat import render_prompt
from astro_pl.datamodules.problems import Problem, load_benchmark, synthetic_arithmetic


class PromptItem(NamedTuple):
    """One problem and its rendered prompt."""

    problem: Problem
    prompt: str


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
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.num_items, generator=generator)
        return int(self._perm[offset])

    def draw(self, k: int) -> list[int]:
        """The next `k` indices for this rank; every rank must call it with the same `k`."""
        start = self.position + self.rank * k
        indices = [self._index(i) for i in range(start, start + k)]
        self.position += k * self.world_size
        return indices


class _PromptStream(IterableDataset):
    def __init__(self, items: list[PromptItem], sampler: PromptSampler, batch_size: int):
        self.items, self.sampler, self.batch_size = items, sampler, batch_size

    def __iter__(self) -> Iterator[list[PromptItem]]:
        while True:
            yield [self.items[i] for i in self.sampler.draw(self.batch_size)]


class _ListDataset(Dataset):
    def __init__(self, items: list[PromptItem]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> PromptItem:
        return self.items[i]


def _as_list(batch: list[PromptItem]) -> list[PromptItem]:
    return batch


def load_problem_set(source: str, num_synthetic: int, seed: int, limit: int | None, **synthetic) -> list[Problem]:
    """"synthetic" (seeded arithmetic, `synthetic` = its difficulty knobs), a benchmark name from
    `load_benchmark`, a file path or "hf:NAME[:SPLIT]"."""
    if source == "synthetic":
        return synthetic_arithmetic(num_synthetic, seed=seed, **synthetic)[:limit]
    return load_benchmark(source, limit=limit)


class PromptDataModule(L.LightningDataModule):
    """Prompts for RL: training batches from an endless resumable stream, validation from a held-out set.

    Args:
        tokenizer_path: Tokenizer directory whose chat template renders the prompts (usually the policy's).
        train: "synthetic", a benchmark name (e.g. "math_train"), a .jsonl/.json/.parquet file or "hf:NAME[:SPLIT]".
        val: Held-out problems in the same forms; None takes "synthetic" with `val_seed` when `train` is
            synthetic, and no validation otherwise.
        batch_size: Prompts per step per rank (B); each gets `group_size` samples.
        val_batch_size: Prompts per validation batch.
        num_synthetic: Size of the synthetic training set.
        num_val: Size of the synthetic validation set, or the most validation problems read.
        train_limit: Keep only the first problems of `train`.
        seed: Seed of the training order (and of the synthetic training set).
        val_seed: Seed of the synthetic validation set (differs from `seed`, so it is held out).
        system_prompt: Optional system turn.
        min_operations: Fewest operators per synthetic expression (difficulty).
        max_operations: Most operators per synthetic expression.
        operand_max: Largest synthetic operand.
        operators: Operators of the synthetic expressions ("+-*", or "+-" for tiny models).
    """

    def __init__(
        self,
        tokenizer_path: str,
        train: str = "synthetic",
        val: str | None = None,
        batch_size: int = 4,
        val_batch_size: int = 16,
        num_synthetic: int = 512,
        num_val: int = 32,
        train_limit: int | None = None,
        seed: int = 0,
        val_seed: int = 1_000_003,
        system_prompt: str | None = None,
        min_operations: int = 2,
        max_operations: int = 3,
        operand_max: int = 9,
        operators: str = "+-*",
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"--data.batch_size must be >= 1, got {batch_size}")
        if val_batch_size < 1:
            raise ValueError(f"--data.val_batch_size must be >= 1, got {val_batch_size}")
        self.save_hyperparameters()
        self.tokenizer_path, self.train_source, self.val_source = tokenizer_path, train, val
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.num_synthetic, self.num_val, self.train_limit = num_synthetic, num_val, train_limit
        self.seed, self.val_seed, self.system_prompt = seed, val_seed, system_prompt
        self.synthetic = dict(
            min_operations=min_operations, max_operations=max_operations, operand_max=operand_max, operators=operators
        )
        self.train_items: list[PromptItem] = []
        self.val_items: list[PromptItem] = []
        self.sampler: PromptSampler | None = None
        self._pending_position = 0

    def _render(self, problems: list[Problem], tokenizer) -> list[PromptItem]:
        return [PromptItem(p, render_prompt(tokenizer, p.problem, self.system_prompt)) for p in problems]

    def setup(self, stage: str | None = None) -> None:
        if self.sampler is not None:
            return
        from astro_pl.modules.models import load_tokenizer

        tokenizer = load_tokenizer(self.tokenizer_path)
        train = load_problem_set(self.train_source, self.num_synthetic, self.seed, self.train_limit, **self.synthetic)
        self.train_items = self._render(train, tokenizer)
        val_source = self.val_source or ("synthetic" if self.train_source == "synthetic" else None)
        if val_source == "synthetic":
            val = synthetic_arithmetic(self.num_val, seed=self.val_seed, **self.synthetic)
            self.val_items = self._render(val, tokenizer)
        elif val_source:
            self.val_items = self._render(load_benchmark(val_source, limit=self.num_val), tokenizer)
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        self.sampler = PromptSampler(len(self.train_items), self.seed, rank, world)
        self.sampler.position = self._pending_position

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_PromptStream(self.train_items, self.sampler, self.batch_size), batch_size=None)

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_items:
            return []
        return DataLoader(_ListDataset(self.val_items), batch_size=self.val_batch_size, collate_fn=_as_list)

    def state_dict(self) -> dict:
        return {"position": self.sampler.position if self.sampler else self._pending_position}

    def load_state_dict(self, state: dict) -> None:
        self._pending_position = int(state["position"])
        if self.sampler is not None:
            self.sampler.position = self._pending_position
