"""`astro select-prompts` through real engines: scores, the band, resume after a kill, shards, and RL reading the
selection. The policy is the briefly trained tiny Llama (right only sometimes), so pass rates spread over [0, 1]."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from rl_helpers import EASY
from safetensors.torch import load_file

from astro_pl.datamodules.prompts import PromptDataModule
from astro_pl.evaluation.select_prompts import SelectArgs, merge_shards, select_prompts
from astro_pl.rollout import EngineArgs
from astro_pl.tasks import ArithmeticTask, MathTask

REPO = Path(__file__).resolve().parents[2]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def by_index(path: Path) -> list[dict]:
    return sorted(lines(path), key=lambda r: r["index"])


def test_scores_band_resume_shards_and_rl_reads_the_selection(rl_policy_dir, tiny_model_dir, vllm_engine, tmp_path):
    args = SelectArgs(task=ArithmeticTask(num_train=12, seed=7, **EASY), model=str(rl_policy_dir),
                      engine=EngineArgs(kind="vllm"), num_samples=4, temperature=1.0, max_tokens=16, batch_size=5,
                      out_dir=str(tmp_path / "full"))
    vllm_engine.load_weights(load_file(rl_policy_dir / "model.safetensors").items())
    try:
        summary = select_prompts(args, engine=vllm_engine)
        full = by_index(tmp_path / "full" / "scores.jsonl")
        assert [r["index"] for r in full] == list(range(12)) and all(r["num_samples"] == 4 for r in full)
        assert all(r["pass_rate"] == r["correct"] / 4 for r in full)
        rates = {r["pass_rate"] for r in full}
        assert rates & {0.25, 0.5, 0.75} and rates - {0.25, 0.5, 0.75}  # some prompts in the band, some outside
        selected = lines(tmp_path / "full" / "selected.jsonl")
        assert selected == [r["problem"] for r in full if 0 < r["pass_rate"] <= 0.75]
        assert summary["selected"] == len(selected) and summary["prompts"] == 12

        # a run killed after prompts 0-2 and 4 (written out of order) and in the middle of prompt 5's line
        partial = tmp_path / "partial"
        partial.mkdir()
        (partial / "settings.json").write_text((tmp_path / "full" / "settings.json").read_text())
        torn = json.dumps(full[5])[:40]
        (partial / "scores.jsonl").write_text("".join(json.dumps(full[i]) + "\n" for i in (0, 1, 4, 2)) + torn)
        select_prompts(replace(args, batch_size=3, out_dir=str(partial)), engine=vllm_engine)
        assert by_index(partial / "scores.jsonl") == full  # the same samples: each prompt is seeded by its index
        assert lines(partial / "selected.jsonl") == selected

        # other scoring settings in the same folder are refused; another band just selects again
        with pytest.raises(ValueError, match="num_samples"):
            select_prompts(replace(args, num_samples=2, out_dir=str(partial)), engine=vllm_engine)
        wide = select_prompts(replace(args, max_pass_rate=1.0, out_dir=str(partial)), engine=vllm_engine)
        assert wide["selected"] == sum(r["pass_rate"] > 0 for r in full)

        # two shards merge to the unsharded files
        for i in range(2):
            assert select_prompts(replace(args, shard=f"{i}/2", out_dir=str(tmp_path / "shards")),
                                  engine=vllm_engine) is None
        merged = merge_shards(replace(args, merge=str(tmp_path / "shards")))
        assert lines(tmp_path / "shards" / "scores.jsonl") == full
        assert lines(tmp_path / "shards" / "selected.jsonl") == selected and merged["selected"] == len(selected)
    finally:
        vllm_engine.load_weights(load_file(tiny_model_dir / "model.safetensors").items())

    # RL trains on the selection as a task's training source
    data = PromptDataModule(MathTask(train=[str(tmp_path / "full" / "selected.jsonl")], val=[], test=[]), batch_size=2)
    data.setup("fit")
    assert [(p.problem, p.answer) for p in data.train_items] == [(p["problem"], p["answer"]) for p in selected]


def test_merge_refuses_a_missing_or_unfinished_shard(rl_policy_dir, tmp_path, capsys):
    from astro_pl.evaluation.select_prompts import main

    out = tmp_path / "shards"
    options = ["--config", str(REPO / "configs" / "select_prompts" / "synthetic.yaml"), "--model", str(rl_policy_dir),
               "--engine.kind", "hf", "--task.init_args.num_train", "4", "--max_tokens", "8", "--out_dir", str(out)]
    assert main([*options, "--shard", "0/2"]) == 0
    assert [r["index"] for r in lines(out / "scores.shard-0-of-2.jsonl")] == [0, 1]
    assert main(["--merge", str(out)]) == 2
    assert "shards [1] of 2 are missing" in capsys.readouterr().err
    assert main([*options, "--shard", "1/2"]) == 0
    scores = out / "scores.shard-1-of-2.jsonl"
    scores.write_text(scores.read_text().splitlines(keepends=True)[0])  # shard 1 killed after its first prompt
    assert main(["--merge", str(out)]) == 2
    assert "the shards scored 3 of 4 prompts" in capsys.readouterr().err


def test_astro_select_prompts_cli_with_the_config(rl_policy_dir, tmp_path, capsys):
    from astro_pl.cli import main as astro

    out = tmp_path / "cli"
    assert astro(["select-prompts", "--config", str(REPO / "configs" / "select_prompts" / "synthetic.yaml"),
                  "--model", str(rl_policy_dir), "--engine.kind", "hf", "--task.init_args.num_train", "3",
                  "--max_tokens", "8", "--out_dir", str(out)]) == 0
    assert len(lines(out / "scores.jsonl")) == 3 and (out / "selected.jsonl").exists()
    assert json.loads((out / "summary.json").read_text())["settings"]["num_samples"] == 4
    assert "of 3 prompts with 0.0 < pass rate <= 0.75" in capsys.readouterr().out
