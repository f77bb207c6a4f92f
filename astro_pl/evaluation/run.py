"""`astro eval`: sample k answers per benchmark problem, score them, and write the table and backtrack analysis.

    astro eval --config configs/eval/math.yaml [--shard 0/4] [--limit 10] [--print_config]
    astro eval --merge runs/eval/math          # after all shards: one summary, as an unsharded run gives

The model is a Hugging Face folder (an export) or `model` plus a Lightning `checkpoint` whose `state_dict`
replaces its weights through the engine's `load_weights`. Problem i of the run (benchmarks concatenated in
order) is sampled with seed `seed + i`, so its samples do not depend on batching or sharding. A shard is a
contiguous block of problems; it writes `samples.shard-I-of-N.jsonl` and `settings.shard-I-of-N.json`, and
`--merge` turns a folder of shards into `samples.jsonl`, `summary.json`, `summary.md` and `backtracks.png`,
the files an unsharded run writes; it refuses a shard whose samples do not cover its problems.

Crash-safe: samples are appended, a problem's k samples at a time, to `samples*.jsonl.partial` (its settings in
`samples*.partial.json`), and moved into place only when every problem is done, so a kill, a crash or a bad flag
never touches the samples of a finished run. A rerun with the same settings resumes after the last whole problem;
one with other settings is refused until the partial file is removed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from tqdm import tqdm

from astro_pl.data.problems import Problem, check_unique_ids
from astro_pl.errors import UsageError, check_model_path
from astro_pl.evaluation.backtracks import (
    DEFAULT_BACKTRACK_PHRASES,
    DEFAULT_REFLECTION_PHRASES,
    count_backtracks,
    count_reflections,
    grounded_backtracks,
)
from astro_pl.evaluation.report import summarize, write_report
from astro_pl.options import parse_dataclass
from astro_pl.rollout.base import EngineArgs, RolloutEngine, SamplingArgs
from astro_pl.runfiles import append_jsonl, claim, drop_torn_tail, read_json, read_jsonl, write_json, write_jsonl
from astro_pl.shards import complete_shards, parse_shard, shard_range
from astro_pl.tasks.base import Task, describe_task

# Settings that change scores; a summary records them and merging refuses shards that disagree on them.
SCORED_SETTINGS = ("model", "checkpoint", "task", "split", "limit", "num_samples", "temperature", "top_p",
                   "max_tokens", "seed", "pass_at", "maj_at", "backtrack_phrases", "reflection_phrases",
                   "max_backtracks", "score_truncated")


@dataclass
class EvalArgs:
    """What to evaluate, on what, and how to sample."""

    task: Task | None = None
    """The domain (class_path + init_args): its `split` problem sets are evaluated, each reported by name."""
    split: Literal["train", "val", "test"] = "test"
    """Which of the task's splits to evaluate."""
    model: str | None = None
    """Hugging Face model folder or hub name (weights unless `checkpoint` is set; always the tokenizer)."""
    checkpoint: str | None = None
    """Lightning .ckpt file whose state_dict (a leading "model." stripped) replaces the weights of `model`."""
    engine: EngineArgs = field(default_factory=EngineArgs)
    """Rollout engine (`kind`: vllm or hf, dtype, max_model_len, ...); its model defaults to `model`."""
    limit: int | None = None
    """Evaluate only the first `limit` problems of each problem set (quick runs)."""
    num_samples: int = 16
    """Samples per problem (k); pass@1 is averaged over them."""
    temperature: float = 0.6
    """Sampling temperature (0: greedy)."""
    top_p: float = 0.95
    """Nucleus sampling mass."""
    max_tokens: int = 2048
    """Most new tokens per sample."""
    seed: int = 0
    """Problem i of the run is sampled with seed `seed + i`."""
    pass_at: list[int] = field(default_factory=lambda: [1])
    """Also report unbiased pass@k for these k (each <= num_samples)."""
    maj_at: list[int] = field(default_factory=list)
    """Report majority vote over the first k samples for these k (each <= num_samples)."""
    backtrack_phrases: list[str] = field(default_factory=lambda: list(DEFAULT_BACKTRACK_PHRASES))
    """Phrases that mark a backtrack (go back / restart); each occurrence counts once."""
    reflection_phrases: list[str] = field(default_factory=lambda: list(DEFAULT_REFLECTION_PHRASES))
    """Phrases that mark a self-check question (reported apart from backtracks)."""
    max_backtracks: int = 8
    """Last bin of accuracy-by-backtracks (it holds every response with at least this many)."""
    score_truncated: bool = False
    """Score a sample cut off at `max_tokens` (finish_reason "length") by its last complete \\boxed{} answer, the
    old rule. Off: a cut-off sample has no answer and is wrong, in pass@k and maj@k alike, since search-trained
    models box every attempt before doubting it and a box before the cut is not the model's final answer."""
    batch_size: int = 32
    """Problems per engine call."""
    out_dir: str = "runs/eval"
    """Output folder."""
    shard: str | None = None
    """Evaluate only shard I of N ("I/N", 0-based) and write shard files; combine them with `--merge`."""
    merge: str | None = None
    """Instead of evaluating, combine the shard files in this folder into one summary."""

    def __post_init__(self) -> None:
        if self.merge:
            return
        if not self.model:
            raise ValueError("--model is required (a Hugging Face model folder or hub name)")
        if self.task is None:
            raise ValueError("--task is required (e.g. --task astro_pl.tasks.MathTask)")
        if self.num_samples < 1:
            raise ValueError(f"--num_samples must be >= 1, got {self.num_samples}")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit must be >= 1, got {self.limit}")
        if self.temperature < 0:
            raise UsageError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"--top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise UsageError(f"--max_tokens must be >= 1, got {self.max_tokens}")
        for flag, values in (("pass_at", self.pass_at), ("maj_at", self.maj_at)):
            if any(not 1 <= k <= self.num_samples for k in values):
                raise ValueError(f"--{flag} values must be in [1, num_samples={self.num_samples}], got {values}")
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {self.batch_size}")
        if self.shard is not None:
            parse_shard(self.shard)


