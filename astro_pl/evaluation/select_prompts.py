"""`astro select-prompts`: the paper's RL prompt selection, prompts the current policy solves only sometimes.

    astro select-prompts --config configs/select_prompts/synthetic.yaml [--shard 0/4]
    astro select-prompts --merge runs/select_prompts/synthetic     # after all shards

The candidates are the `split` problem sets of a task (default: its RL training prompts). Each gets `num_samples`
(G) samples from the policy through any rollout engine, in batches; its pass rate is the share of samples the
task's checker accepts, where a truncated sample (finish_reason "length") counts as wrong (a cut-off answer has no
final answer), as RL's `TaskCorrectness` scores it. GRPO learns nothing from a prompt whose G rewards are all
equal, so the paper trains on ~8.7K "moderately hard" prompts; here those with `min_pass_rate < rate <=
max_pass_rate` are written to `selected.jsonl` (the `Problem` fields, one per line): a problem file that RL
trains on as a task's training source, e.g. in the RL config (MathTask's checker also accepts integer answers)

    data:
      init_args:
        task: {class_path: astro_pl.tasks.MathTask,
               init_args: {train: [runs/select_prompts/synthetic/selected.jsonl], val: [], test: []}}

Resumable: one record per prompt is appended to `scores.jsonl` as its batch finishes; a rerun cuts a torn last
line, skips the prompts already scored and refuses other scoring settings (the band may change: it only selects).
Prompt i of the run is sampled with seed `seed + i`, so its samples do not depend on batching, resuming or
sharding. A shard (`--shard I/N`, the contiguous block of prompts `astro eval` uses) writes
`scores.shard-I-of-N.jsonl`; `--merge` combines all N into the files an unsharded run writes.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from astro_pl.data.problems import Problem
from astro_pl.loading import load_tokenizer
from astro_pl.options import parse_dataclass
from astro_pl.rollout import EngineArgs, RolloutEngine, SamplingArgs, build_engine
from astro_pl.rollout.base import Completion
from astro_pl.runfiles import append_jsonl, drop_torn_tail, read_jsonl
from astro_pl.shards import complete_shards, parse_shard, shard_range
from astro_pl.tasks.base import Task, describe_task

SCORED = ("split", "model", "limit", "num_samples", "temperature", "top_p", "max_tokens", "seed")
"""Options besides the task and engine that change a prompt's score; the others (batch size, band, output) may
change when a run resumes."""


@dataclass
class SelectArgs:
    """Which policy scores which candidate prompts, and which pass rates are kept."""

    task: Task | None = None
    """The domain (class_path + init_args): its `split` problem sets are the candidates, its checker scores them."""
    split: Literal["train", "val", "test"] = "train"
    """Which of the task's splits holds the candidates."""
    model: str | None = None
    """The current policy: a Hugging Face model folder (e.g. the SFT export) or hub name."""
    engine: EngineArgs = field(default_factory=EngineArgs)
    """Rollout engine (`kind`: vllm or hf, dtype, max_model_len, ...); its model defaults to `model`."""
    limit: int | None = None
    """Only the first `limit` candidates of each problem set."""
    num_samples: int = 8
    """Samples per prompt (G); the pass rate is correct samples / G."""
    temperature: float = 1.0
    """Sampling temperature; RL's rollout temperature, so the rate predicts RL's group rewards."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    max_tokens: int = 1024
    """Most new tokens per sample (RL's budget); a sample cut off here counts as wrong."""
    seed: int = 0
    """Prompt i of the run is sampled with seed `seed + i`."""
    min_pass_rate: float = 0.0
    """Keep prompts whose pass rate is above this (exclusive: the default drops prompts never solved)."""
    max_pass_rate: float = 0.75
    """... and at most this (inclusive: the default drops prompts solved 7 or 8 times in 8)."""
    batch_size: int = 32
    """Prompts per engine call."""
    out_dir: str = "runs/select_prompts"
    """Output folder: scores.jsonl, selected.jsonl, summary.json."""
    shard: str | None = None
    """Score only shard I of N ("I/N", 0-based); combine the shards with `--merge`."""
    merge: str | None = None
    """Instead of scoring, combine the shard files in this folder and select."""

    def __post_init__(self) -> None:
        if not 0 <= self.min_pass_rate < self.max_pass_rate <= 1:
            raise ValueError("need 0 <= --min_pass_rate < --max_pass_rate <= 1, got "
                             f"{self.min_pass_rate} and {self.max_pass_rate}")
        if self.merge:
            return
        if not self.model:
            raise ValueError("--model is required (the policy: a Hugging Face model folder or hub name)")
        if self.task is None:
            raise ValueError("--task is required (e.g. --task astro_pl.tasks.MathTask)")
        for flag in ("num_samples", "max_tokens", "batch_size"):
            if getattr(self, flag) < 1:
                raise ValueError(f"--{flag} must be >= 1, got {getattr(self, flag)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")
        if self.shard is not None:
            parse_shard(self.shard)


# ---- pure parts --------------------------------------------------------------------------------------------


def sample_correct(task: Task, completion: Completion, problem: Problem) -> bool:
    """A sample is correct when it finished (not cut off at the token limit) and the task accepts its answer."""
    return completion.finish_reason != "length" and task.is_correct(completion.text, problem)


def in_band(pass_rate: float, min_pass_rate: float, max_pass_rate: float) -> bool:
    """min_pass_rate < pass_rate <= max_pass_rate."""
    return min_pass_rate < pass_rate <= max_pass_rate


def select_in_band(records: Sequence[dict], min_pass_rate: float, max_pass_rate: float) -> list[dict]:
    """The problems (`Problem` fields) of the score records in the band, in record order."""
    return [r["problem"] for r in records if in_band(r["pass_rate"], min_pass_rate, max_pass_rate)]


def consecutive_batches(indices: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Sorted `indices` in batches of at most `batch_size` consecutive integers: prompt j of an engine call is
    seeded `seed + first + j`, so a batch with a gap (a prompt scored before a resume) would shift the seeds."""
    batch: list[int] = []
    for index in sorted(indices):
        if batch and (len(batch) == batch_size or index != batch[-1] + 1):
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


def score_record(task: Task, benchmark: str, index: int, problem: Problem, completions: Sequence[Completion]) -> dict:
    """One prompt's scores: samples, correct ones, truncated ones, pass rate, and the problem itself."""
    correct = sum(sample_correct(task, c, problem) for c in completions)
    return {"benchmark": benchmark, "index": index, "problem_id": problem.id, "num_samples": len(completions),
            "correct": correct, "truncated": sum(c.finish_reason == "length" for c in completions),
            "pass_rate": correct / len(completions), "problem": asdict(problem)}


def summarize(records: Sequence[dict], settings: dict, min_pass_rate: float, max_pass_rate: float) -> dict:
    """Counts: prompts, selected, prompts per number of correct samples, truncated share of all samples."""
    samples = sum(r["num_samples"] for r in records)
    by_correct = Counter(r["correct"] for r in records)
    return {"prompts": len(records),
            "selected": sum(in_band(r["pass_rate"], min_pass_rate, max_pass_rate) for r in records),
            "band": {"min_pass_rate (exclusive)": min_pass_rate, "max_pass_rate (inclusive)": max_pass_rate},
            "prompts_by_correct_samples": {str(k): v for k, v in sorted(by_correct.items())},
            "truncated_frac": sum(r["truncated"] for r in records) / samples if samples else 0.0,
            "settings": settings}


# ---- the run -----------------------------------------------------------------------------------------------


def load_candidates(args: SelectArgs) -> list[tuple[str, Problem]]:
    """(problem set name, problem) of every candidate in order; (set, id) must be unique, as resuming keys on it."""
    items = [(name, p) for name, problems in args.task.problems(args.split).items() for p in problems[: args.limit]]
    repeated = [key for key, n in Counter((name, p.id) for name, p in items).items() if n > 1]
    if repeated:
        raise ValueError(f"--task: problem ids must be unique per problem set to resume by them; repeated: "
                         f"{repeated[:3]}")
    return items


def scored_settings(args: SelectArgs, num_prompts: int) -> dict:
    """The options that change a prompt's score, as JSON data (a resumed run must match them)."""
    settings = {key: getattr(args, key) for key in SCORED}
    return settings | {"task": describe_task(args.task), "engine": asdict(args.engine), "num_prompts": num_prompts}


def resume(scores: Path, settings_path: Path, settings: dict) -> list[dict]:
    """Repairs `scores` after a kill and returns its complete records; refuses to add to scores of other settings."""
    drop_torn_tail(scores)
    records = read_jsonl(scores)
    before = json.loads(settings_path.read_text(encoding="utf-8")) if settings_path.exists() else None
    if records and before != settings:
        changed = sorted(k for k in settings.keys() | (before or {}).keys() if settings.get(k) != (before or {}).get(k))
        raise ValueError(f"{scores} holds scores of other settings ({', '.join(changed)}); use another --out_dir")
    settings_path.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    return records


def score_prompts(engine: RolloutEngine, tokenizer, items: Sequence[tuple[str, Problem]], todo: Sequence[int],
                  args: SelectArgs, scores: Path) -> None:
    """Samples and scores the prompts at `todo` (indices into `items`), appending one record per prompt."""
    with tqdm(total=len(todo), desc="select", unit="prompt") as bar:
        for batch in consecutive_batches(todo, args.batch_size):
            params = SamplingArgs(n=args.num_samples, temperature=args.temperature, top_p=args.top_p,
                                  max_tokens=args.max_tokens, seed=args.seed + batch[0], logprobs=False)
            prompts = [args.task.prompt(tokenizer, items[i][1]) for i in batch]
            outputs = engine.generate(prompts, params)
            append_jsonl(scores, [score_record(args.task, items[i][0], i, items[i][1], completions)
                                  for i, completions in zip(batch, outputs, strict=True)])
            bar.update(len(batch))


def write_selection(records: list[dict], settings: dict, args: SelectArgs, out_dir: Path) -> dict:
    """selected.jsonl (the problems in the band, by prompt index) and summary.json; prints the summary line."""
    records = sorted(records, key=lambda r: r["index"])
    selected = select_in_band(records, args.min_pass_rate, args.max_pass_rate)
    tmp = out_dir / "selected.jsonl.tmp"
    tmp.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in selected), encoding="utf-8")
    os.replace(tmp, out_dir / "selected.jsonl")
    summary = summarize(records, settings, args.min_pass_rate, args.max_pass_rate)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"astro select-prompts: {summary['selected']} of {summary['prompts']} prompts with "
          f"{args.min_pass_rate} < pass rate <= {args.max_pass_rate} in {out_dir / 'selected.jsonl'}")
    return summary


