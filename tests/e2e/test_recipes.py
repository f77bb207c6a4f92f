"""The scale-out recipes (configs/*/llama3*.yaml, configs/*/qwen3*.yaml) parse with the parser of the command their
header launches, and their parallel layouts add up: FSDP2 data-parallel size = GPUs per node x nodes."""

from __future__ import annotations

import pytest
import yaml
from scale_helpers import REPO

from astro_pl.evaluation.run import parse_args as parse_eval_args
from astro_pl.search.run import build_parser as search_parser
from astro_pl.training_cli import main as astro_fit

FIT = sorted(p for stage in ("sft", "rl") for pattern in ("llama3*.yaml", "qwen3*.yaml")
             for p in (REPO / "configs" / stage).glob(pattern))
SEARCH = sorted((REPO / "configs" / "search").glob("llama31_*.yaml"))


@pytest.mark.parametrize("path", FIT, ids=[f"{p.parent.name}/{p.stem}" for p in FIT])
def test_fit_recipe_prints_a_complete_config(path, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["astro"])
    with pytest.raises(SystemExit) as done:
        astro_fit(["fit", "--config", str(path), "--print_config"])
    out = capsys.readouterr()
    assert done.value.code in (0, None), out.err[-3000:]
    trainer = yaml.safe_load(out.out)["trainer"]
    parallel = trainer["strategy"]["init_args"]
    world = trainer["devices"] * trainer["num_nodes"]
    assert parallel["data_parallel_size"] * parallel["tensor_parallel_size"] == world
    assert path.read_text().startswith("# ") and "astro fit --config" in path.read_text().split("\nseed_everything")[0]


def test_qwen_recipes_start_from_qwen3_and_rl_from_its_sft_export():
    sft = yaml.safe_load((REPO / "configs/sft/qwen3_8b.yaml").read_text())
    rl = yaml.safe_load((REPO / "configs/rl/qwen3_8b.yaml").read_text())
    assert sft["model"]["init_args"]["model_path"] == sft["data"]["init_args"]["tokenizer_path"] == "Qwen/Qwen3-8B"
    callbacks = sft["trainer"]["callbacks"]
    export = next(c["init_args"]["dirpath"] for c in callbacks if c["class_path"].endswith("HFExport"))
    assert rl["model"]["init_args"]["model_path"] == export  # prompts are rendered with the policy's own tokenizer


@pytest.mark.parametrize("path", SEARCH, ids=[p.stem for p in SEARCH])
def test_search_recipe_instantiates(path):
    parser = search_parser()
    cfg = parser.instantiate(parser.parse_args(["--config", str(path)]))
    assert cfg.proposer == "llm" and cfg.engine.model.startswith("meta-llama/Llama-3.1-")
    assert (cfg.search.iterations, cfg.search.num_children, cfg.search.num_rollouts, cfg.search.max_depth) == (
        32, 8, 16, 50)  # the reported budget
    assert "--shard" in path.read_text().split("\nout_dir")[0]
    assert cfg.rewrite.enabled and cfg.rewrite.engine is None  # the paper's step rewrite, by the search model


def test_eval_recipe_parses():
    args = parse_eval_args(["--config", str(REPO / "configs" / "eval" / "llama31.yaml")])
    assert [src.source for src in args.task.sources["test"]] == ["math500", "amc23", "aime24"]
    assert args.num_samples == 16
    assert args.engine.tensor_parallel_size == 4
