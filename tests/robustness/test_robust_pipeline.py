"""`astro pipeline` reruns (issue 20 item 3): a stage is skipped only when its exact command and config files are
the ones that finished; a torn summary does not block a rerun; a second pipeline in the folder fails at once."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from cases import REPO, Case, check_case

from astro_pl.runfiles import claim

PIPELINE = """
stages:
  - name: search
    command: [search, --config, "{search_config}", --out_dir, "{{output_dir}}/search", --seed, "{{seed}}",
              --limit, "2", --search.iterations, "2"]
"""


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("pipeline")
    search_config = tmp / "configs" / "search" / "synthetic.yaml"  # beside the task file it names
    shutil.copytree(REPO / "configs" / "search", search_config.parent)
    shutil.copytree(REPO / "configs" / "tasks", tmp / "configs" / "tasks")
    (tmp / "pipeline.yaml").write_text(PIPELINE.format(search_config=search_config))
    return {"tmp": tmp, "config": tmp / "pipeline.yaml", "search_config": search_config, "run": tmp / "run"}


RUN = ["pipeline", "--config", "{config}", "--output_dir", "{run}"]
KEPT = ["{run}/summary.json", "{run}/search/trees.jsonl"]


def test_reruns(paths, capsys):
    check_case(Case("first-run", RUN, code=0, kind="clean"), paths, capsys)
    check_case(Case("same-command-skips", RUN, code=0, unchanged=KEPT, kind="clean"), paths, capsys)
    check_case(Case("new-seed", [*RUN, "--seed", "1"], unchanged=KEPT, kind="silent-wrong",
                    message=r"stage 'search' finished with another command \(--seed was '0', now '1'\); "
                            r"rerun it with --start_from search"), paths, capsys)
    config = paths["search_config"]
    config.write_text(config.read_text() + "\nseed: 3\n")
    check_case(Case("changed-stage-config", RUN, unchanged=KEPT, kind="silent-wrong",
                    message=r"config file .*synthetic.yaml changed since"), paths, capsys)
    check_case(Case("start-from-reruns", [*RUN, "--start_from", "search"], code=0, kind="clean"), paths, capsys)
    assert json.loads((paths["run"] / "summary.json").read_text())["seed"] == 0


def test_torn_summary_does_not_block_a_rerun(paths, capsys, tmp_path):
    run = tmp_path / "torn"
    check_case(Case("first", [*RUN[:-1], str(run)], code=0, kind="clean"), paths, capsys)
    summary = run / "summary.json"
    summary.write_text(summary.read_text()[:30])
    check_case(Case("torn-summary", [*RUN[:-1], str(run)], code=0, kind="traceback"), paths, capsys)
    assert json.loads(summary.read_text())["stages"]["search"]["seconds"] > 0


def test_second_pipeline_in_the_folder_fails_at_once(paths, capsys, tmp_path):
    run = tmp_path / "busy"
    with claim(run, "--output_dir"):
        check_case(Case("second-pipeline", [*RUN[:-1], str(run)], kind="data-loss",
                        message=rf"--output_dir {run}: in use by another run \(pid {os.getpid()}\)"), paths, capsys)


CASES = [
    Case("unknown-start", [*RUN, "--start_from", "nope"], message=r"--start_from 'nope' is not a stage; stages: search",
         kind="clean"),
    Case("bad-stage-key", ["pipeline", "--stages", '[{"name": "a", "comand": ["search"]}]', "--output_dir", "{tmp}/b"],
         message=r"stages", kind="traceback"),
    Case("compare-empty", ["pipeline", "--compare", "{tmp}/nothing"], message=r"no <arm>-seed<N>/summary.json",
         kind="traceback"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_case(case, paths, capsys):
    check_case(case, paths, capsys)
