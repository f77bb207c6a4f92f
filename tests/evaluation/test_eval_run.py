"""`astro eval` end to end with the tiny model: both engines, synthetic set and 10 MATH-500 problems, shards and
merge, Lightning checkpoints, configs."""

from __future__ import annotations

import json
from argparse import ArgumentError
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from astro_pl.data.problems import ProblemSource
from astro_pl.evaluation.run import (
    EvalArgs,
    checkpoint_weights,
    evaluate,
    main,
    merge_shards,
    parse_args,
    score_sample,
)
from astro_pl.rollout.base import Completion, EngineArgs
from astro_pl.shards import parse_shard, shard_range
from astro_pl.tasks import ArithmeticTask, MathTask

REPO = Path(__file__).resolve().parents[2]
RECORD_KEYS = {"benchmark", "problem_id", "index", "sample", "gold", "answer", "correct", "backtracks", "reflections",
               "grounded_backtracks", "length", "finish_reason", "task", "text"}


# two problem sets of one task, each reported by its name
MIXED = MathTask(test=[ProblemSource("math500", limit=10), ProblemSource("amc23", limit=6)])


def small_args(model: Path, out_dir: Path, engine: str, **overrides) -> EvalArgs:
    base = EvalArgs(model=str(model), engine=EngineArgs(kind=engine, max_model_len=2048), task=MIXED,
                    num_samples=2, temperature=1.0, top_p=1.0, max_tokens=32, pass_at=[1, 2], maj_at=[2],
                    batch_size=4, out_dir=str(out_dir))
    return replace(base, **overrides)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def check_outputs(out_dir: Path, summary: dict, num_problems: dict[str, int], k: int) -> list[dict]:
    records = read_jsonl(out_dir / "samples.jsonl")
    assert len(records) == k * sum(num_problems.values())
    assert all(set(r) == RECORD_KEYS for r in records)
    assert all(r["task"] == {} for r in records)  # this task has no verdicts of its own (Task.judge's default)
    assert [r["benchmark"] for r in records[::k]] == [b for b, n in num_problems.items() for _ in range(n)]
    assert all(0 < r["length"] <= 32 and isinstance(r["text"], str) for r in records)
    assert json.loads((out_dir / "summary.json").read_text()) == summary
    for name, n in num_problems.items():
        scores = summary["benchmarks"][name]
        assert scores["num_problems"] == n and scores["num_samples"] == k
        assert {"pass@1", "pass@2", "maj@2", "mean_length", "mean_backtracks", "pearson_r"} <= set(scores)
        lengths = [r["length"] for r in records if r["benchmark"] == name]
        assert scores["mean_length"] == pytest.approx(sum(lengths) / len(lengths))
        assert scores["pass@1"] == pytest.approx(sum(r["correct"] for r in records if r["benchmark"] == name) / (n * k))
        cut = [r for r in records if r["benchmark"] == name and r["finish_reason"] == "length"]
        assert scores["truncation_rate"] == pytest.approx(len(cut) / (n * k))
        assert all(r["answer"] is None and not r["correct"] for r in cut)
    assert (out_dir / "backtracks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return records


def test_hf_engine_end_to_end(tiny_model_dir, tmp_path, capsys):
    args = small_args(tiny_model_dir, tmp_path / "hf", "hf")
    summary = evaluate(args)  # builds its own HFEngine through the factory
    check_outputs(tmp_path / "hf", summary, {"math500": 10, "amc23": 6}, k=2)
    printed = capsys.readouterr().out
    assert "| math500 | 10 |" in printed and "| amc23 | 6 |" in printed
    assert summary["settings"]["task"]["class_path"] == "astro_pl.tasks.math.MathTask"
    assert summary["settings"]["num_samples"] == 2


def test_vllm_engine_end_to_end_and_shards_merge_to_the_same_summary(vllm_engine, tiny_model_dir, tmp_path):
    args = small_args(tiny_model_dir, tmp_path / "full", "vllm", batch_size=16)
    summary = evaluate(args, engine=vllm_engine)
    records = check_outputs(tmp_path / "full", summary, {"math500": 10, "amc23": 6}, k=2)
    assert len({r["text"] for r in records}) > len(records) // 2  # sampled, not one repeated string
    # Shards use other batch boundaries (3 problems per call); per-problem seeds make the samples identical.
    for i in range(2):
        shard_args = replace(args, out_dir=str(tmp_path / "shards"), shard=f"{i}/2", batch_size=3)
        assert evaluate(shard_args, engine=vllm_engine) is None
    assert main(["--merge", str(tmp_path / "shards")]) == 0
    merged = json.loads((tmp_path / "shards" / "summary.json").read_text())
    assert merged == summary
    assert read_jsonl(tmp_path / "shards" / "samples.jsonl") == records


def test_hf_shards_merge_to_the_same_summary(hf_engine, tiny_model_dir, tmp_path):
    # transformers draws a batch's rows from one generator: one problem per call keeps samples batch-independent
    args = small_args(tiny_model_dir, tmp_path / "full", "hf", batch_size=1, task=ArithmeticTask(num_test=5))
    summary = evaluate(args, engine=hf_engine)
    for i in range(2):
        evaluate(replace(args, out_dir=str(tmp_path / "shards"), shard=f"{i}/2"), engine=hf_engine)
    assert sorted(p.name for p in (tmp_path / "shards").iterdir() if not p.name.startswith(".")) == [
        "samples.shard-0-of-2.jsonl", "samples.shard-1-of-2.jsonl", "settings.shard-0-of-2.json",
        "settings.shard-1-of-2.json"]
    assert merge_shards(tmp_path / "shards") == summary
    assert (tmp_path / "shards" / "summary.md").read_text() == (tmp_path / "full" / "summary.md").read_text()


def test_merge_refuses_missing_or_mismatched_shards(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    with pytest.raises(ValueError, match="found none"):
        merge_shards(shards)
    (shards / "settings.shard-0-of-3.json").write_text(json.dumps({"seed": 0}))
    (shards / "settings.shard-2-of-3.json").write_text(json.dumps({"seed": 0}))
    with pytest.raises(ValueError, match=r"shards \[1\] of 3 are missing"):
        merge_shards(shards)
    (shards / "settings.shard-1-of-3.json").write_text(json.dumps({"seed": 1}))
    with pytest.raises(ValueError, match="different settings"):
        merge_shards(shards)


def test_lightning_checkpoint_weights_replace_the_model(tiny_model_dir, tmp_path):
    from astro_pl.loading import load_causal_lm
    from astro_pl.modules.tiny_llama import build_tiny_llama

    other_dir = build_tiny_llama(tiny_model_dir, tmp_path / "other", seed=1)
    other = load_causal_lm(str(other_dir), "float32")
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in other.state_dict().items()}, "epoch": 0}, ckpt)
    weights = checkpoint_weights(ckpt, str(tiny_model_dir))
    assert set(weights) == set(other.state_dict())
    assert all(torch.equal(weights[k], v) for k, v in other.state_dict().items())

    args = small_args(tiny_model_dir, tmp_path / "ckpt", "hf", batch_size=2, task=ArithmeticTask(num_test=4),
                      checkpoint=str(ckpt))
    via_ckpt = evaluate(args)
    direct = evaluate(replace(args, model=str(other_dir), checkpoint=None, out_dir=str(tmp_path / "direct")))
    base = evaluate(replace(args, checkpoint=None, out_dir=str(tmp_path / "base")))
    texts = {name: [r["text"] for r in read_jsonl(tmp_path / name / "samples.jsonl")]
             for name in ("ckpt", "direct", "base")}
    assert texts["ckpt"] == texts["direct"] and texts["ckpt"] != texts["base"]
    assert via_ckpt["benchmarks"] == direct["benchmarks"] and base["benchmarks"]["synthetic"]["num_problems"] == 4

    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {"model.lm_head.weight": torch.zeros(1)}}, bad)
    with pytest.raises(ValueError, match=r"bad\.ckpt: state_dict does not fit .* missing \['model\.embed_tokens"):
        checkpoint_weights(bad, str(tiny_model_dir))
    torch.save({"weights": {}}, bad)
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        checkpoint_weights(bad, str(tiny_model_dir))