def load_eval_problems(args: EvalArgs) -> list[tuple[str, Problem]]:
    """(problem set name, problem) for every set of the task's split in order; refuses an empty run and ids
    repeated within a set (they would merge problems in resumable outputs)."""
    items = [(name, p) for name, problems in args.task.problems(args.split).items() for p in problems[: args.limit]]
    for name in dict.fromkeys(name for name, _ in items):
        check_unique_ids([p for n, p in items if n == name], f"--task problem set {name}")
    if not items:
        raise UsageError(f"--task {args.split} split: no problems to evaluate")
    return items


def checkpoint_weights(path: str | Path, model: str) -> dict[str, torch.Tensor]:
    """Hugging Face-named weights of a Lightning checkpoint, checked against the parameters of `model`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a sharded checkpoint folder; consolidate it first: "
                         f"python -m lightning.fabric.utilities.consolidate_checkpoint {path}")
    # Lightning checkpoints pickle hyperparameters next to the tensors: load only checkpoints you trust.
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except (RuntimeError, EOFError, ValueError) as err:
        raise UsageError(f"--checkpoint {path}: corrupt or truncated checkpoint ({str(err).splitlines()[0]})") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    state = checkpoint["state_dict"]
    if any("lora_" in name for name in state):
        raise UsageError(f"--checkpoint {path}: holds LoRA adapters, not full weights; evaluate the merged Hugging "
                         "Face export instead (--model <default_root_dir>/hf, written by HFExport)")
    if any(name.startswith("model.") for name in state):
        state = {name.removeprefix("model."): t for name, t in state.items() if name.startswith("model.")}
    with torch.device("meta"):
        expected = set(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model)).state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{path}: state_dict does not fit {model}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return state


def build_engine(args: EvalArgs) -> RolloutEngine:
    """The engine `args.engine` describes, with the checkpoint's weights loaded when one is given."""
    from astro_pl.rollout import build_engine as build

    engine = build(args.engine, args.model)
    if args.checkpoint:
        engine.load_weights(checkpoint_weights(args.checkpoint, args.model).items())
    return engine


