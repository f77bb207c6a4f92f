"""`astro search --config configs/search/<name>.yaml`: MCTS trees and ASTRO traces for a problem set.

Writes to `out_dir`: trees.jsonl (one tree per problem, appended as each tree finishes), traces.jsonl (the
linearised, verbalised traces of those trees) and summary.json. Crash-safe: a tree's traces are appended before
the tree itself, and a rerun first drops a torn last line and any traces whose tree was not written, then skips
the problems already in trees.jsonl, so after a kill no problem is lost or duplicated.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace, set_parsing_settings
from tqdm import tqdm

from astro_pl.datamodules.problems import Problem, load_benchmark, synthetic_arithmetic
from astro_pl.rewards.math import answers_match
from astro_pl.rollout.base import EngineArgs, RolloutEngine
from astro_pl.search.linearize import TraceArgs, build_traces
from astro_pl.search.mcts import SearchArgs, search_trees
from astro_pl.search.proposers import (
    LLMProposerArgs,
    LLMStepProposer,
    ScriptedArithmeticTeacher,
    StepProposer,
    TeacherArgs,
)
from astro_pl.search.tree import SearchTree, append_tree, read_trees


@dataclass
class ProblemArgs:
    """Which problems to search.

    Args:
        source: "synthetic" (seeded arithmetic), a benchmark name (math_train, math500, aime24, amc23, gsm8k), a
            .jsonl/.json/.parquet file, or "hf:NAME[:SPLIT]".
        limit: Keep only the first `limit` problems.
        num_synthetic: Number of synthetic problems (source "synthetic" only).
        min_operations: Fewest operators per synthetic expression.
        max_operations: Most operators per synthetic expression.
        seed: Seed of the synthetic problems.
    """

    source: str = "synthetic"
    limit: int | None = None
    num_synthetic: int = 64
    min_operations: int = 2
    max_operations: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"--problems.limit must be >= 0, got {self.limit}")

    def load(self) -> list[Problem]:
        if self.source == "synthetic":
            problems = synthetic_arithmetic(self.num_synthetic, self.seed, self.min_operations, self.max_operations)
            problems = problems[: self.limit] if self.limit is not None else problems
        else:
            problems = load_benchmark(self.source, limit=self.limit)
        duplicates = [pid for pid, count in Counter(p.id for p in problems).items() if count > 1]
        if duplicates:
            raise ValueError(f"--problems.source {self.source!r}: duplicate problem ids {duplicates[:5]}")
        return problems


def build_parser() -> ArgumentParser:
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = ArgumentParser(prog="astro search", description="MCTS over solution steps, then ASTRO traces.")
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below.")
    parser.add_argument("--out_dir", type=str, required=True, help="Folder for trees.jsonl, traces.jsonl, summary.")
    parser.add_argument("--proposer", type=Literal["teacher", "llm"], default="teacher",
                        help="teacher: scripted arithmetic environment; llm: a model through --engine.")
    parser.add_argument("--engine_kind", type=Literal["vllm", "hf"], default="vllm", help="Rollout engine (llm).")
    parser.add_argument("--engine", type=EngineArgs | None, default=None, help="Engine to build (llm only).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of trace sampling (per tree: seed and tree id).")
    parser.add_class_arguments(ProblemArgs, "problems")
    parser.add_class_arguments(SearchArgs, "search")
    parser.add_class_arguments(TeacherArgs, "teacher")
    parser.add_class_arguments(LLMProposerArgs, "llm")
    parser.add_class_arguments(TraceArgs, "traces")
    return parser


def build_proposer(kind: str, teacher: TeacherArgs, llm: LLMProposerArgs, engine_kind: str,
                   engine: EngineArgs | None) -> tuple[StepProposer, RolloutEngine | None]:
    """The proposer and the engine behind it (None for the teacher), which the caller closes."""
    if kind == "teacher":
        return ScriptedArithmeticTeacher(teacher), None
    if engine is None:
        raise ValueError("--proposer llm needs --engine.model (and optionally the other --engine.* options)")
    from astro_pl.modules.models import load_tokenizer
    from astro_pl.rollout import build_engine

    rollout_engine = build_engine(engine_kind, engine)
    tokenizer = load_tokenizer(engine.tokenizer or engine.model)
    return LLMStepProposer(rollout_engine, tokenizer, llm), rollout_engine


# ---- crash-safe output -------------------------------------------------------------------------------------


def drop_torn_tail(path: Path) -> None:
    """Cuts a last line that a killed writer left without its newline, so later appends start on a fresh line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSONL file; a bad line raises naming the file and line."""
    if not path.exists():
        return []
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{lineno}: not a JSON record ({err.msg})") from err
    return records


def resume(trees_path: Path, traces_path: Path) -> set[str]:
    """Repairs the output after a kill and returns the ids of problems whose tree (and traces) are complete."""
    drop_torn_tail(trees_path)
    drop_torn_tail(traces_path)
    done = {tree.problem_id for tree in read_trees(trees_path)} if trees_path.exists() else set()
    traces = read_jsonl(traces_path)
    kept = [t for t in traces if str(t["problem_id"]) in done]
    if len(kept) != len(traces):  # traces of a tree that was not written: its problem will be searched again
        tmp = traces_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in kept), encoding="utf-8")
        os.replace(tmp, traces_path)
    return done


def write_tree(tree: SearchTree, traces: list[dict], trees_path: Path, traces_path: Path) -> None:
    """Traces first, then the tree: the tree line is the commit mark that `resume` trusts."""
    with traces_path.open("a", encoding="utf-8") as f:
        f.writelines(json.dumps(t, ensure_ascii=False) + "\n" for t in traces)
        f.flush()
        os.fsync(f.fileno())
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


def search_and_write(problems: list[Problem], proposer: StepProposer, cfg: Namespace, out_dir: Path) -> None:
    """Resumes the output in `out_dir`, then searches every problem not yet done and writes its tree and traces."""
    trees_path, traces_path = out_dir / "trees.jsonl", out_dir / "traces.jsonl"
    done = resume(trees_path, traces_path)
    todo = [p for p in problems if p.id not in done]
    print(f"astro search: {len(done)} problems already done in {out_dir}, {len(todo)} to search")
    trees = search_trees(todo, proposer, cfg.search, answers_match)
    for tree in tqdm(trees, total=len(todo), desc="search", unit="tree"):
        traces = build_traces(tree, cfg.traces, random.Random(f"{cfg.seed}:{tree.problem_id}"))
        write_tree(tree, traces, trees_path, traces_path)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    raw = parser.parse_args(argv)
    try:  # the Args dataclasses and problem loaders raise ValueError naming the flag, or the file, line and field
        cfg = parser.instantiate(raw)
        problems = cfg.problems.load()
        proposer, engine = build_proposer(cfg.proposer, cfg.teacher, cfg.llm, cfg.engine_kind, cfg.engine)
    except ValueError as err:
        parser.error(str(err))
    out_dir = Path(cfg.out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        parser.save(raw, out_dir / "config.yaml", overwrite=True, skip_validation=True)
        search_and_write(problems, proposer, cfg, out_dir)
    finally:
        if engine is not None:
            engine.close()
    summary = summarize(out_dir / "trees.jsonl", out_dir / "traces.jsonl")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=2))
    return 0