def test_score_sample_extracts_last_boxed_answer_and_counts_backtracks():
    text = ("2 + 3 = \\boxed{6}\n\nBut wait, are we solving the problem correctly so far? Hmm... Let's go back to "
            "where we wrote \"2 + 3\" and try again.\n\n2 + 3 = 5, so \\boxed{5}")
    from astro_pl.data.problems import Problem

    record = score_sample("synthetic", 3, Problem("p", "Evaluate 2 + 3.", "5"), 1,
                          Completion(text, [1, 2, 3], [], "stop"), EvalArgs(model="m", task=ArithmeticTask()))
    assert record["answer"] == "5" and record["correct"] is True
    assert record["backtracks"] == 1 and record["reflections"] == 1 and record["length"] == 3
    assert record["grounded_backtracks"] == 1  # "2 + 3" was written before going back to it
    no_answer = score_sample("synthetic", 3, Problem("p", "q", "5"), 0, Completion("5", [1], [], "stop"),
                             EvalArgs(model="m", task=ArithmeticTask()))
    assert no_answer["answer"] is None and no_answer["correct"] is False


def test_a_cut_off_sample_has_no_answer_even_with_a_correct_earlier_box():
    from astro_pl.data.problems import Problem

    # An ASTRO-style response that boxed the right answer, doubted it, and ran out of tokens mid-retry.
    text = ("2 + 3 = 5, so \\boxed{5}\n\nBut wait, are we solving the problem correctly so far? Hmm... Let's go "
            "back to where we wrote \"2 + 3\" and try a different step from there.\n\n2 + 3 =")
    problem, cut = Problem("p", "Evaluate 2 + 3.", "5"), Completion(text, [7] * 32, [], "length")
    record = score_sample("synthetic", 0, problem, 0, cut, EvalArgs(model="m", task=ArithmeticTask()))
    assert record["answer"] is None and record["correct"] is False and record["finish_reason"] == "length"
    assert record["backtracks"] == 1  # still counted: the text is analysed, only the answer is withheld
    old_rule = score_sample("synthetic", 0, problem, 0, cut,
                            EvalArgs(model="m", task=ArithmeticTask(), score_truncated=True))
    assert old_rule["answer"] == "5" and old_rule["correct"] is True
    finished = score_sample("synthetic", 0, problem, 0, cut._replace(finish_reason="stop"),
                            EvalArgs(model="m", task=ArithmeticTask()))
    assert finished["correct"] is True