def select_prompts(args: SelectArgs, engine: RolloutEngine | None = None) -> dict | None:
    """Scores every prompt not yet scored, then selects (None for a shard). An `engine` passed in is kept open."""
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = load_candidates(args)
    shard = parse_shard(args.shard) if args.shard else (0, 1)
    suffix = f".shard-{shard[0]}-of-{shard[1]}" if args.shard else ""
    settings = scored_settings(args, len(items))
    scores = out_dir / f"scores{suffix}.jsonl"
    records = resume(scores, out_dir / f"settings{suffix}.json", settings)
    done = {(r["benchmark"], r["problem_id"]) for r in records}
    todo = [i for i in shard_range(len(items), *shard) if (items[i][0], items[i][1].id) not in done]
    print(f"astro select-prompts: {len(done)} prompts already scored in {scores}, {len(todo)} to score")
    if todo:
        own_engine = engine is None
        engine = engine or build_engine(args.engine, args.model)
        try:
            tokenizer = load_tokenizer(args.engine.tokenizer or args.model)
            score_prompts(engine, tokenizer, items, todo, args, scores)
        finally:
            if own_engine:
                engine.close()
    if args.shard:
        print(f"shard {args.shard} done; after all shards: astro select-prompts --merge {out_dir}")
        return None
    return write_selection(read_jsonl(scores), settings, args, out_dir)


