"""SFT data: search traces (or any problem + solution JSONL) rendered, tokenised once, cached and batched.

Each record becomes (prompt, completion) as `chat.render_example` renders it (problem = user turn, trace =
assistant turn), the same format search, RL and evaluation use. Tokenisation runs once in `prepare_data` (rank 0)
and is cached in a .pt file keyed by the data file's hash, the tokenizer and every setting that changes the tokens.
Given a search config instead of a trace file, `prepare_data` first runs that search once and trains on the traces
it writes.

ASTRO trains on all tokens (no prompt masking); `loss_on="assistant"` masks the prompt. Examples are packed into
rows (see `packing.py`) or, with `packing: false`, padded in length-grouped batches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from tqdm import tqdm

from astro_pl.data.chat import render_completion, render_prompt
from astro_pl.datamodules.packing import (
    IGNORE_INDEX,
    EpochBatchSampler,
    ResumableLoader,
    collate_packed,
    collate_padded,
    pack_best_fit,
)
from astro_pl.errors import check_model_path
from astro_pl.loading import load_tokenizer
from astro_pl.runfiles import numbered_records

log = logging.getLogger(__name__)

TRACES_FILENAME = "traces.jsonl"  # what `astro search` writes into its --output_dir
CACHE_FORMAT = "flat-1"  # in the cache key: a cache written in an older layout is not read


def read_examples(path: str | Path, problem_field: str, solution_field: str) -> list[tuple[str, str]]:
    """(problem, solution) pairs of a JSONL file; a bad line raises an error naming the file, line and field."""
    pairs = []
    for line_no, record in numbered_records(path, missing_ok=False):
        for name in (problem_field, solution_field):
            if not isinstance(record.get(name), str):
                found = "missing" if name not in record else f"a {type(record[name]).__name__}"
                raise ValueError(f"{path}:{line_no}: field {name!r} must be a string, is {found}")
        pairs.append((record[problem_field], record[solution_field]))
    if not pairs:
        raise ValueError(f"{path}: no examples")
    return pairs


TOKENIZE_CHUNK = 4096
"""Examples encoded per call of the (Rust, multi-threaded) batch encoder."""


def tokenize_examples(tokenizer, pairs: list[tuple[str, str]], system_prompt: str | None,
                      loss_on: str) -> Iterator[tuple[list[int], list[int]]]:
    """Token ids and labels (-100 on the prompt when loss_on == "assistant") of each (problem, solution) pair, in
    order. Encoded in chunks, and each problem's prompt rendered once: a search writes several traces per problem,
    and one call per example made tokenising 128,000 graph traces take two minutes."""
    prompts: dict[str, str] = {}
    for start in range(0, len(pairs), TOKENIZE_CHUNK):
        chunk = pairs[start:start + TOKENIZE_CHUNK]
        rendered = []
        for problem, solution in chunk:
            if problem not in prompts:
                prompts[problem] = render_prompt(tokenizer, problem, system_prompt)
            rendered.append((prompts[problem], render_completion(tokenizer, solution)))
        prompt_ids = tokenizer([p for p, _ in rendered], add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer([c for _, c in rendered], add_special_tokens=False)["input_ids"]
        for prompt, completion in zip(prompt_ids, completion_ids, strict=True):
            labels = [IGNORE_INDEX] * len(prompt) if loss_on == "assistant" else list(prompt)
            yield prompt + completion, labels + completion


def fit_length(ids: list[int], labels: list[int], max_len: int, overflow: str) -> tuple[list[int], list[int]] | None:
    """Truncates an over-long example, or returns None to drop it."""
    if len(ids) <= max_len:
        return ids, labels
    return (ids[:max_len], labels[:max_len]) if overflow == "truncate" else None


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    extra = json.dumps([tokenizer.chat_template, tokenizer.bos_token, tokenizer.eos_token], default=str)
    return hashlib.sha256((body + extra).encode()).hexdigest()


def file_hash(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class TraceDataModule(L.LightningDataModule):
    """Trace JSONL -> tokenised, cached, packed (or length-grouped) SFT batches with a resumable loader.

    Args:
        tokenizer_path: Tokenizer directory or hub name (usually the model's).
        train_file: Training JSONL (the `traces.jsonl` of `astro search`, or any file with the two fields below).
        val_file: Optional validation JSONL in the same format (`astro validate`, and validation during fit).
        test_file: Optional test JSONL in the same format (`astro test`).
        search_config: Instead of `train_file`: a configs/search YAML; `prepare_data` runs the search once.
        search_output_dir: Where that search writes (and where its traces are looked for before running it again).
        problem_field: JSON key of the problem text.
        solution_field: JSON key of the solution text ("trace" in search output, "solution" in MATH files).
        system_prompt: Optional system prompt given to the chat template.
        loss_on: "all" tokens (ASTRO) or the "assistant" turn only.
        max_seq_len: Longest example, and the row length when packing.
        overflow: Over-long examples are "truncate"d to max_seq_len or "drop"ped; both are counted in the log.
        packing: Pack examples into rows of max_seq_len; false pads batches instead.
        group_by_length: Without packing, batch examples of similar length (little padding). False mixes lengths:
            where length follows the trace kind (direct vs with backtracks), grouped batches hold one kind each.
        batch_size: Rows (packing) or examples (padding) per device per step.
        shuffle: Shuffle the training batches each epoch (deterministically, from `seed`).
        seed: Seed of the shuffle; epoch e uses seed + e.
        drop_last: Drop the last incomplete global batch.
        num_workers: DataLoader workers (collation is cheap; 0 is usually fine).
        cache_dir: Where tokenised data is cached; defaults to `.astro_cache` next to the data file.
        max_train_examples: Train on a seeded random subset of this many examples (all when None), e.g. to give
            the arms of an ablation the same number of examples.
    """

    def __init__(
        self,
        tokenizer_path: str,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        search_config: str | None = None,
        search_output_dir: str = "runs/sft_search",
        problem_field: str = "problem",
        solution_field: str = "trace",
        system_prompt: str | None = None,
        loss_on: Literal["all", "assistant"] = "all",
        max_seq_len: int = 8192,
        overflow: Literal["truncate", "drop"] = "truncate",
        packing: bool = True,
        group_by_length: bool = True,
        batch_size: int = 8,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_workers: int = 0,
        cache_dir: str | None = None,
        max_train_examples: int | None = None,
    ) -> None:
        super().__init__()
        if (train_file is None) == (search_config is None):
            raise ValueError("set exactly one of --data.train_file and --data.search_config")
        if max_seq_len < 2 or batch_size < 1:
            raise ValueError("--data.max_seq_len must be >= 2 and --data.batch_size >= 1")
        self.save_hyperparameters()
        self.tokenizer_path = tokenizer_path
        self.train_file, self.val_file, self.test_file = train_file, val_file, test_file
        self.search_config, self.search_output_dir = search_config, search_output_dir
        self.problem_field, self.solution_field, self.system_prompt = problem_field, solution_field, system_prompt
        self.loss_on, self.max_seq_len, self.overflow, self.packing = loss_on, max_seq_len, overflow, packing
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.num_workers, self.cache_dir, self.group_by_length = num_workers, cache_dir, group_by_length
        if max_train_examples is not None and max_train_examples < 1:
            raise ValueError(f"--data.max_train_examples must be >= 1, got {max_train_examples}")
        self.max_train_examples = max_train_examples
        self.datasets: dict[str, list[dict]] = {}
        self.stats: dict[str, int] = {}
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            check_model_path(self.tokenizer_path, "--data.init_args.tokenizer_path")
            self._tokenizer = load_tokenizer(self.tokenizer_path)
        return self._tokenizer

    def train_path(self) -> Path:
        if self.train_file is not None:
            return Path(self.train_file)
        return Path(self.search_output_dir) / TRACES_FILENAME

    # ---- preparation (rank 0): search if needed, tokenise into the cache ----
    def prepare_data(self) -> None:
        if self.search_config is not None and not self.train_path().exists():
            self.run_search()
        for split in self.splits():
            self.write_cache(split)

    def run_search(self) -> None:
        from astro_pl.search.run import search_config

        rank_zero_info(f"no traces at {self.train_path()}: running the search in {self.search_config}")
        search_config(self.search_config, self.search_output_dir)
        if not self.train_path().exists():
            raise FileNotFoundError(f"search with {self.search_config} wrote no {self.train_path()}")

    def splits(self) -> dict[str, Path]:
        paths = {"train": self.train_path()}
        if self.val_file is not None:
            paths["val"] = Path(self.val_file)
        if self.test_file is not None:
            paths["test"] = Path(self.test_file)
        return paths

    def cache_path(self, path: Path) -> Path:
        settings = [CACHE_FORMAT, self.problem_field, self.solution_field, self.system_prompt, self.loss_on,
                    self.max_seq_len, self.overflow, tokenizer_fingerprint(self.tokenizer), file_hash(path)]
        key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:20]
        root = Path(self.cache_dir) if self.cache_dir else path.parent / ".astro_cache"
        return root / f"{path.stem}-{key}.pt"

    def write_cache(self, split: str) -> Path:
        """Tokenises `split` into its cache unless the cache is there; returns the cache's path.

        The cache holds every example's tokens and labels end to end in two tensors, and their lengths in a third:
        a tensor per example made loading 128,000 traces take 50 s (the unpickler's cost is per tensor), now under a
        second.
        """
        path = self.splits()[split]
        if not path.exists():
            raise FileNotFoundError(f"--data: {split} file {path} does not exist")
        cache = self.cache_path(path)
        if cache.exists():
            return cache
        ids, labels, stats = [], [], {"examples": 0, "truncated": 0, "dropped": 0}
        pairs = read_examples(path, self.problem_field, self.solution_field)
        encoded = tokenize_examples(self.tokenizer, pairs, self.system_prompt, self.loss_on)
        for example_ids, example_labels in tqdm(encoded, total=len(pairs), desc=f"tokenising {path.name}",
                                                disable=len(pairs) < 1000):
            kept = fit_length(example_ids, example_labels, self.max_seq_len, self.overflow)
            if kept is None:
                stats["dropped"] += 1
                continue
            stats["truncated"] += len(kept[0]) < len(example_ids)
            stats["examples"] += 1
            ids.append(kept[0])
            labels.append(kept[1])
        if not ids:
            raise ValueError(f"{path}: every example is longer than --data.max_seq_len={self.max_seq_len}")
        data = {"input_ids": torch.tensor([t for row in ids for t in row]),
                "labels": torch.tensor([t for row in labels for t in row]),
                "lengths": torch.tensor([len(row) for row in ids]), "stats": stats}
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        torch.save(data, tmp)
        os.replace(tmp, cache)  # atomic: a reader sees the whole cache or none
        return cache

    def read_cache(self, split: str) -> tuple[list[dict[str, torch.Tensor]], dict[str, int]]:
        """`split`'s examples ({"input_ids", "labels"}, views into the cache's tensors) and its tokenising stats."""
        data = torch.load(self.write_cache(split), weights_only=True)
        lengths = data["lengths"].tolist()
        rows = zip(data["input_ids"].split(lengths), data["labels"].split(lengths), strict=True)
        examples = [{"input_ids": ids, "labels": labels} for ids, labels in rows]
        return examples, data["stats"]

    # ---- every rank ----
    def setup(self, stage: str | None = None) -> None:
        for split in self.splits():
            if split not in self.datasets:
                self.datasets[split], stats = self.read_cache(split)
                self.stats.update({f"{split}/{k}": v for k, v in stats.items()})
        train = self.datasets["train"]
        if self.max_train_examples is not None and len(train) > self.max_train_examples:
            keep = sorted(random.Random(self.seed).sample(range(len(train)), self.max_train_examples))
            self.datasets["train"] = [train[i] for i in keep]
            self.stats["train/examples"] = len(keep)
        rank_zero_info(
            f"SFT data: {self.stats} (over-long examples beyond {self.max_seq_len} tokens were {self.overflow}d)"
        )
        if "val" not in self.datasets and stage == "fit" and self.trainer is not None:
            # no validation data, no validation: an empty loader would make Lightning warn at every validation
            self.trainer.limit_val_batches = 0

    def make_loader(self, split: str, shuffle: bool) -> ResumableLoader:
        examples = self.datasets[split]
        lengths = [len(ex["input_ids"]) for ex in examples]
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if self.packing:
            units = pack_best_fit(lengths, self.max_seq_len)
            sampler = EpochBatchSampler(units, self.batch_size, rank, world, self.seed, shuffle, self.drop_last)

            def collate(rows):
                return collate_packed([[examples[i] for i in row] for row in rows], self.tokenizer.pad_token_id)
        else:
            units = [[i] for i in range(len(examples))]
            grouped = lengths if shuffle and self.group_by_length else None
            sampler = EpochBatchSampler(units, self.batch_size, rank, world, self.seed, shuffle, self.drop_last,
                                        grouped_lengths=grouped)

            def collate(rows):
                return collate_padded([examples[row[0]] for row in rows], self.tokenizer.pad_token_id)

        return ResumableLoader(_Units(), batch_sampler=sampler, collate_fn=collate, num_workers=self.num_workers)

    def train_dataloader(self) -> ResumableLoader:
        return self.make_loader("train", self.shuffle)

    def val_dataloader(self) -> ResumableLoader:
        if "val" not in self.datasets:
            raise ValueError("`astro validate` needs --data.val_file")
        return self.make_loader("val", False)

    def test_dataloader(self) -> ResumableLoader:
        if "test" not in self.datasets:
            raise ValueError("`astro test` needs --data.test_file")
        return self.make_loader("test", False)


class _Units(torch.utils.data.Dataset):
    """The sampler already yields units (lists of example indices); collation looks the examples up."""

    def __getitem__(self, unit: list[int]) -> list[int]:
        return unit
