"""`astro search`: config parsing, output files and summary, crash safety under a real SIGKILL, shards and merge,
and the soundness judges."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from astro_pl.loading import load_tokenizer
from astro_pl.search.linearize import TraceArgs, build_traces
from astro_pl.search.proposers import LLMStepProposer
from astro_pl.search.run import SelfEvalArgs, build_judge, main, read_jsonl, resume
from astro_pl.search.tree import SearchTree, append_tree, read_trees
from astro_pl.tasks import ArithmeticTask

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "search" / "synthetic.yaml"


TASK_JUDGE = build_judge("task", ArithmeticTask(), None, SelfEvalArgs())


def expected_traces(trees: list[SearchTree], seed: int, judge=TASK_JUDGE) -> list[dict]:
    """What traces.jsonl must hold: each tree's traces exactly once, in tree order, as the run seeds and judges them
    (synthetic.yaml has `judge: task`)."""
    return [r for t in trees for r in build_traces(t, TraceArgs(), random.Random(f"{seed}:{t.problem_id}"), judge)]


def test_search_writes_trees_traces_and_summary(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--config", str(CONFIG), "--out_dir", str(out), "--limit", "12",
                 "--search.iterations", "12", "--search.batch_size", "5"]) == 0
    trees = list(read_trees(out / "trees.jsonl"))
    assert sorted(t.problem_id for t in trees) == sorted(f"synthetic-0-{i}" for i in range(12))
    assert all(t.root.visits == 12 for t in trees)
    traces = read_jsonl(out / "traces.jsonl")
    assert traces == expected_traces(trees, seed=0)
    assert {"direct", "search"} <= {t["kind"] for t in traces}
    assert all(t["problem_id"] == t["tree_id"] and "\\boxed{" in t["trace"] for t in traces)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trees"] == 12 and summary["traces"] == len(traces)
    assert summary["trees_with_correct_terminal"] == sum(any(n.correct for n in t.terminals()) for t in trees)
    assert summary["backtracks_histogram"] == {str(k): v for k, v in
                                               sorted(Counter(t["num_backtracks"] for t in traces).items())}
    assert '"trees_with_correct_terminal"' in capsys.readouterr().out
    assert (out / "config.yaml").is_file()


def test_traces_load_with_datasets(tmp_path):
    import datasets

    out = tmp_path / "out"
    main(["--config", str(CONFIG), "--out_dir", str(out), "--limit", "4"])
    ds = datasets.load_dataset("json", data_files=str(out / "traces.jsonl"), split="train")
    assert len(ds) == len(read_jsonl(out / "traces.jsonl")) > 0
    assert {"problem", "gold", "trace", "kind", "num_backtracks", "tree_id"} <= set(ds.column_names)


def test_print_config_and_flag_errors(capsys, tmp_path):
    from astro_pl.cli import main as astro

    with pytest.raises(SystemExit) as done:
        main(["--config", str(CONFIG), "--print_config"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    assert "c_puct: 2.0" in printed and "error_rate: 0.3" in printed

    def error(*argv: str) -> str:
        assert astro(["search", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("astro search: error: ") and err.count("\n") == 1, err
        return err

    unused = str(tmp_path / "unused")
    assert "--search.num_rollouts must be >= 1" in error("--config", str(CONFIG), "--out_dir", unused,
                                                         "--search.num_rollouts", "0")
    assert "--engine.model" in error("--config", str(CONFIG), "--out_dir", unused, "--proposer", "llm",
                                     "--judge", "none")
    assert main(["--config", str(CONFIG), "--out_dir", unused, "--limit", "2",
                 "--search.iterations", "2"]) == 0, "a folder whose run failed before any tree is not claimed"
    capsys.readouterr()
    assert "--judge llm needs --proposer llm" in error("--config", str(CONFIG), "--out_dir", unused, "--judge", "llm")
    assert "--proposer task: MathTask has no scripted teacher" in error(
        "--config", str(CONFIG), "--out_dir", unused, "--task", "astro_pl.tasks.MathTask", "--limit", "2",
        "--judge", "none")
    assert "--judge task: MathTask has no soundness judge" in error(
        "--config", str(CONFIG), "--out_dir", unused, "--task", "astro_pl.tasks.MathTask", "--limit", "2",
        "--proposer", "llm", "--engine.model", "unused")
    assert "--out_dir is required (or --merge DIR" in error("--search.iterations", "2")  # no config, no out_dir
    assert "--workers 2 needs --proposer task and no --judge llm" in error(
        "--config", str(CONFIG), "--out_dir", unused, "--proposer", "llm", "--engine.model", "unused", "--workers", "2")
    assert "--workers must be >= 1" in error("--config", str(CONFIG), "--out_dir", unused, "--workers", "0")


def test_resume_repairs_torn_lines_and_orphan_traces(tmp_path):
    trees_path, traces_path = tmp_path / "trees.jsonl", tmp_path / "traces.jsonl"
    kept = SearchTree("a", "Evaluate 1 + 1.", "2")
    append_tree(trees_path, kept)
    with trees_path.open("a") as f:
        f.write('{"problem_id": "b", "prob')  # killed mid-write
    traces = [{"problem_id": "a", "kind": "direct"}, {"problem_id": "b", "kind": "direct"}]
    traces_path.write_text("".join(json.dumps(t) + "\n" for t in traces) + '{"problem_id": "b", "ki')
    assert resume(trees_path, traces_path) == {"a"}
    assert trees_path.read_text().endswith("\n") and [t.problem_id for t in read_trees(trees_path)] == ["a"]
    assert read_jsonl(traces_path) == traces[:1]
    append_tree(trees_path, SearchTree("b", "Evaluate 2 + 2.", "4"))  # an append after repair is a clean line
    assert [t.problem_id for t in read_trees(trees_path)] == ["a", "b"]


def test_rerun_after_sigkill_loses_and_duplicates_nothing(tmp_path):
    out = tmp_path / "out"
    num = 40
    cmd = [sys.executable, "-m", "astro_pl.cli", "search", "--config", str(CONFIG), "--out_dir", str(out),
           "--limit", str(num), "--task.init_args.min_operations", "6", "--task.init_args.max_operations", "8",
           "--search.batch_size", "1", "--search.iterations", "48", "--search.num_rollouts", "48"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trees_path = out / "trees.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if trees_path.exists() and trees_path.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = [t.problem_id for t in read_trees(trees_path)]
    assert 3 <= len(before) < num

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{len(before)} problems already done" in rerun.stdout
    trees = list(read_trees(trees_path))
    ids = [t.problem_id for t in trees]
    assert ids[: len(before)] == before
    assert sorted(ids) == sorted(f"synthetic-0-{i}" for i in range(num)), "every problem exactly once"
    assert read_jsonl(out / "traces.jsonl") == expected_traces(trees, seed=0)
    assert json.loads((out / "summary.json").read_text())["trees"] == num


# ---- shards and merge ---------------------------------------------------------------------------------------

SMALL = ["--config", str(CONFIG), "--limit", "48", "--search.batch_size", "8"]


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("unsharded")
    assert main([*SMALL, "--out_dir", str(out)]) == 0
    return out


def test_two_shards_merged_equal_an_unsharded_run(unsharded, tmp_path, capsys):
    out = tmp_path / "sharded"
    for i in (1, 0):  # any order; 24 problems per shard, so its batches differ from the unsharded run's
        assert main([*SMALL, "--out_dir", str(out), "--shard", f"{i}/2"]) == 0
    assert "after all shards: astro search --merge" in capsys.readouterr().out
    first = [t.problem_id for t in read_trees(out / "shard-0-of-2" / "trees.jsonl")]
    assert first == [f"synthetic-0-{i}" for i in range(24)], "shard 0 is the first contiguous block"
    assert main(["--merge", str(out)]) == 0
    for name in ("trees.jsonl", "traces.jsonl", "summary.json", "run.json"):
        assert (out / name).read_text() == (unsharded / name).read_text(), name
    assert len(read_jsonl(out / "traces.jsonl")) > 48


def test_worker_processes_write_the_files_of_one_process(unsharded, tmp_path, capsys):
    out = tmp_path / "workers"
    # 3 forked workers over blocks of 8 problems; cut back to 20 trees as a kill leaves it, then resumed by 2 workers
    # (the number of workers is not a setting of the run): the files equal the one-process run's
    assert main([*SMALL, "--out_dir", str(out), "--workers", "3"]) == 0
    trees = out / "trees.jsonl"
    trees.write_text("".join(trees.read_text().splitlines(keepends=True)[:20]))
    assert main([*SMALL, "--out_dir", str(out), "--workers", "2"]) == 0
    assert "20 problems already done" in capsys.readouterr().out
    for name in ("trees.jsonl", "traces.jsonl", "summary.json"):
        assert (out / name).read_text() == (unsharded / name).read_text(), name


def shard_error(capsys, argv: list[str]) -> str:
    from astro_pl.cli import main as astro

    assert astro(["search", *argv]) == 2
    return capsys.readouterr().err


def test_merge_refuses_missing_mixed_and_unfinished_shards(tmp_path, capsys):
    out = tmp_path / "sharded"
    tiny = ["--config", str(CONFIG), "--limit", "6", "--search.iterations", "4", "--out_dir", str(out)]
    assert "found none" in shard_error(capsys, ["--merge", str(out)])
    main([*tiny, "--shard", "0/3"])
    main([*tiny, "--shard", "1/3"])
    assert "shards [2] of 3 are missing" in shard_error(capsys, ["--merge", str(out)])
    # a shard folder is claimed by its settings: a rerun with others is refused rather than mixed in
    err = shard_error(capsys, [*tiny, "--shard", "1/3", "--search.c_puct", "1.0"])
    assert "holds a run with other settings (settings.search.c_puct)" in err
    main([*tiny, "--shard", "2/3", "--seed", "5"])
    assert "shard 2 of 3 was run with other settings than shard 0 (seed)" in shard_error(capsys, ["--merge", str(out)])
    shutil.rmtree(out / "shard-2-of-3")
    main([*tiny, "--shard", "2/3"])
    trees = out / "shard-1-of-3" / "trees.jsonl"
    trees.write_text(trees.read_text().splitlines(keepends=True)[0])  # as if killed after one of two trees
    assert "1 of 2 trees; rerun shard 1/3 to finish it" in shard_error(capsys, ["--merge", str(out)])
    main([*tiny, "--shard", "1/3"])
    assert main(["--merge", str(out)]) == 0
    assert [t.problem_id for t in read_trees(out / "trees.jsonl")] == [f"synthetic-0-{i}" for i in range(6)]
    main([*tiny, "--shard", "0/2"])
    assert "expected the shards of one run (shard-I-of-N)" in shard_error(capsys, ["--merge", str(out)])


# ---- soundness judges ---------------------------------------------------------------------------------------

_COMPUTE = re.compile(r"Compute (-?\d+) ([+*-]) (-?\d+) = (-?\d+)\.")


def wrong_steps(steps: list[str]) -> list[str]:
    """Steps whose "Compute a op b = c" is arithmetically wrong (re-parsed independently of the judge)."""
    bad = []
    for step in steps:
        a, op, b, c = _COMPUTE.match(step).groups()
        if {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op] != int(c):
            bad.append(step)
    return bad


def test_teacher_judge_keeps_lucky_paths_out_of_the_traces(unsharded):
    trees = {t.problem_id: t for t in read_trees(unsharded / "trees.jsonl")}
    traces = read_jsonl(unsharded / "traces.jsonl")
    assert traces and all(not wrong_steps(trees[t["tree_id"]].steps(t["terminal_ids"][-1])) for t in traces)
    # the same trees without the judge teach some right answers reached through wrong steps
    unjudged = expected_traces(list(trees.values()), seed=0, judge=None)
    assert any(wrong_steps(trees[t["tree_id"]].steps(t["terminal_ids"][-1])) for t in unjudged)


def test_a_lucky_terminal_alone_yields_no_trace():
    tree = SearchTree("p", "Evaluate 7 + 5 * 3 - 2.", "20")
    a = tree.add_child(0, "Compute 5 * 3 = 16. Now we have 7 + 16 - 2.")
    b = tree.add_child(a.id, "Compute 7 + 16 = 22. Now we have 22 - 2.")
    lucky = tree.add_child(b.id, "Compute 22 - 2 = 20. The answer is \\boxed{20}.")
    wrong = tree.add_child(b.id, "Compute 22 - 2 = 19. The answer is \\boxed{19}.")
    for node, answer in ((lucky, "20"), (wrong, "19")):
        node.terminal, node.answer, node.correct = True, answer, answer == "20"
    assert build_traces(tree, TraceArgs(), random.Random(0))[0]["terminal_ids"][-1] == lucky.id  # without judge
    assert build_traces(tree, TraceArgs(), random.Random(0), judge=TASK_JUDGE) == []


def test_llm_judge_is_the_search_models_self_evaluation(vllm_engine, tiny_model_dir):
    proposer = LLMStepProposer(vllm_engine, load_tokenizer(str(tiny_model_dir)), ArithmeticTask())
    judge = build_judge("llm", ArithmeticTask(), proposer, SelfEvalArgs(num_samples=2, max_tokens=4, seed=3))
    assert judge.engine is vllm_engine and (judge.num_samples, judge.max_tokens, judge.seed) == (2, 4, 3)
    assert judge.render("Is it sound?") == "<s><|user|>\nIs it sound?\n<|assistant|>\n"
    tree = SearchTree("p", "Evaluate 2 + 3.", "5")
    ids = [tree.add_child(0, text).id for text in ("Compute 2 + 3 = 5. \\boxed{5}", "It is 5. \\boxed{5}")]
    verdicts = judge(tree, ids)
    assert len(verdicts) == 2 and all(isinstance(v, bool) for v in verdicts) and verdicts == judge(tree, ids)


def test_llm_proposer_through_the_cli(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    assert main(["--config", str(REPO / "configs" / "search" / "llm_math.yaml"), "--out_dir", str(out),
                 "--engine.kind", "hf", "--engine.model", str(tiny_model_dir), "--engine.dtype", "float32",
                 "--task", "astro_pl.tasks.ArithmeticTask", "--limit", "2", "--search.iterations", "2",
                 "--search.num_children", "2", "--search.num_rollouts", "2", "--search.max_depth", "3",
                 "--llm.max_step_tokens", "6", "--llm.max_rollout_tokens", "8", "--llm.few_shot", "[]",
                 "--self_eval.num_samples", "2", "--self_eval.max_tokens", "4"]) == 0
    trees = list(read_trees(out / "trees.jsonl"))
    assert sorted(t.problem_id for t in trees) == ["synthetic-0-0", "synthetic-0-1"]
    for tree in trees:
        assert tree.root.visits == 2 and len(tree.root.children) >= 1
        assert sum(tree.nodes[c].prior for c in tree.root.children) == pytest.approx(1.0)
    assert json.loads((out / "summary.json").read_text())["trees"] == 2


def test_task_knobs_reach_the_generator_and_the_folder_settings(tmp_path):
    out = tmp_path / "out"
    assert main(["--config", str(CONFIG), "--out_dir", str(out), "--limit", "20", "--search.iterations", "2",
                 "--task.init_args.min_operations", "1", "--task.init_args.max_operations", "1",
                 "--task.init_args.operators", "+", "--task.init_args.operand_max", "3"]) == 0
    trees = list(read_trees(out / "trees.jsonl"))
    operands = [int(n) for t in trees for n in re.findall(r"\d+", t.problem)]
    assert len(trees) == 20 and set(operands) <= {1, 2, 3} and all("-" not in t.problem for t in trees)
    assert json.loads((out / "run.json").read_text())["settings"]["task"]["init_args"]["operand_max"] == 3
