"""`astro search --config configs/search/<name>.yaml`: MCTS trees and ASTRO traces for a problem set.

    astro search --config configs/search/llama31_8b.yaml [--shard 0/8]   # a shard writes OUT_DIR/shard-0-of-8/
    astro search --merge runs/search/llama31_8b                          # after all shards: one run's files

Writes to `out_dir`: trees.jsonl (one tree per problem, appended as each tree finishes), traces.jsonl (the
linearised, verbalised traces of those trees, only from correct terminals the `--judge` finds sound), run.json
(settings and problem ids) and summary.json; with `--rewrite.enabled true`, also rewritten.jsonl (`rewrite.py`).
Crash-safe: a tree's traces are appended before the tree itself, and a rerun first drops a torn last line and any
traces whose tree was not written, then skips the problems already in trees.jsonl, so after a kill no problem is
lost or duplicated; a rerun with other settings is refused.

A shard (`--shard I/N`, the contiguous block of problems `astro eval --shard` uses) is such a run in its own folder
`out_dir/shard-I-of-N`. A problem's tree and traces do not depend on which problems share its run (with the
scripted teacher; an LLM proposer seeds each engine call, so its samples depend on the batch), so `--merge`
gives the files an unsharded run writes. For the same reason `--workers N` (scripted teacher only) searches blocks of
problems in N forked processes on one machine and writes the same files as one process.
"""

from __future__ import annotations

import json
import multiprocessing
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace, set_parsing_settings
from tqdm import tqdm

from astro_pl.data.chat import render_prompt
from astro_pl.data.problems import Problem, check_unique_ids
from astro_pl.errors import UsageError
from astro_pl.rollout import build_engine
from astro_pl.rollout.base import EngineArgs, RolloutEngine
from astro_pl.runfiles import (
    append_jsonl,
    claim,
    drop_torn_tail,
    read_json,
    read_jsonl,
    to_line,
    write_json,
    write_jsonl,
)
from astro_pl.search.linearize import SelfEvaluationJudge, SoundnessJudge, TraceArgs, build_traces
from astro_pl.search.mcts import SearchArgs, search_trees
from astro_pl.search.proposers import LLMProposerArgs, LLMStepProposer
from astro_pl.search.rewrite import REWRITTEN_FILE, RewriteArgs, check_rewrite, rewrite_folder
from astro_pl.search.tree import SearchTree, append_tree, read_trees
from astro_pl.shards import complete_shards, parse_shard, shard_range
from astro_pl.tasks.base import StepProposer, Task, flat_problems