def score_sample(benchmark: str, index: int, problem: Problem, sample: int, completion, args: EvalArgs) -> dict:
    """One per-sample record: the final answer (none when cut off), its correctness, backtracks and length."""
    answer = args.task.final_answer(completion.text, completion.finish_reason, args.score_truncated)
    return {
        "benchmark": benchmark,
        "problem_id": problem.id,
        "index": index,
        "sample": sample,
        "gold": problem.answer,
        "answer": answer,
        "correct": answer is not None and args.task.check(answer, problem.answer),
        "backtracks": count_backtracks(completion.text, args.backtrack_phrases),
        "reflections": count_reflections(completion.text, args.reflection_phrases),
        "grounded_backtracks": grounded_backtracks(completion.text, args.backtrack_phrases)[0],
        "length": len(completion.token_ids),
        "finish_reason": completion.finish_reason,
        "task": args.task.judge(problem, completion.text, answer),
        "text": completion.text,
    }


def generate_records(engine: RolloutEngine, tokenizer, items: list[tuple[int, str, Problem]], args: EvalArgs
                     ) -> Iterator[dict]:
    """Samples and scores `items` (global index, benchmark, problem) in batches, with a progress bar."""
    with tqdm(total=len(items), desc="eval", unit="problem") as progress:
        for batch in consecutive_batches(items, args.batch_size):
            # Consecutive global indices, so prompt j of the call gets seed + its global index.
            params = SamplingArgs(n=args.num_samples, temperature=args.temperature, top_p=args.top_p,
                                  max_tokens=args.max_tokens, seed=args.seed + batch[0][0], logprobs=False)
            prompts = [args.task.prompt(tokenizer, problem) for _, _, problem in batch]
            for (index, benchmark, problem), completions in zip(batch, engine.generate(prompts, params), strict=True):
                for sample, completion in enumerate(completions):
                    yield score_sample(benchmark, index, problem, sample, completion, args)
            progress.update(len(batch))


def consecutive_batches(items: list[tuple[int, str, Problem]], size: int) -> Iterator[list]:
    """Batches of at most `size` items whose global indices are consecutive (a resumed run has gaps)."""
    batch: list = []
    for item in items:
        if batch and (len(batch) == size or item[0] != batch[-1][0] + 1):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def scored_settings(args: EvalArgs) -> dict:
    settings = {key: getattr(args, key) for key in SCORED_SETTINGS}
    return {**settings, "task": describe_task(args.task)}


def resume_samples(partial: Path, settings_path: Path, settings: dict, num_samples: int) -> list[dict]:
    """The samples of a killed run with these settings, cut to its whole problems (a rerun resumes after them)."""
    if not partial.exists():
        return []
    earlier = read_json(settings_path, missing_ok=True)
    settings = json.loads(json.dumps(settings))  # as the file holds them (tuples become lists)
    if earlier is not None and earlier != settings:
        changed = sorted(k for k in settings if earlier.get(k) != settings[k])
        raise UsageError(f"{partial}: a partial run with other settings ({', '.join(changed) or 'unknown'}); rerun "
                         "with the same settings to resume, or delete the file to start over")
    drop_torn_tail(partial)
    records = read_jsonl(partial)
    samples: dict[int, set[int]] = {}
    for record in records:
        samples.setdefault(record["index"], set()).add(record["sample"])
    whole = {index for index, got in samples.items() if got == set(range(num_samples))}
    kept = [r for r in records if r["index"] in whole]
    if len(kept) != len(records):
        write_jsonl(partial, kept)
    return kept


def write_samples(records: Iterable[dict], path: Path, partial: Path, num_samples: int) -> list[dict]:
    """Appends each problem's samples as they complete, then moves the whole set into place at `path`."""
    pending: list[dict] = []
    for record in records:
        pending.append(record)
        if record["sample"] == num_samples - 1:
            append_jsonl(partial, pending)
            pending = []
    partial.touch()  # a run whose problems were all done before
    kept = sorted(read_jsonl(partial), key=lambda r: (r["index"], r["sample"]))
    write_jsonl(path, kept)
    partial.unlink()
    return kept


def finish(records: list[dict], settings: dict, out_dir: Path) -> dict:
    """Summary, Markdown table (printed), JSON and plot of a complete set of records."""
    summary = summarize(records, settings)
    print(write_report(summary, out_dir))
    return summary


