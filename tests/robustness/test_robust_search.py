"""`astro search` under bad input, reruns, a second writer and a full disk (issue 20 items 5, 7, 8, 9)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cases import REPO, Case, check_case, limit_file_size

from astro_pl.runfiles import claim, read_jsonl

CONFIG = REPO / "configs" / "search" / "synthetic.yaml"
SMALL = ["search", "--config", str(CONFIG), "--limit", "3", "--search.iterations", "2"]
MATH = ["--task", "astro_pl.tasks.MathTask", "--judge", "none", "--task.train"]

CASES = [
    Case("unknown-flag", [*SMALL, "--out_dir", "{tmp}/a", "--search.num_iterations", "3"],
         message=r"unrecognized arguments: --search.num_iterations 3", kind="clean"),
    Case("bad-type", [*SMALL, "--out_dir", "{tmp}/a", "--search.iterations", "many"],
         message=r'Parser key "search.iterations": Expected a <class \'int\'>', kind="clean"),
    Case("zero-rollouts", [*SMALL, "--out_dir", "{tmp}/a", "--search.num_rollouts", "0"],
         message=r"--search.num_rollouts must be >= 1, got 0", kind="clean"),
    Case("limit-zero", [*SMALL, "--out_dir", "{tmp}/a", "--limit", "0"],
         message=r"--task train split: no problems to search", kind="silent-wrong"),
    Case("limit-negative", [*SMALL, "--out_dir", "{tmp}/a", "--limit", "-1"],
         message=r"--limit must be >= 0, got -1", kind="clean"),
    Case("empty-problems-file", [*SMALL, "--out_dir", "{tmp}/a", *MATH, "[{empty}]"],
         message=r"--task train split: no problems to search", kind="silent-wrong"),
    Case("duplicate-ids", [*SMALL, "--out_dir", "{tmp}/a", *MATH, "[{dupes}]"],
         message=r"duplicate problem ids \['p1'\]", kind="silent-wrong"),
    Case("bad-json-line", [*SMALL, "--out_dir", "{tmp}/a", *MATH, "[{badjson}]"],
         message=r"badjson.jsonl.*line 2", kind="clean"),
    Case("huge-problem", [*SMALL, "--out_dir", "{tmp}/a", *MATH, "[{huge}]"],
         message=r"problem 'huge' has 1000007 characters, over --max_problem_chars 20000", kind="hang"),
    Case("other-settings", [*SMALL, "--out_dir", "{done}", "--seed", "7"],
         message=r"holds a run with other settings \(settings.seed\)",
         unchanged=["{done}/trees.jsonl", "{done}/traces.jsonl"],
         kind="clean"),
    Case("merge-missing-shard", ["search", "--merge", "{tmp}/noshards"],
         message=r"expected the shards of one run", kind="clean"),
    Case("no-out-dir", ["search", "--search.iterations", "2"], message=r"--out_dir is required", kind="clean"),
    Case("torn-run-json", [*SMALL, "--out_dir", "{torn}"], message=r"run.json: not a JSON file",
         unchanged=["{torn}/trees.jsonl"], kind="traceback"),
    Case("unwritable-out-dir", [*SMALL, "--out_dir", "/sys/astro-robustness"],
         message=r"/sys/astro-robustness: (Operation not permitted|Permission denied|Read-only file system)",
         kind="traceback"),
]


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("search")
    (tmp / "empty.jsonl").write_text("")
    rows = [{"id": "p1", "problem": "Evaluate 1 + 1.", "answer": "2"}] * 2
    (tmp / "dupes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp / "badjson.jsonl").write_text(json.dumps(rows[0]) + "\n{not json\n")
    expr = " + ".join(["1"] * 250_000)
    (tmp / "huge.jsonl").write_text(json.dumps({"id": "huge", "problem": f"Evaluate {expr}.", "answer": "250000"}))
    done = tmp / "done"
    subprocess.run([sys.executable, "-m", "astro_pl.cli", *SMALL, "--out_dir", str(done)], cwd=REPO, check=True,
                   capture_output=True)
    torn = tmp / "torn"
    torn.mkdir()
    (torn / "trees.jsonl").write_text((done / "trees.jsonl").read_text())
    (torn / "run.json").write_text((done / "run.json").read_text()[:40])
    return {"tmp": tmp, "empty": tmp / "empty.jsonl", "dupes": tmp / "dupes.jsonl", "badjson": tmp / "badjson.jsonl",
            "huge": tmp / "huge.jsonl", "done": done, "torn": torn}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_case(case, paths, capsys):
    start = time.monotonic()
    check_case(case, paths, capsys)
    assert time.monotonic() - start < 60, "a bad input must fail fast"


def test_second_writer_fails_at_once_naming_the_holder(paths, capsys):
    out = paths["tmp"] / "locked"
    with claim(out):
        check_case(Case("second-writer", [*SMALL, "--out_dir", str(out)],
                        message=rf"--out_dir {out}: in use by another run \(pid {os.getpid()}\)", kind="data-loss"),
                   paths, capsys)
    assert not (out / "trees.jsonl").exists()


def test_rerun_drops_trees_and_traces_written_twice(paths, tmp_path):
    """Before folders were locked, two runs into one folder doubled every tree and trace; a rerun repairs that."""
    out = tmp_path / "doubled"
    out.mkdir()
    for name in ("trees.jsonl", "traces.jsonl", "run.json"):
        text = (paths["done"] / name).read_text()
        (out / name).write_text(text * 2 if name != "run.json" else text)
    subprocess.run([sys.executable, "-m", "astro_pl.cli", *SMALL, "--out_dir", str(out)], cwd=REPO, check=True,
                   capture_output=True)
    for name in ("trees.jsonl", "traces.jsonl"):
        assert read_jsonl(out / name) == read_jsonl(paths["done"] / name), name
    assert json.loads((out / "summary.json").read_text())["trees"] == 3


def test_full_disk_is_one_line_and_a_rerun_finishes(paths, tmp_path):
    """A file-size limit makes every write past 3,000 bytes fail with EFBIG, as a full disk fails with ENOSPC."""
    out = tmp_path / "full"
    argv = [sys.executable, "-m", "astro_pl.cli", *SMALL, "--out_dir", str(out)]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, preexec_fn=limit_file_size(3000))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("astro ")]
    assert line.startswith("astro search: error: ") and "File too large" in line and str(out) in line, line
    subprocess.run(argv, cwd=REPO, check=True, capture_output=True)
    for name in ("trees.jsonl", "traces.jsonl"):
        assert read_jsonl(out / name) == read_jsonl(paths["done"] / name), name
