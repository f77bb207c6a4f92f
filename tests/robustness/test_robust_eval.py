"""`astro eval` (issue 20 items 2, 8, 9): bad numbers, models and checkpoints fail before any model loads with one
line, and nothing a finished run wrote is touched by a failed, killed or resumed rerun."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cases import REPO, Case, check_case

from astro_pl.runfiles import claim, read_jsonl

BASE = ["eval", "--engine.kind", "hf", "--task", "astro_pl.tasks.ArithmeticTask", "--task.num_test", "3",
        "--num_samples", "2", "--max_tokens", "8", "--batch_size", "1"]
MATH = ["eval", "--engine.kind", "hf", "--task", "astro_pl.tasks.MathTask", "--task.test"]
FINISHED = ["{done}/samples.jsonl", "{done}/summary.json"]

CASES = [
    Case("limit-negative", [*BASE, "--model", "{model}", "--out_dir", "{tmp}/x", "--limit", "-1"],
         message=r"--limit must be >= 1, got -1", kind="silent-wrong"),
    Case("limit-zero", [*BASE, "--model", "{model}", "--out_dir", "{tmp}/x", "--limit", "0"],
         message=r"--limit must be >= 1, got 0", kind="silent-wrong"),
    Case("temperature", [*BASE, "--model", "{model}", "--out_dir", "{tmp}/x", "--temperature", "-0.5"],
         message=r"--temperature must be >= 0, got -0.5", kind="traceback"),
    Case("top-p", [*BASE, "--model", "{model}", "--out_dir", "{tmp}/x", "--top_p", "0"],
         message=r"--top_p must be in \(0, 1\], got 0.0", kind="traceback"),
    Case("max-tokens", [*BASE, "--model", "{model}", "--out_dir", "{tmp}/x", "--max_tokens", "0"],
         message=r"--max_tokens must be >= 1, got 0", kind="traceback"),
    Case("samples-zero", [*BASE, "--model", "{model}", "--out_dir", "{tmp}/x", "--num_samples", "0"],
         message=r"--num_samples must be >= 1, got 0", kind="clean"),
    Case("unknown-flag", [*BASE, "--model", "{model}", "--out_dir", "{tmp}/x", "--temprature", "1"],
         message=r"unrecognized arguments: --temprature 1", kind="clean"),
    Case("no-model-folder", [*BASE, "--model", "/nonexistent/model", "--out_dir", "{tmp}/x"],
         message=r"--model /nonexistent/model: no such model folder", kind="traceback"),
    Case("no-tokenizer-files", [*BASE, "--model", "{no_tokenizer}", "--out_dir", "{tmp}/x"],
         message=r"--model {no_tokenizer}: no tokenizer files in the folder", kind="traceback"),
    Case("empty-benchmark", [*MATH, "[{empty}]", "--model", "{model}", "--out_dir", "{tmp}/x"],
         message=r"--task test split: no problems to evaluate", kind="silent-wrong"),
    Case("duplicate-ids", [*MATH, "[{dupes}]", "--model", "{model}", "--out_dir", "{tmp}/x"],
         message=r"--task.test 'dupes': duplicate problem ids \['a'\]", kind="silent-wrong"),
    Case("corrupt-checkpoint", [*BASE, "--model", "{model}", "--checkpoint", "{corrupt}", "--out_dir", "{done}"],
         message=r"--checkpoint .*corrupt.ckpt: corrupt or truncated checkpoint", unchanged=FINISHED,
         kind="data-loss"),
    Case("lora-checkpoint", [*BASE, "--model", "{model}", "--checkpoint", "{lora}", "--out_dir", "{done}"],
         message=r"holds LoRA adapters, not full weights; evaluate the merged Hugging Face export", unchanged=FINISHED,
         kind="data-loss"),
    Case("merge-incomplete", ["eval", "--merge", "{shards}"],
         message=r"shard 1 of 2 is incomplete \(0 samples\); rerun astro eval --shard 1/2",
         unchanged=["{shards}/samples.shard-0-of-2.jsonl"], kind="silent-wrong"),
]


@pytest.fixture(scope="module")
def paths(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    from astro_pl.loading import load_causal_lm
    from astro_pl.modules.lora import LoraArgs, add_lora

    tmp = tmp_path_factory.mktemp("eval")
    paths = {"tmp": tmp, "model": tiny_model_dir, "done": tmp / "done", "shards": tmp / "shards"}
    no_tokenizer = tmp / "no_tokenizer"
    no_tokenizer.mkdir()
    shutil.copy(tiny_model_dir / "config.json", no_tokenizer)
    shutil.copy(tiny_model_dir / "model.safetensors", no_tokenizer)
    (tmp / "empty.jsonl").write_text("")
    (tmp / "dupes.jsonl").write_text("".join(json.dumps({"id": "a", "problem": f"Evaluate {i} + 1.",
                                                        "answer": str(i + 1)}) + "\n" for i in range(2)))
    lora_model = add_lora(load_causal_lm(str(tiny_model_dir)), LoraArgs(r=2))
    torch.save({"state_dict": {f"model.{k}": v for k, v in lora_model.state_dict().items()}}, tmp / "lora.ckpt")
    (tmp / "corrupt.ckpt").write_bytes((tmp / "lora.ckpt").read_bytes()[:1000])
    paths |= {"no_tokenizer": no_tokenizer, "empty": tmp / "empty.jsonl", "dupes": tmp / "dupes.jsonl",
              "lora": tmp / "lora.ckpt", "corrupt": tmp / "corrupt.ckpt"}
    argv = [a.replace("{model}", str(tiny_model_dir)) for a in BASE]
    from astro_pl.cli import main as astro

    assert astro([*argv, "--model", str(tiny_model_dir), "--out_dir", str(paths["done"])]) == 0
    assert astro([*argv, "--model", str(tiny_model_dir), "--out_dir", str(paths["shards"]), "--shard", "0/2"]) == 0
    (paths["shards"] / "settings.shard-1-of-2.json").write_text(
        (paths["shards"] / "settings.shard-0-of-2.json").read_text().replace("[0, 1]", "[1, 3]"))
    return paths


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_case(case, paths, capsys):
    start = time.monotonic()
    check_case(case, paths, capsys)
    assert time.monotonic() - start < 30, "a bad input must fail before any model loads"


def test_second_writer_fails_at_once(paths, capsys):
    with claim(paths["done"]):
        check_case(Case("second-writer", [*BASE, "--model", "{model}", "--out_dir", "{done}"], unchanged=FINISHED,
                        message=rf"--out_dir {paths['done']}: in use by another run \(pid {os.getpid()}\)",
                        kind="data-loss"), paths, capsys)


def test_kill_keeps_the_finished_samples_and_the_rerun_resumes(paths, tmp_path):
    """A finished folder rerun with more problems, killed after its first problem: the old samples.jsonl and
    summary.json are untouched; the rerun resumes from the partial file and ends with a full run's samples."""
    out = tmp_path / "run"
    shutil.copytree(paths["done"], out)
    old = {name: (out / name).read_bytes() for name in ("samples.jsonl", "summary.json")}
    argv = [sys.executable, "-m", "astro_pl.cli", *BASE, "--model", str(paths["model"]), "--out_dir", str(out),
            "--max_tokens", "24"]
    argv[argv.index("--task.num_test") + 1] = "12"
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = out / "samples.jsonl.partial"
    deadline = time.time() + 240
    while (not partial.exists() or len(read_jsonl(partial)) < 4) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert {name: (out / name).read_bytes() for name in old} == old
    kept = len(read_jsonl(partial))
    assert 0 < kept < 24
    subprocess.run(argv, cwd=REPO, check=True, capture_output=True)
    assert not partial.exists()
    resumed = read_jsonl(out / "samples.jsonl")
    assert [(r["index"], r["sample"]) for r in resumed] == [(i, k) for i in range(12) for k in range(2)]
    fresh = tmp_path / "fresh"
    subprocess.run([*argv[:argv.index("--out_dir") + 1], str(fresh), *argv[argv.index("--out_dir") + 2:]], cwd=REPO,
                   check=True, capture_output=True)
    assert resumed == read_jsonl(fresh / "samples.jsonl"), "resuming changes no sample"
