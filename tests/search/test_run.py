"""`astro search`: config parsing, output files and summary, and crash safety under a real SIGKILL."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from astro_pl.search.linearize import TraceArgs, build_traces
from astro_pl.search.run import main, read_jsonl, resume
from astro_pl.search.tree import SearchTree, append_tree, read_trees

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "search" / "synthetic.yaml"


def expected_traces(trees: list[SearchTree], seed: int) -> list[dict]:
    """What traces.jsonl must hold: each tree's traces exactly once, in tree order, as the run seeds them."""
    return [r for t in trees for r in build_traces(t, TraceArgs(), random.Random(f"{seed}:{t.problem_id}"))]


def test_search_writes_trees_traces_and_summary(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--config", str(CONFIG), "--out_dir", str(out), "--problems.num_synthetic", "12",
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
    main(["--config", str(CONFIG), "--out_dir", str(out), "--problems.num_synthetic", "4"])
    ds = datasets.load_dataset("json", data_files=str(out / "traces.jsonl"), split="train")
    assert len(ds) == len(read_jsonl(out / "traces.jsonl")) > 0
    assert {"problem", "gold", "trace", "kind", "num_backtracks", "tree_id"} <= set(ds.column_names)


def test_print_config_and_flag_errors(capsys, tmp_path):
    with pytest.raises(SystemExit) as done:
        main(["--config", str(CONFIG), "--print_config"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    assert "c_puct: 2.0" in printed and "error_rate: 0.3" in printed
    with pytest.raises(SystemExit) as done:
        main(["--config", str(CONFIG), "--out_dir", str(tmp_path / "unused"), "--search.num_rollouts", "0"])
    assert done.value.code != 0
    assert "--search.num_rollouts must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--config", str(CONFIG), "--out_dir", str(tmp_path / "unused"), "--proposer", "llm"])
    assert "--engine.model" in capsys.readouterr().err


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
           "--problems.num_synthetic", str(num), "--problems.min_operations", "6", "--problems.max_operations", "8",
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


def test_llm_proposer_through_the_cli(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    assert main(["--config", str(REPO / "configs" / "search" / "llm_math.yaml"), "--out_dir", str(out),
                 "--engine_kind", "hf", "--engine.model", str(tiny_model_dir), "--engine.dtype", "float32",
                 "--problems.source", "synthetic", "--problems.num_synthetic", "2", "--search.iterations", "2",
                 "--search.num_children", "2", "--search.num_rollouts", "2", "--search.max_depth", "3",
                 "--llm.max_step_tokens", "6", "--llm.max_rollout_tokens", "8", "--llm.few_shot", "[]"]) == 0
    trees = list(read_trees(out / "trees.jsonl"))
    assert sorted(t.problem_id for t in trees) == ["synthetic-0-0", "synthetic-0-1"]
    for tree in trees:
        assert tree.root.visits == 2 and len(tree.root.children) >= 1
        assert sum(tree.nodes[c].prior for c in tree.root.children) == pytest.approx(1.0)
    assert json.loads((out / "summary.json").read_text())["trees"] == 2
