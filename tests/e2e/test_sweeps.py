"""W&B sweeps in configs/sweeps: each file is well formed, the command a `wandb agent` builds from it (W&B's own
argument formatting, `--key=value`) parses with LightningCLI and sets the swept keys, and one trial of the CPU sweep
runs through the real `astro` CLI offline as an agent launches it, its hyperparameters reaching the module."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest
import yaml
from scale_helpers import REPO, run, run_env, wandb_run, wandb_run_files
from wandb.sdk.launch.sweeps import utils as sweep_utils
from wandb.sdk.lib import config_util

from astro_pl.training_cli import main as astro_fit
from tests.datamodules.test_traces import write_traces

SWEEPS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))
METHODS = {"grid", "random", "bayes"}
DISTRIBUTIONS = {"uniform", "log_uniform_values", "int_uniform", "q_uniform", "normal", "categorical"}


def load_sweep(path: Path) -> dict:
    sweep = yaml.safe_load(path.read_text())
    assert isinstance(sweep, dict), f"{path}: not a YAML mapping"
    return sweep


def trial_values(parameters: dict, index: int) -> dict:
    """The index-th trial's values: the index-th of each `values` list (cycling), a point inside each range."""
    out = {}
    for key, spec in parameters.items():
        if "value" in spec:
            out[key] = spec["value"]
        elif "values" in spec:
            out[key] = spec["values"][index % len(spec["values"])]
        elif spec.get("distribution") == "log_uniform_values":
            out[key] = math.exp(math.log(spec["min"]) + (0.3 + 0.4 * (index % 2)) * math.log(spec["max"] / spec["min"]))
        elif spec.get("distribution") == "int_uniform":
            out[key] = spec["min"] + index % (spec["max"] - spec["min"] + 1)
        else:
            out[key] = spec["min"] + 0.37 * (spec["max"] - spec["min"])
    return out


def agent_command(sweep: dict, values: dict) -> list[str]:
    """The argv `wandb agent` runs for a trial: W&B builds the `--key=value` flags, then `Agent._command_run`
    substitutes each `${macro}` item of the command block (its loop, repeated here; it is inline in that method)."""
    sweep_vars = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    sweep_vars["env"] = ["/usr/bin/env"]
    argv = []
    for item in sweep_utils.create_sweep_command(list(sweep["command"])):
        item = str(item)
        argv += (sweep_vars.get(item[2:-1]) or []) if item.startswith("${") and item.endswith("}") else [item]
    return argv