def evaluate(args: EvalArgs, engine: RolloutEngine | None = None, tokenizer=None) -> dict | None:
    """Runs the evaluation; returns the summary (None for a shard). An `engine` passed in is used and kept open."""
    out_dir = Path(args.out_dir)
    shard = parse_shard(args.shard) if args.shard else (0, 1)
    suffix = f".shard-{shard[0]}-of-{shard[1]}" if args.shard else ""
    with claim(out_dir, part=suffix):
        return evaluate_into(args, out_dir, shard, suffix, engine, tokenizer)


def evaluate_into(args: EvalArgs, out_dir: Path, shard: tuple[int, int], suffix: str,
                  engine: RolloutEngine | None, tokenizer) -> dict | None:
    from astro_pl.loading import load_tokenizer

    problems = load_eval_problems(args)
    block = shard_range(len(problems), *shard)
    settings = scored_settings(args)
    partial, partial_settings = out_dir / f"samples{suffix}.jsonl.partial", out_dir / f"samples{suffix}.partial.json"
    done = resume_samples(partial, partial_settings, settings, args.num_samples)
    done_indices = {r["index"] for r in done}
    items = [(i, *problems[i]) for i in block if i not in done_indices]
    if done:
        print(f"astro eval: resuming {partial}: {len(done_indices)} problems done, {len(items)} to go")
    if engine is None:
        check_model_path(args.model, "--model")
        if args.engine.tokenizer:
            check_model_path(args.engine.tokenizer, "--engine.tokenizer")
    tokenizer = tokenizer or load_tokenizer(args.engine.tokenizer or args.model)
    own_engine = engine is None
    engine = engine or build_engine(args)
    write_json(partial_settings, settings)
    shard_settings = out_dir / f"settings{suffix}.json"
    try:
        shard_settings.unlink(missing_ok=True)  # a shard is complete only once its samples are in place again
        records = write_samples(generate_records(engine, tokenizer, items, args), out_dir / f"samples{suffix}.jsonl",
                                partial, args.num_samples)
    finally:
        if own_engine:
            engine.close()
    partial_settings.unlink(missing_ok=True)
    if args.shard:
        write_json(shard_settings, {**settings, "shard_problems": [block.start, block.stop]})
        print(f"shard {args.shard}: {len(block)} problems, {len(records)} samples in {out_dir}; "
              f"after all shards: astro eval --merge {out_dir}")
        return None
    return finish(records, settings, out_dir)


def merge_shards(folder: str | Path) -> dict:
    """Combines `samples.shard-I-of-N.jsonl` files (all N of them, equal settings) into one summary."""
    folder = Path(folder)
    paths = complete_shards(folder, "settings.shard-{i}-of-{n}.json", "; run or finish astro eval --shard I/N")
    count = len(paths)
    blocks = [read_json(path) for path in paths]
    settings = [{k: v for k, v in block.items() if k != "shard_problems"} for block in blocks]
    if any(s != settings[0] for s in settings):
        raise ValueError(f"{folder}: the shards were run with different settings")
    records = []
    for i, block in enumerate(blocks):
        shard_records = read_jsonl(folder / f"samples.shard-{i}-of-{count}.jsonl")
        start, stop = block.get("shard_problems", (None, None))
        expected = {(index, k) for index in range(start or 0, stop or 0) for k in range(settings[0]["num_samples"])}
        if start is None or {(r["index"], r["sample"]) for r in shard_records} != expected \
                or len(shard_records) != len(expected):
            raise UsageError(f"{folder}: shard {i} of {count} is incomplete ({len(shard_records)} samples); rerun "
                             f"astro eval --shard {i}/{count} to finish it")
        records += shard_records
    records.sort(key=lambda r: (r["index"], r["sample"]))
    write_jsonl(folder / "samples.jsonl", records)
    return finish(records, settings[0], folder)


def parse_args(argv: list[str] | None) -> EvalArgs:
    return parse_dataclass(EvalArgs, "astro eval", __doc__.split("\n\n")[0], argv, {"task": Task})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.merge:
        with claim(args.merge, "--merge"):
            merge_shards(args.merge)
    else:
        evaluate(args)
    return 0
