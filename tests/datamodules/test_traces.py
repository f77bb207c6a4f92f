"""TraceDataModule and packing: reading, caching, truncation, packing, sharding and mid-epoch resume."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from astro_pl.data.chat import render_example
from astro_pl.datamodules.packing import (
    IGNORE_INDEX,
    EpochBatchSampler,
    collate_packed,
    pack_best_fit,
    shard_batches,
)
from astro_pl.datamodules.traces import TraceDataModule, read_examples, tokenize_examples
from astro_pl.loading import load_tokenizer


def write_traces(path: Path, n: int = 40, seed: int = 0) -> Path:
    """Synthetic-arithmetic trace records in the search's format, of varied length."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
            steps = [f"Compute {b} * {c} = {b * c}."] * rng.randint(1, 6)
            trace = "\n\n".join(steps + [f"The answer is \\boxed{{{a + b * c}}}."])
            record = {"problem_id": f"p{i}", "problem": f"Evaluate {a} + {b} * {c}.", "gold": str(a + b * c),
                      "trace": trace, "kind": "direct", "num_backtracks": 0, "tree_id": f"p{i}"}
            f.write(json.dumps(record) + "\n")
    return path


@pytest.fixture
def traces(tmp_path) -> Path:
    return write_traces(tmp_path / "traces.jsonl")


def make_dm(tiny_model_dir, path, **kwargs) -> TraceDataModule:
    dm = TraceDataModule(tokenizer_path=str(tiny_model_dir), train_file=str(path), **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_pack_best_fit_respects_capacity_and_uses_every_example():
    lengths = [7, 3, 5, 2, 9, 1, 4, 4]
    rows = pack_best_fit(lengths, max_len=10)
    assert sorted(i for row in rows for i in row) == list(range(8))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    assert len(rows) == 4  # 39 tokens need at least 4 rows of 10; best fit finds 4: (9,1) (7,3) (5,4,...)...
    with pytest.raises(ValueError, match="more than max_len"):
        pack_best_fit([11], max_len=10)


def test_collate_packed_resets_positions_and_masks_example_boundaries():
    ex = [{"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([5, 6, 7])},
          {"input_ids": torch.tensor([8, 9]), "labels": torch.tensor([8, 9])}]
    batch = collate_packed([ex], pad_id=0, pad_to_multiple_of=8)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    # first token of each example and the padding are never targets
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9] + [IGNORE_INDEX] * 3]
    assert batch["num_tokens"].item() == 5 and batch["num_positions"].item() == 8


def test_shards_partition_the_one_process_batches():
    units = [[i] for i in range(10)]
    one = shard_batches(units, batch_size=4, rank=0, world_size=1, seed=3)
    two = [shard_batches(units, batch_size=2, rank=r, world_size=2, seed=3) for r in range(2)]
    assert len(two[0]) == len(two[1]) == len(one) == 3
    for step, batch in enumerate(one):
        assert sorted(map(tuple, batch)) == sorted(map(tuple, two[0][step] + two[1][step]))


def test_read_examples_names_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "x", "trace": "y"}\n{"problem": "x", "trace": 3}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: field 'trace' must be a string, is a int"):
        read_examples(bad, "problem", "trace")
    bad.write_text('\n{"problem": "x"}\n')  # the blank line counts: the error names the file's line
    with pytest.raises(ValueError, match=r"bad.jsonl:2: field 'trace' must be a string, is missing"):
        read_examples(bad, "problem", "trace")
    bad.write_text("{oops\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not a JSON record"):
        read_examples(bad, "problem", "trace")


def test_tokenises_once_into_a_cache_keyed_by_settings(tiny_model_dir, traces, monkeypatch):
    dm = make_dm(tiny_model_dir, traces, max_seq_len=256)
    caches = list((traces.parent / ".astro_cache").glob("*.pt"))
    assert len(caches) == 1
    # every example end to end in one tensor: loading costs per tensor, not per token
    data = torch.load(caches[0], weights_only=True)
    assert {k: v.dim() for k, v in data.items() if k != "stats"} == {"input_ids": 1, "labels": 1, "lengths": 1}
    assert data["lengths"].sum() == data["input_ids"].numel() == data["labels"].numel()
    # a second DataModule with the same settings reads the cache instead of tokenising, once (in setup, not in
    # prepare_data)
    monkeypatch.setattr("astro_pl.datamodules.traces.tokenize_examples", lambda *a: pytest.fail("re-tokenised"))
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    again = make_dm(tiny_model_dir, traces, max_seq_len=256)
    assert len(loads) == 1
    assert [e["input_ids"].tolist() for e in again.datasets["train"]] == [
        e["input_ids"].tolist() for e in dm.datasets["train"]
    ]
    monkeypatch.undo()
    make_dm(tiny_model_dir, traces, max_seq_len=256, loss_on="assistant")
    assert len(list((traces.parent / ".astro_cache").glob("*.pt"))) == 2


def test_loss_on_assistant_masks_exactly_the_prompt(tiny_model_dir, traces):
    full = make_dm(tiny_model_dir, traces, max_seq_len=256).datasets["train"][0]
    masked = make_dm(tiny_model_dir, traces, max_seq_len=256, loss_on="assistant").datasets["train"][0]
    assert torch.equal(full["labels"], full["input_ids"])
    tok = full_tok = make_dm(tiny_model_dir, traces, max_seq_len=256).tokenizer
    prompt_len = (masked["labels"] == IGNORE_INDEX).sum().item()
    assert tok.decode(masked["input_ids"][prompt_len:]).endswith(full_tok.eos_token)
    assert "<|assistant|>" in tok.decode(masked["input_ids"][:prompt_len])
    assert "<|assistant|>" not in tok.decode(masked["input_ids"][prompt_len:])