def test_cut_off_samples_score_as_no_answer_in_the_summary(tmp_path):
    """pass@k, maj@k, truncation rate and pass@1 of finished samples from records that `score_sample` made."""
    from astro_pl.data.problems import Problem
    from astro_pl.evaluation.report import summarize
    from astro_pl.evaluation.run import scored_settings

    args = EvalArgs(model="m", task=ArithmeticTask(), num_samples=4, pass_at=[1, 4], maj_at=[4])
    problem = Problem("p", "Evaluate 2 + 3.", "5")
    outputs = [("\\boxed{5}", "stop"), ("\\boxed{5} But wait", "length"), ("\\boxed{5} Hmm", "length"),
               ("\\boxed{6}", "stop")]
    records = [score_sample("math500", 0, problem, i, Completion(t, [1] * 8, [], reason), args)
               for i, (t, reason) in enumerate(outputs)]
    scores = summarize(records, scored_settings(args))["benchmarks"]["math500"]
    # Only samples 0 ("5", right) and 3 ("6", wrong) have answers: pass@1 = 1/4, maj@4 = tie of 5 and 6 = 0.5.
    assert scores["pass@1"] == 0.25 and scores["pass@4"] == 1.0 and scores["maj@4"] == 0.5
    assert scores["truncation_rate"] == 0.5 and scores["pass@1_finished"] == 0.5
    old = summarize([score_sample("math500", 0, problem, i, Completion(t, [1] * 8, [], reason),
                                  replace(args, score_truncated=True)) for i, (t, reason) in enumerate(outputs)],
                    scored_settings(args))["benchmarks"]["math500"]
    assert old["pass@1"] == 0.75 and old["maj@4"] == 1.0  # the old rule counts the early boxes


def test_shards_partition_the_problems():
    for num_items in (0, 1, 7, 100):
        for count in (1, 3, 8):
            blocks = [list(shard_range(num_items, i, count)) for i in range(count)]
            assert sum(blocks, []) == list(range(num_items))
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "1", "-1/2", "a/b"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


@pytest.mark.parametrize("name", ["synthetic.yaml", "math.yaml"])
def test_configs_parse(name):
    args = parse_args(["--config", str(REPO / "configs" / "eval" / name)])
    assert args.num_samples >= max(args.pass_at + args.maj_at)
    if name == "math.yaml":
        assert [s.source for s in args.task.sources["test"]] == ["math500", "amc23", "aime24"]
        assert args.num_samples == 16 and args.maj_at == [8]


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match=r"--maj_at values must be in \[1, num_samples=4\]"):
        parse_args(["--model", "m", "--task", "astro_pl.tasks.MathTask", "--num_samples", "4", "--maj_at", "[8]"])
    with pytest.raises(ValueError, match="--model is required"):
        parse_args(["--task", "astro_pl.tasks.MathTask"])
    with pytest.raises(ArgumentError, match="kind"):
        parse_args(["--model", "m", "--task", "astro_pl.tasks.MathTask", "--engine.kind", "tgi"])


def test_astro_eval_cli_with_the_synthetic_config(tiny_model_dir, tmp_path, capsys):
    from astro_pl.cli import main as astro

    out = tmp_path / "cli"
    assert astro(["eval", "--config", str(REPO / "configs" / "eval" / "synthetic.yaml"), "--model", str(tiny_model_dir),
                  "--task.init_args.num_test", "3", "--max_tokens", "16", "--out_dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmarks"]["synthetic"]["num_problems"] == 3 and summary["settings"]["num_samples"] == 4
    assert summary["settings"]["task"]["init"]["seeds"]["test"] == 12345
    assert "maj@4" in summary["benchmarks"]["synthetic"]
    assert len((out / "samples.jsonl").read_text().splitlines()) == 12
    assert "| synthetic | 3 |" in capsys.readouterr().out


def test_print_config_round_trips(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--config", str(REPO / "configs" / "eval" / "math.yaml"), "--limit", "5", "--print_config"])
    assert exit_info.value.code == 0
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    args = parse_args(["--config", str(printed)])
    assert args.limit == 5 and args.maj_at == [8] and args.engine.max_model_len == 10240
