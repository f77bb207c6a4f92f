"""`astro tiny-model` (issue 20 items 6 and 8): a trained model is never overwritten unasked, and sizes or inputs it
would ignore are errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cases import Case, check_case

TEXTS = ["tiny-model", "--texts", "{texts}", "--hidden_size", "64", "--intermediate_size", "64"]

CASES = [
    Case("overwrite-trained", [*TEXTS, "--out", "{trained}"],
         message=r"--out {trained}: not empty \(it may hold a trained model\); pass --overwrite",
         unchanged=["{trained}/model.safetensors", "{trained}/config.json"], kind="data-loss"),
    Case("vocab-zero", [*TEXTS, "--out", "{tmp}/v0", "--vocab_size", "0"],
         message=r"--vocab_size must be >= 261 \(256 bytes \+ 5 special tokens\), got 0", kind="silent-wrong"),
    Case("heads-not-dividing", [*TEXTS, "--out", "{tmp}/h", "--num_attention_heads", "3"],
         message=r"--hidden_size 64 must be a multiple of --num_attention_heads 3", kind="traceback"),
    Case("zero-layers", [*TEXTS, "--out", "{tmp}/l", "--num_hidden_layers", "0"],
         message=r"--num_hidden_layers must be >= 1, got 0", kind="traceback"),
    Case("empty-texts", ["tiny-model", "--texts", "{empty}", "--out", "{tmp}/e"],
         message=r"--texts .*empty.jsonl: no text in the fields \['problem', 'trace'\]", kind="silent-wrong"),
    Case("missing-texts", ["tiny-model", "--texts", "{tmp}/none.jsonl", "--out", "{tmp}/m"],
         message=r"none.jsonl: No such file or directory", kind="traceback"),
    Case("bad-json", ["tiny-model", "--texts", "{badjson}", "--out", "{tmp}/b"],
         message=r"badjson.jsonl:2: not a JSON record", kind="traceback"),
]


@pytest.fixture(scope="module")
def paths(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("tiny")
    texts = tmp / "texts.jsonl"
    texts.write_text("".join(json.dumps({"problem": f"Evaluate {i} + 1.", "trace": f"\\boxed{{{i + 1}}}"}) + "\n"
                             for i in range(40)))
    (tmp / "empty.jsonl").write_text("\n")
    (tmp / "badjson.jsonl").write_text(texts.read_text().splitlines()[0] + "\n{oops\n")
    return {"tmp": tmp, "texts": texts, "empty": tmp / "empty.jsonl", "badjson": tmp / "badjson.jsonl",
            "trained": tiny_model_dir}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_case(case, paths, capsys):
    check_case(case, paths, capsys)


def test_overwrite_when_asked(paths, capsys, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("old")
    check_case(Case("overwrite-asked", [*TEXTS, "--out", str(out), "--vocab_size", "300", "--overwrite", "true"],
                    code=0, kind="clean"), paths, capsys)
    assert (out / "config.json").exists()