def test_over_long_examples_are_truncated_or_dropped_and_counted(tiny_model_dir, traces):
    lengths = [len(e["input_ids"]) for e in make_dm(tiny_model_dir, traces, max_seq_len=4096).datasets["train"]]
    limit = sorted(lengths)[len(lengths) // 2]
    over = sum(n > limit for n in lengths)
    assert over > 0
    cut = make_dm(tiny_model_dir, traces, max_seq_len=limit, overflow="truncate")
    assert cut.stats == {"train/examples": 40, "train/truncated": over, "train/dropped": 0}
    assert max(len(e["input_ids"]) for e in cut.datasets["train"]) == limit
    drop = make_dm(tiny_model_dir, traces, max_seq_len=limit, overflow="drop")
    assert drop.stats == {"train/examples": 40 - over, "train/truncated": 0, "train/dropped": over}


@pytest.mark.parametrize("packing", [True, False])
def test_mid_epoch_resume_continues_with_the_next_unseen_batch(tiny_model_dir, traces, packing):
    dm = make_dm(tiny_model_dir, traces, max_seq_len=128, batch_size=2, packing=packing, seed=7)
    uninterrupted = dm.train_dataloader()
    full = [b["input_ids"] for _ in range(2) for b in uninterrupted]  # two epochs
    loader = dm.train_dataloader()
    it = iter(loader)
    seen = [next(it)["input_ids"] for _ in range(3)]
    state = loader.state_dict()
    resumed = dm.train_dataloader()
    resumed.load_state_dict(state)
    rest = [b["input_ids"] for _ in range(2) for b in resumed]  # rest of epoch 0, then epoch 1
    assert len(seen + rest) == len(full)
    assert all(torch.equal(a, b) for a, b in zip(seen + rest, full, strict=True))
    epoch0, epoch1 = full[: len(full) // 2], full[len(full) // 2 :]
    assert any(not torch.equal(a, b) for a, b in zip(epoch0, epoch1, strict=True))  # each epoch has its own shuffle


def test_sampler_is_deterministic():
    units = [[i] for i in range(9)]
    a = EpochBatchSampler(units, 2, 0, 1, seed=1, shuffle=True, drop_last=False)
    b = EpochBatchSampler(units, 2, 0, 1, seed=1, shuffle=True, drop_last=False)
    assert list(a) == list(b) and len(a) == 5


def test_search_config_runs_the_search_once(tiny_model_dir, tmp_path):
    config = tmp_path / "search.yaml"
    config.write_text(
        f"out_dir: {tmp_path / 'overridden'}\nproposer: task\nseed: 0\nlimit: 4\n"
        "task: {class_path: astro_pl.tasks.ArithmeticTask, init_args: {min_operations: 2, max_operations: 3}}\n"
        "search: {iterations: 6, num_children: 2, num_rollouts: 2, max_depth: 8}\n"
    )
    out = tmp_path / "search_out"
    dm = TraceDataModule(tokenizer_path=str(tiny_model_dir), search_config=str(config),
                         search_output_dir=str(out), max_seq_len=512)
    dm.prepare_data()
    dm.setup("fit")
    records = [json.loads(line) for line in (out / "traces.jsonl").open()]
    assert len(dm.datasets["train"]) == len(records) > 0
    assert dm.tokenizer.decode(dm.datasets["train"][0]["input_ids"]).count(records[0]["problem"]) == 1
    mtime = (out / "traces.jsonl").stat().st_mtime_ns
    TraceDataModule(tokenizer_path=str(tiny_model_dir), search_config=str(config),
                    search_output_dir=str(out), max_seq_len=512).prepare_data()
    assert (out / "traces.jsonl").stat().st_mtime_ns == mtime  # cached: not searched again


def test_exactly_one_source_is_required(tiny_model_dir):
    with pytest.raises(ValueError, match="exactly one of --data.train_file and --data.search_config"):
        TraceDataModule(tokenizer_path=str(tiny_model_dir))


def test_max_train_examples_takes_a_seeded_subset(tiny_model_dir, traces):
    every = [e["input_ids"].tolist() for e in make_dm(tiny_model_dir, traces, max_seq_len=4096).datasets["train"]]
    first = make_dm(tiny_model_dir, traces, max_seq_len=4096, max_train_examples=15)
    again = make_dm(tiny_model_dir, traces, max_seq_len=4096, max_train_examples=15)
    subset = [e["input_ids"].tolist() for e in first.datasets["train"]]
    assert len(subset) == 15 and first.stats["train/examples"] == 15
    assert subset == [e["input_ids"].tolist() for e in again.datasets["train"]]
    assert all(ex in every for ex in subset) and subset != every[:15]


def test_chunked_tokenising_matches_one_example_at_a_time(tiny_model_dir, monkeypatch):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    # repeated problems (their prompt is rendered once) across chunk boundaries (chunks of 3)
    pairs = [(f"Evaluate {i % 4} + 1.", f"Compute {i % 4} + 1 = {i % 4 + 1}.") for i in range(8)]
    monkeypatch.setattr("astro_pl.datamodules.traces.TOKENIZE_CHUNK", 3)
    for loss_on in ("assistant", "all"):
        expected = []
        for problem, solution in pairs:
            prompt, completion = render_example(tokenizer, problem, solution, "Be brief.")
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
            labels = [IGNORE_INDEX] * len(prompt_ids) if loss_on == "assistant" else prompt_ids
            expected.append((prompt_ids + completion_ids, labels + completion_ids))
        assert list(tokenize_examples(tokenizer, pairs, "Be brief.", loss_on)) == expected
