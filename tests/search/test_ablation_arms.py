"""The ablation's search stages, run as configured (fewer problems): the Direct arm's traces hold no reflection or
backtrack phrase, both arms search identical trees, and each arm has enough traces for its SFT subset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from astro_pl import cli
from astro_pl.evaluation.backtracks import DEFAULT_BACKTRACK_PHRASES, DEFAULT_REFLECTION_PHRASES
from astro_pl.pipeline import substitute
from astro_pl.search.verbalize import Phrases

REPO = Path(__file__).resolve().parents[2]
NUM_PROBLEMS = 60


def stage(config: str, name: str) -> list[str]:
    stages = yaml.safe_load((REPO / "configs/ablation" / config).read_text())["stages"]
    return next(s["command"] for s in stages if s["name"] == name)


def run_search(config: str, out: Path) -> tuple[list[dict], list[dict]]:
    argv = [substitute(a, {"output_dir": str(out), "seed": "0"}) for a in stage(config, "search")]
    argv[argv.index("--limit") + 1] = str(NUM_PROBLEMS)
    assert cli.main(argv) == 0
    read = lambda name: [json.loads(line) for line in (out / "search" / name).read_text().splitlines()]  # noqa: E731
    return read("trees.jsonl"), read("traces.jsonl")


def sft_examples(config: str) -> str:
    command = stage(config, "sft")
    return command[command.index("--data.init_args.max_train_examples") + 1]


@pytest.mark.parametrize("direct,astro", [("direct.yaml", "astro.yaml"),
                                          ("direct_quickstart_recipe.yaml", "astro_quickstart_recipe.yaml")])
def test_direct_arm_is_direct_and_counts_match(direct, astro, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    phrases = Phrases()
    banned = [phrases.question, phrases.doubt, phrases.confirm, phrases.restart, phrases.backtrack.split("{")[0],
              *DEFAULT_BACKTRACK_PHRASES, *DEFAULT_REFLECTION_PHRASES, "Hmm"]
    direct_trees, direct_traces = run_search(direct, tmp_path / "direct")
    astro_trees, astro_traces = run_search(astro, tmp_path / "astro")
    assert direct_trees == astro_trees  # same problems, same teacher seed
    assert {t["kind"] for t in direct_traces} == {"direct"} and len(direct_traces) > 0
    for trace in direct_traces:
        found = [p for p in banned if p.lower() in trace["trace"].lower()]
        assert not found, f"{trace['problem_id']}: {found}"
    # the ASTRO arm still reflects and backtracks, so only the trace kind differs between arms
    assert sum(phrases.confirm in t["trace"] for t in astro_traces) > 0
    assert sum(t["num_backtracks"] for t in astro_traces) > 0
    # count matching: both arms train on the same number of examples, and each has traces to fill it
    # (4 per solved tree in both arms at full size; here per solved tree, scaled)
    assert sft_examples(direct) == sft_examples(astro)
    solved = sum(any(n["correct"] for n in tree["nodes"]) for tree in direct_trees)
    assert len(direct_traces) == 4 * solved
    assert len(astro_traces) >= 0.875 * len(direct_traces)  # 1400 of 1600 at 400 problems
