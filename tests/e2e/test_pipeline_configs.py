"""Every pipeline config (quickstart, ablation arms) parses, and each of its stage commands is accepted as is by
the subcommand it names (`--print_config`, in process), so a typo fails here rather than minutes into a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from astro_pl import cli
from astro_pl.pipeline import substitute

REPO = Path(__file__).resolve().parents[2]
PIPELINES = [REPO / "configs/quickstart.yaml", REPO / "configs/graph_quickstart.yaml",
             *sorted((REPO / "configs/ablation").glob("*.yaml"))]
STAGES = [(p, s) for p in PIPELINES for s in yaml.safe_load(p.read_text())["stages"]]


@pytest.mark.parametrize("path,stage", STAGES, ids=[f"{p.stem}-{s['name']}" for p, s in STAGES])
def test_stage_command_is_accepted_by_its_subcommand(path, stage, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    argv = [substitute(a, {"output_dir": str(tmp_path), "seed": "0"}) for a in stage["command"]]
    if argv[0] == "tiny-model":  # it trains as soon as its arguments parse; test_pipeline.py runs it for real
        assert "--texts" in argv and "--out" in argv
        return
    with pytest.raises(SystemExit) as done:
        cli.main([*argv, "--print_config"])
    assert done.value.code in (0, None), capsys.readouterr().err[-2000:]
    assert capsys.readouterr().out.strip()
