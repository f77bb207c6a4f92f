"""Every pipeline config (quickstart, ablation arms, and each arm of an `astro ablation` config with its variables)
parses, and each of its stage commands is accepted as is by the subcommand it names (`--print_config`, in process),
so a typo fails here rather than minutes into a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from astro_pl import cli
from astro_pl.pipeline import substitute
from astro_pl.search.run import build_parser, check_settings

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {p: yaml.safe_load(p.read_text()) for p in [REPO / "configs/quickstart.yaml",
                                                       REPO / "configs/graph_quickstart.yaml",
                                                       *sorted((REPO / "configs/ablation").glob("*.yaml"))]}


def runs() -> list[tuple[str, dict, dict]]:
    """(name, pipeline config, variables) of every pipeline and of every arm of an ablation config."""
    found = []
    for path, config in CONFIGS.items():
        if "arms" in config:
            for arm, spec in config["arms"].items():
                pipeline = yaml.safe_load((REPO / spec["config"]).read_text())
                variables = pipeline.get("variables", {}) | spec.get("variables", {})
                found.append((f"{path.stem}.{arm}", pipeline, variables))
        else:
            found.append((path.stem, config, config.get("variables", {})))
    return found


STAGES = [(name, stage, variables) for name, config, variables in runs() for stage in config["stages"]]


@pytest.mark.parametrize("name,stage,variables", STAGES, ids=[f"{n}-{s['name']}" for n, s, _ in STAGES])
def test_stage_command_is_accepted_by_its_subcommand(name, stage, variables, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    argv = [substitute(a, variables | {"output_dir": str(tmp_path), "seed": "0"}) for a in stage["command"]]
    if argv[0] == "tiny-model":  # it trains as soon as its arguments parse; test_pipeline.py runs it for real
        assert "--texts" in argv and "--out" in argv
        return
    with pytest.raises(SystemExit) as done:
        cli.main([*argv, "--print_config"])
    assert done.value.code in (0, None), capsys.readouterr().err[-2000:]
    assert capsys.readouterr().out.strip()


SEARCHES = [(name, stage, variables) for name, stage, variables in STAGES if stage["command"][0] == "search"]


@pytest.mark.parametrize("name,stage,variables", SEARCHES, ids=[f"{n}-{s['name']}" for n, s, _ in SEARCHES])
def test_search_stage_passes_the_checks_across_its_options(name, stage, variables, tmp_path, monkeypatch):
    """`--print_config` stops before these: a model proposer layered over a config with worker processes, say."""
    monkeypatch.chdir(REPO)
    argv = [substitute(a, variables | {"output_dir": str(tmp_path), "seed": "0"}) for a in stage["command"][1:]]
    parser = build_parser()
    check_settings(parser.instantiate(parser.parse_args(argv)))


def test_the_readmes_step_reward_yaml_layers_over_the_graph_rl_config(tmp_path, monkeypatch, capsys):
    readme = (REPO / "README.md").read_text()
    start = readme.index("```yaml\n", readme.index("**Step rewards**")) + len("```yaml\n")
    overlay = tmp_path / "step_faults.yaml"
    overlay.write_text(readme[start: readme.index("```", start)])
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as done:
        cli.main(["fit", "--config", "configs/graph/rl.yaml", "--config", str(overlay), "--print_config"])
    assert done.value.code in (0, None), capsys.readouterr().err[-2000:]
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["step_rewards"] == [
        {"class_path": "astro_pl.rewards.StepFaultPenalty", "init_args": {"penalty": 0.3}}]
    assert len(printed["model"]["init_args"]["rewards"]) == 2   # the overlay adds step rewards, keeps the rewards