def lookup(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, f"{dotted}: no {part!r} in the printed config"
        node = node[part]
    return node


def same_value(printed, swept) -> bool:
    if isinstance(swept, bool):
        return printed is swept
    if isinstance(swept, int | float):
        return math.isclose(float(printed), float(swept), rel_tol=1e-12)
    return printed == swept


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_file_is_well_formed(path):
    sweep = load_sweep(path)
    assert sweep.get("method") in METHODS, f"{path}: method must be one of {METHODS}"
    metric = sweep.get("metric") or {}
    assert metric.get("goal") in {"minimize", "maximize"} and metric.get("name"), f"{path}: metric name and goal"
    parameters = sweep.get("parameters")
    assert parameters, f"{path}: no parameters"
    for key, spec in parameters.items():
        assert key.split(".")[0] in {"model", "data", "trainer"}, f"{path}: {key} is not a LightningCLI key"
        if "values" in spec:
            assert spec["values"] and all(v is not None for v in spec["values"]), f"{path}: {key}: null values"
        elif "value" not in spec:
            assert spec.get("distribution") in DISTRIBUTIONS and spec["min"] < spec["max"], f"{path}: {key}"
    command = [str(c) for c in sweep["command"]]
    assert command[:5] == ["${env}", "astro", "fit", "--config", command[4]] and command[-1] == "${args}", path
    assert (REPO / command[4]).is_file(), f"{path}: program config {command[4]} does not exist"
    # the metric must be one the trained module logs
    model_class = yaml.safe_load((REPO / command[4]).read_text())["model"]["class_path"]
    module_file = REPO / (model_class.rsplit(".", 1)[0].replace(".", "/") + ".py")
    text, (prefix, _, leaf) = module_file.read_text(), metric["name"].rpartition("/")
    logged = f'"{metric["name"]}"' in text or (f'f"{prefix}/{{' in text and f'"{leaf}"' in text)  # literal or f-string
    assert logged, f"{path}: {module_file.name} never logs {metric['name']}"


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_every_swept_value_parses_with_lightning_cli(path, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["astro"])  # LightningCLI warns when both sys.argv and args are given
    sweep = load_sweep(path)
    trials = max(len(s.get("values", [None, None])) for s in sweep["parameters"].values())
    for index in range(trials):
        values = trial_values(sweep["parameters"], index)
        argv = agent_command(sweep, values)
        assert argv[:3] == ["/usr/bin/env", "astro", "fit"]
        assert all(f"--{k}={v}" in argv for k, v in values.items()), argv
        with pytest.raises(SystemExit) as done:
            astro_fit([*argv[2:], "--print_config"])
        out = capsys.readouterr()
        assert done.value.code in (0, None), f"{path}: {argv[2:]} rejected:\n{out.err[-3000:]}"
        printed = yaml.safe_load(out.out)
        for key, value in values.items():
            assert same_value(lookup(printed, key), value), (key, lookup(printed, key), value)


def test_one_trial_runs_offline_as_the_agent_launches_it(tiny_model_dir, tmp_path):
    sweep = load_sweep(REPO / "configs" / "sweeps" / "sft_synthetic.yaml")
    values = trial_values(sweep["parameters"], 1)
    # a project checkout as the agent sees it: the configs, and the model and traces the program config reads
    (tmp_path / "configs").symlink_to(REPO / "configs")
    program = yaml.safe_load((REPO / sweep["command"][4]).read_text())
    model, data = tmp_path / program["model"]["init_args"]["model_path"], program["data"]["init_args"]
    model.parent.mkdir(parents=True, exist_ok=True)
    model.symlink_to(tiny_model_dir)
    assert data["tokenizer_path"] == program["model"]["init_args"]["model_path"]
    (tmp_path / data["train_file"]).parent.mkdir(parents=True, exist_ok=True)
    write_traces(tmp_path / data["train_file"], n=400)  # several packed batches
    # what `wandb agent` does before it starts a trial: the run id, the sweep id and the trial's parameter file
    run_id, params = "trial0abc", tmp_path / "wandb" / "sweep-testsweep" / "config-trial0abc.yaml"
    config_util.save_config_file_from_dict(str(params), {k: {"value": v} for k, v in values.items()})
    env = run_env(WANDB_RUN_ID=run_id, WANDB_SWEEP_ID="testsweep", WANDB_SWEEP_PARAM_PATH=str(params),
                  WANDB_DIR=str(tmp_path), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    argv = agent_command(sweep, values) + ["--trainer.max_steps=2"]
    result = run(argv, env=env, cwd=tmp_path)

    [run_file] = wandb_run_files(tmp_path / program["trainer"]["logger"]["init_args"]["save_dir"])
    trial = wandb_run(run_file)
    assert trial["run_id"] == run_id and trial["state"] == "finished", result.stderr[-2000:]
    hparams = trial["config"]
    assert math.isclose(hparams["optim"]["lr"], values["model.init_args.optim.lr"], rel_tol=1e-12)
    assert hparams["batch_size"] == values["data.init_args.batch_size"]
    # the agent's parameter file reached the run too (how the sweep server reads a trial's values)
    assert all(hparams[k] == v for k, v in values.items())
    assert sweep["metric"]["name"] in trial["summary"] and trial["summary"]["trainer/global_step"] == 1