@dataclass
class SelfEvalArgs:
    """The `--judge llm` self-evaluation: the search model judges each correct solution (paper: 8 samples).

    Args:
        num_samples: Self-evaluations per correct terminal; all must answer Yes.
        temperature: Sampling temperature of the self-evaluations.
        max_tokens: Most tokens per self-evaluation.
        seed: Sampling seed of the self-evaluations.
    """

    num_samples: int = 8
    temperature: float = 1.0
    max_tokens: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.max_tokens < 1:
            raise ValueError("--self_eval.num_samples and --self_eval.max_tokens must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"--self_eval.temperature must be >= 0, got {self.temperature}")


def build_parser() -> ArgumentParser:
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = ArgumentParser(prog="astro search", description="MCTS over solution steps, then ASTRO traces.",
                            exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below.")
    parser.add_argument("--out_dir", type=str | None, default=None,
                        help="Folder for trees.jsonl, traces.jsonl, run.json and summary.json (shards: subfolders).")
    parser.add_argument("--shard", type=str | None, default=None,
                        help="Search only block I of N of the problems (\"I/N\", 0-based) into OUT_DIR/shard-I-of-N.")
    parser.add_argument("--merge", type=str | None, default=None,
                        help="Instead of searching, combine the shard-I-of-N folders of this folder into its files.")
    parser.add_subclass_arguments(Task, "task", required=False,
                                  help="The domain: its problems, prompt and answer check (class_path + init_args).")
    parser.add_argument("--split", type=Literal["train", "val", "test"], default="train",
                        help="Which of the task's splits to search.")
    parser.add_argument("--limit", type=int | None, default=None, help="Search only the first LIMIT problems.")
    parser.add_argument("--max_problem_chars", type=int, default=20_000,
                        help="Longest problem text searched; a longer one is refused by id (its steps cost time "
                             "growing with the square of its length and would stall its whole batch).")
    parser.add_argument("--proposer", type=Literal["task", "llm"], default="task",
                        help="task: the task's scripted teacher (an environment, not a model); llm: a model through "
                             "--engine.")
    parser.add_argument("--engine", type=EngineArgs | None, default=None, help="Engine to build (llm only).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of trace sampling (per tree: seed and tree id).")
    parser.add_argument("--workers", type=int, default=1,
                        help="Processes searching blocks of problems at once (scripted teacher only: an LLM "
                             "proposer batches its engine calls in one process); the files do not depend on it.")
    parser.add_argument("--judge", type=Literal["none", "task", "llm"], default="none",
                        help="Which correct terminals may be taught: none (all); task (the task's soundness judge "
                             "checks every step); llm (the search model's self-evaluation).")
    parser.add_class_arguments(SearchArgs, "search")
    parser.add_class_arguments(LLMProposerArgs, "llm")
    parser.add_class_arguments(TraceArgs, "traces")
    parser.add_class_arguments(SelfEvalArgs, "self_eval")
    parser.add_class_arguments(RewriteArgs, "rewrite")
    return parser


def build_proposer(kind: str, task: Task, llm: LLMProposerArgs, engine: EngineArgs | None
                   ) -> tuple[StepProposer, RolloutEngine | None]:
    """The proposer and the engine behind it (None for a scripted teacher), which the caller closes
    (`check_choices` has refused a task without a teacher)."""
    if kind == "task":
        return task.teacher(), None
    if engine is None or engine.model is None:
        raise ValueError("--proposer llm needs --engine.model (and optionally the other --engine.* options)")
    from astro_pl.loading import load_tokenizer

    rollout_engine = build_engine(engine)
    tokenizer = load_tokenizer(engine.tokenizer or engine.model)
    return LLMStepProposer(rollout_engine, tokenizer, task, llm), rollout_engine


def check_sizes(problems: list[Problem], max_chars: int, where: str) -> None:
    """Refuses an empty problem list and any problem longer than `max_chars`, naming it."""
    if max_chars < 1:
        raise UsageError(f"--max_problem_chars must be >= 1, got {max_chars}")
    if not problems:
        raise UsageError(f"{where}: no problems to search")
    too_long = next((p for p in problems if len(p.problem) > max_chars), None)
    if too_long is not None:
        raise UsageError(f"{where}: problem {too_long.id!r} has {len(too_long.problem)} characters, over "
                         f"--max_problem_chars {max_chars}")


def check_choices(kind: str, proposer: str, task: Task) -> None:
    """Refuses a proposer or judge the task cannot give, before the folder is claimed or any engine starts."""
    if proposer == "task" and task.teacher() is None:
        raise ValueError(f"--proposer task: {type(task).__name__} has no scripted teacher; use --proposer llm")
    if kind == "llm" and proposer != "llm":
        raise ValueError("--judge llm needs --proposer llm (the search model judges its own solutions)")
    if kind == "task" and not task.has_judge:
        raise ValueError(f"--judge task: {type(task).__name__} has no soundness judge (use --judge llm or none)")


def check_settings(cfg: Namespace) -> None:
    """The checks across options that a search makes before its first tree (`--print_config` stops before them)."""
    check_choices(cfg.judge, cfg.proposer, cfg.task)
    check_workers(cfg.workers, cfg.proposer, cfg.judge)
    check_rewrite(cfg.rewrite, cfg.proposer)


def check_workers(workers: int, proposer: str, judge: str) -> None:
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if workers > 1 and "llm" in (proposer, judge):
        raise ValueError(f"--workers {workers} needs --proposer task and no --judge llm: a model's engine batches its "
                         "calls in one process (split a model's search with --shard I/N instead)")


def build_judge(kind: str, task: Task, proposer: StepProposer, args: SelfEvalArgs) -> SoundnessJudge | None:
    """The step-2 filter of Algorithm 1 (`check_choices` has refused impossible pairs)."""
    if kind == "task":
        return lambda tree, node_ids: [task.sound(tree.problem, tree.steps(i)) for i in node_ids]
    if kind == "llm":
        assert isinstance(proposer, LLMStepProposer)
        return SelfEvaluationJudge(proposer.engine, partial(render_prompt, proposer.tokenizer), args.num_samples,
                                   args.temperature, args.max_tokens, args.seed)
    return None


# ---- crash-safe output (the file primitives live in astro_pl.runfiles) ----------------------------------------


def resume(trees_path: Path, traces_path: Path) -> set[str]:
    """Repairs the output after a kill and returns the ids of problems whose tree (and traces) are complete.

    Drops a torn last line, traces whose tree was not written (their problem is searched again), and repeated
    trees and traces of one problem (two runs that wrote into one folder before folders were locked).
    """
    drop_torn_tail(trees_path)
    drop_torn_tail(traces_path)
    trees = read_jsonl(trees_path)
    first = {}
    for tree in trees:
        first.setdefault(str(tree.get("problem_id")), tree)
    if len(first) != len(trees):
        list(read_trees(trees_path))  # validates every tree before any rewrite
        write_jsonl(trees_path, first.values())
    done = {tree.problem_id for tree in read_trees(trees_path)} if trees_path.exists() else set()
    traces = read_jsonl(traces_path)
    seen: set[tuple[str, str]] = set()
    kept = []
    for trace in traces:
        key = (str(trace.get("problem_id")), to_line(trace))
        if key[0] in done and key not in seen:
            seen.add(key)
            kept.append(trace)
    if len(kept) != len(traces):
        write_jsonl(traces_path, kept)
    return done


def write_tree(tree: SearchTree, traces: list[dict], trees_path: Path, traces_path: Path) -> None:
    """Traces first, then the tree: the tree line is the commit mark that `resume` trusts."""
    append_jsonl(traces_path, traces)
    append_tree(trees_path, tree)


def summarize(trees_path: Path, traces_path: Path) -> dict:
    """Counts over everything in the output folder (this run and earlier ones)."""
    trees = list(read_trees(trees_path)) if trees_path.exists() else []
    traces = read_jsonl(traces_path)
    return {
        "trees": len(trees),
        "trees_with_correct_terminal": sum(any(n.correct for n in t.terminals()) for t in trees),
        "nodes": sum(len(t.nodes) for t in trees),
        "traces": len(traces),
        "traces_by_kind": dict(sorted(Counter(t["kind"] for t in traces).items())),
        "backtracks_histogram": {str(k): v for k, v in sorted(Counter(t["num_backtracks"] for t in traces).items())},
    }


def search_and_write(problems: list[Problem], proposer: StepProposer, cfg: Namespace, out_dir: Path,
                     judge: SoundnessJudge | None = None) -> None:
    """Resumes the output in `out_dir`, then searches every problem not yet done and writes its tree and traces."""
    trees_path, traces_path = out_dir / "trees.jsonl", out_dir / "traces.jsonl"
    done = resume(trees_path, traces_path)
    todo = [p for p in problems if p.id not in done]
    print(f"astro search: {len(done)} problems already done in {out_dir}, {len(todo)} to search"
          + (f" in {cfg.workers} processes" if cfg.workers > 1 else ""))
    searched = search_in_workers(todo, proposer, cfg, judge) if cfg.workers > 1 else \
        search_block(todo, proposer, cfg, judge)
    for tree, traces in tqdm(searched, total=len(todo), desc="search", unit="tree"):
        write_tree(tree, traces, trees_path, traces_path)


def search_block(problems: list[Problem], proposer: StepProposer, cfg: Namespace, judge: SoundnessJudge | None
                 ) -> Iterator[tuple[SearchTree, list[dict]]]:
    """Each problem's tree and traces, in order (trace sampling is seeded per tree: seed and problem id)."""
    for tree in search_trees(problems, proposer, cfg.search, cfg.task.check):
        yield tree, build_traces(tree, cfg.traces, random.Random(f"{cfg.seed}:{tree.problem_id}"), judge=judge,
                                 checker=cfg.task.check)


_FORKED: tuple = ()
"""The proposer, settings and judge a forked worker inherits (set before the pool forks; not pickled)."""


def _search_forked_block(problems: list[Problem]) -> list[tuple[SearchTree, list[dict]]]:
    return list(search_block(problems, *_FORKED))


def search_in_workers(problems: list[Problem], proposer: StepProposer, cfg: Namespace,
                      judge: SoundnessJudge | None) -> Iterator[tuple[SearchTree, list[dict]]]:
    """`search_block` over blocks of `search.batch_size` problems in `cfg.workers` forked processes, yielded in
    problem order, so the files equal a one-process run's (a scripted teacher's tree depends on its problem alone)
    and the parent alone writes them, crash-safe as before."""
    global _FORKED
    blocks = [problems[i:i + cfg.search.batch_size] for i in range(0, len(problems), cfg.search.batch_size)]
    _FORKED = (proposer, cfg, judge)
    try:
        with multiprocessing.get_context("fork").Pool(cfg.workers) as pool:
            for results in pool.imap(_search_forked_block, blocks):
                yield from results
    finally:
        _FORKED = ()


# ---- shards and run settings ------------------------------------------------------------------------------

NOT_SETTINGS = ("out_dir", "shard", "merge", "config", "workers")


def run_settings(parser: ArgumentParser, raw: Namespace) -> dict:
    """Every option that shapes the trees and traces (all but where they go, which shard and how many workers)."""
    settings = yaml.safe_load(parser.dump(raw, skip_validation=True))
    return {key: value for key, value in settings.items() if key not in NOT_SETTINGS}


def flatten(record: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in record.items():
        flat.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def differing_keys(a: dict, b: dict) -> list[str]:
    """Dotted keys whose values differ between two nested records."""
    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k, "<unset>") != fb.get(k, "<unset>"))


def claim_folder(out_dir: Path, run: dict) -> None:
    """Writes run.json (settings, shard, problem ids), refusing a folder whose trees came from other settings.

    A folder without trees is free: a run that failed before its first tree may be rerun with corrected flags.
    """
    path, trees = out_dir / "run.json", out_dir / "trees.jsonl"
    if path.exists() and trees.exists() and trees.stat().st_size > 0:
        earlier = read_json(path)
        changed = differing_keys(earlier, run)
        if changed:
            raise ValueError(f"{path}: {out_dir} holds a run with other settings ({', '.join(changed[:8])}); "
                             "rerun with the same settings to resume, or use another --out_dir")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(path, run)


def merge_shards(folder: Path) -> dict:
    """Combines the complete shard folders `shard-I-of-N` of one run into `folder`'s trees.jsonl, traces.jsonl (and
    rewritten.jsonl), run.json and summary.json, in problem order: the files an unsharded run writes."""
    shard_dirs = complete_shards(folder, "shard-{i}-of-{n}", "; run astro search --shard I/N for each")
    count = len(shard_dirs)
    runs = []
    for i in range(count):
        path = shard_dirs[i] / "run.json"
        if not path.exists():
            raise ValueError(f"{path}: missing; shard {i} of {count} has not started")
        runs.append(read_json(path))
        changed = differing_keys(runs[0]["settings"], runs[i]["settings"])
        if changed:
            raise ValueError(f"{folder}: shard {i} of {count} was run with other settings than shard 0 "
                             f"({', '.join(changed[:8])})")
    rewritten = runs[0]["settings"].get("rewrite", {}).get("enabled", False)  # absent in runs before the option
    names = ["traces.jsonl"] + ([REWRITTEN_FILE] if rewritten else [])
    trees, records_of = [], {name: [] for name in names}
    for i, run in enumerate(runs):
        shard_dir = shard_dirs[i]
        by_id = {t.problem_id: t for t in read_trees(shard_dir / "trees.jsonl")} \
            if (shard_dir / "trees.jsonl").exists() else {}
        if set(by_id) != set(run["problem_ids"]):
            raise ValueError(f"{shard_dir}: {len(set(by_id) & set(run['problem_ids']))} of "
                             f"{len(run['problem_ids'])} trees; rerun shard {i}/{count} to finish it")
        trees += [by_id[problem_id] for problem_id in run["problem_ids"]]
        shard_records = {name: read_jsonl(shard_dir / name) for name in names}
        if len(shard_records.get(REWRITTEN_FILE, shard_records["traces.jsonl"])) != len(shard_records["traces.jsonl"]):
            raise ValueError(f"{shard_dir}: {REWRITTEN_FILE} is unfinished; rerun shard {i}/{count} to finish it")
        for name, records in shard_records.items():
            by_problem: dict[str, list[dict]] = {}
            for record in records:
                by_problem.setdefault(str(record["problem_id"]), []).append(record)
            records_of[name] += [r for problem_id in run["problem_ids"] for r in by_problem.get(problem_id, [])]
    for name, records in [("trees.jsonl", [t.to_dict() for t in trees]), *records_of.items()]:
        write_jsonl(folder / name, records)
    write_json(folder / "run.json", {"settings": runs[0]["settings"], "shard": None,
                                     "problem_ids": [pid for run in runs for pid in run["problem_ids"]]})
    return finish(folder)


def finish(out_dir: Path) -> dict:
    summary = summarize(out_dir / "trees.jsonl", out_dir / "traces.jsonl")
    write_json(out_dir / "summary.json", summary)
    print(json.dumps(summary, indent=2))
    return summary


def search(parser: ArgumentParser, raw: Namespace) -> dict:
    """Runs (or resumes) the search `raw` describes (`build_parser`'s options) and returns the summary of its
    folder. Bad settings raise ValueError naming the flag, or the file, line and field."""
    if raw.out_dir is None:
        raise UsageError("--out_dir is required (or --merge DIR to combine shards)")
    if raw.task is None:
        raise ValueError("--task is required (e.g. --task astro_pl.tasks.ArithmeticTask)")
    cfg = parser.instantiate(raw)
    problems = flat_problems(cfg.task, cfg.split, cfg.limit)
    check_unique_ids(problems, f"--task {cfg.split} split")
    check_sizes(problems, cfg.max_problem_chars, f"--task {cfg.split} split")
    out_dir, shard = Path(cfg.out_dir), None
    if cfg.shard is not None:
        shard = parse_shard(cfg.shard)
        problems = [problems[i] for i in shard_range(len(problems), *shard)]
        out_dir = out_dir / f"shard-{shard[0]}-of-{shard[1]}"
    check_settings(cfg)
    with claim(out_dir):
        claim_folder(out_dir, {"settings": run_settings(parser, raw), "shard": list(shard) if shard else None,
                               "problem_ids": [p.id for p in problems]})
        proposer, engine = build_proposer(cfg.proposer, cfg.task, cfg.llm, cfg.engine)
        try:
            parser.save(raw, out_dir / "config.yaml", overwrite=True, skip_validation=True)
            search_and_write(problems, proposer, cfg, out_dir,
                             build_judge(cfg.judge, cfg.task, proposer, cfg.self_eval))
            if cfg.rewrite.enabled and cfg.rewrite.engine is None:  # the search's model rewrites, still loaded
                rewrite_folder(out_dir, cfg.rewrite, cfg.traces, proposer.engine, proposer.tokenizer)
        finally:
            if engine is not None:
                engine.close()
        if cfg.rewrite.enabled and cfg.rewrite.engine is not None:  # its own model, once the search's is closed
            rewrite_folder(out_dir, cfg.rewrite, cfg.traces)
        summary = finish(out_dir)
    if shard is not None:
        print(f"shard {cfg.shard} done in {out_dir}; after all shards: astro search --merge {cfg.out_dir}")
    return summary


def search_config(config: str | Path, out_dir: str | Path) -> dict:
    """The search a config file describes, into `out_dir`: `astro search --config CONFIG --out_dir OUT_DIR` as a
    function (SFT's `TraceDataModule` calls it when it has no traces yet)."""
    parser = build_parser()
    raw = parser.parse_path(str(config))
    raw.out_dir = str(out_dir)
    return search(parser, raw)


def main(argv: list[str] | None = None) -> int:
    """Flag, file and settings errors raise ValueError (UsageError) naming the flag, or the file, line and field;
    the `astro` dispatch prints them as one line."""
    parser = build_parser()
    raw = parser.parse_args(argv)
    if raw.merge:
        with claim(raw.merge, "--merge"):
            merge_shards(Path(raw.merge))
    else:
        search(parser, raw)
    return 0