def merge_shards(args: SelectArgs) -> dict:
    """Combines all N `scores.shard-I-of-N.jsonl` of one run (equal settings, every prompt scored) and selects."""
    folder = Path(args.merge)
    paths = complete_shards(folder, "settings.shard-{i}-of-{n}.json", "; run the missing shards first")
    settings = [json.loads(path.read_text(encoding="utf-8")) for path in paths]
    if any(s != settings[0] for s in settings):
        raise ValueError(f"{folder}: the shards were run with different settings")
    records = [r for i in range(len(paths)) for r in read_jsonl(folder / f"scores.shard-{i}-of-{len(paths)}.jsonl")]
    if sorted(r["index"] for r in records) != list(range(settings[0]["num_prompts"])):
        raise ValueError(f"{folder}: the shards scored {len(records)} of {settings[0]['num_prompts']} prompts; "
                         "rerun the unfinished shards (they resume)")
    records.sort(key=lambda r: r["index"])
    (folder / "scores.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                                         encoding="utf-8")
    return write_selection(records, settings[0], args, folder)


def parse_args(argv: list[str] | None) -> SelectArgs:
    return parse_dataclass(SelectArgs, "astro select-prompts", __doc__.split("\n\n")[0], argv, {"task": Task})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        merge_shards(args) if args.merge else select_prompts(args)
    except ValueError as e:
        print(f"astro select-prompts: {e}", file=sys.stderr)
        return 2
    return 0
