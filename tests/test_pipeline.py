"""Pipeline chaining: stage order, substitution, skip-on-rerun and restart, with a real (cheap) astro command."""

from __future__ import annotations

import io
import json

import pytest
import torch

from astro_pl.pipeline import Stage, StageConsole, format_table, is_bar, run_pipeline, substitute


def test_substitute_replaces_known_placeholders_only():
    assert substitute("{output_dir}/x/{seed}/{other}", {"output_dir": "runs/a", "seed": "3"}) == "runs/a/x/3/{other}"


def test_format_table_shows_missing_values_as_dash():
    table = format_table([{"stage": "sft", "accuracy": 0.5, "truncation_rate": 0.25, "accuracy_finished": None,
                           "mean_backtracks": 1.25, "seconds": 12.4},
                          {"stage": "model", "seconds": 1.0}])
    assert "| sft | 0.500 | 0.250 | - | 1.25 | - | 12 |" in table
    assert "| model | - | - | - | - | - | 1 |" in table


def test_is_bar_recognises_tqdm_bars_only():
    assert is_bar("Epoch 3:  40%|████      | 2/5 [00:01<00:02,  1.2it/s, loss=1.0]")
    assert is_bar("Training: |          | 0/? [00:00<?, ?it/s]")
    assert is_bar("Loading safetensors checkpoint shards: 100% Completed | 1/1 [00:00<00:00, 82.07it/s]")
    assert is_bar("search: 100%|██████████| 1.2k/1.2k [00:04<00:00, 133.86tree/s]")
    assert not is_bar("| synthetic | 3 | 0.0 | 22.5 |")
    assert not is_bar("WARNING 11-30 [cpu.py:224] Triton is not installed.")


def test_stage_console_shows_results_and_one_progress_line_and_logs_everything():
    console, log = io.StringIO(), io.BytesIO()
    out = StageConsole(console, log)
    loading, epoch0, epoch1 = ("Loading: 100%|█| 21/21 [00:00]", "Epoch 0:  33%|█| 1/3 [00:01]",
                               "Epoch 1:  66%|█| 2/3 [00:02]")
    chunks = [("stderr", loading + "\r"), ("stderr", "WARNING vllm: slow\n[W1130] NUMA\n"),
              ("stdout", f"\x1b[A{epoch0}\r{epoch1}"), ("stdout", "\r"), ("stdout", "| step | lo"),
              ("stdout", "ss |\n"), ("stderr", "done\n")]
    for stream, text in chunks:
        out.feed(stream, text)
    out.close()
    # each bar redraws the one line (padded over a longer one; ANSI moves dropped), a result line ends it
    assert console.getvalue() == f"\r{loading}\r{epoch0.ljust(len(loading))}\r{epoch1}\n| step | loss |\n"
    assert log.getvalue().decode() == "".join(text for _, text in chunks)
    assert out.recent == ["WARNING vllm: slow", "[W1130] NUMA", "done"]


def test_unknown_start_stage_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="--start_from 'nope'"):
        run_pipeline([Stage(name="a", command=["--help"])], str(tmp_path), start_from="nope")


def test_pipeline_runs_skips_finished_and_restarts(tmp_path, capsys):
    texts = tmp_path / "texts.jsonl"
    texts.write_text("\n".join(json.dumps({"problem": f"Evaluate {i} + {i}.", "trace": f"\\boxed{{{2 * i}}}"})
                               for i in range(50)) + "\n")
    stage = Stage(name="model", command=["tiny-model", "--texts", str(texts), "--out", "{output_dir}/model",
                                         "--overwrite", "true",
                                         "--vocab_size", "300", "--hidden_size", "64", "--intermediate_size", "64"],
                  artifacts={"model": "{output_dir}/model"})
    summary = run_pipeline([stage], str(tmp_path / "run"))
    console = capsys.readouterr().out
    stage_part = console.split("\n| stage |")[0]
    assert stage_part.count("\n") == 3 and "tiny llama with" in stage_part  # blank, command, result
    assert "Loading weights" not in (tmp_path / "run/logs/model.log").read_text()  # library bars off in stages
    assert (tmp_path / "run/model/config.json").exists()
    assert summary["stages"]["model"]["artifacts"]["model"] == str(tmp_path / "run/model")
    machine = summary["stages"]["model"]["machine"]  # where it ran: floating point differs between machines
    assert f"({torch.backends.cpu.get_cpu_capability()})" in machine and machine.endswith(f"torch {torch.__version__}")
    assert json.loads((tmp_path / "run/summary.json").read_text()) == summary

    (tmp_path / "run/model/config.json").unlink()
    run_pipeline([stage], str(tmp_path / "run"))
    assert "done before, skipped" in capsys.readouterr().out
    assert not (tmp_path / "run/model/config.json").exists()

    run_pipeline([stage], str(tmp_path / "run"), start_from="model")
    assert (tmp_path / "run/model/config.json").exists()


def test_failing_stage_stops_with_its_log(tmp_path):
    with pytest.raises(SystemExit, match="stage 'bad' failed"):
        run_pipeline([Stage(name="bad", command=["no-such-command"])], str(tmp_path))
    assert (tmp_path / "logs/bad.log").read_text().startswith("astro: unknown command")


def test_eval_summary_gives_pass_at_1_of_the_named_benchmark(tmp_path):
    from astro_pl.pipeline import read_eval_summary

    path = tmp_path / "summary.json"
    scores = {"pass@1": 0.25, "truncation_rate": 0.5, "pass@1_finished": 0.5, "mean_backtracks": 1.5,
              "mean_length": 40.0}
    path.write_text(json.dumps({"benchmarks": {"synthetic": scores, "math500": {**scores, "pass@1": 0.1}}}))
    assert read_eval_summary(path, "synthetic") == {"accuracy": 0.25, "truncation_rate": 0.5, "accuracy_finished": 0.5,
                                                    "mean_backtracks": 1.5, "grounded_backtracks": None,
                                                    "mean_length": 40.0}
    assert read_eval_summary(path, "math500")["accuracy"] == 0.1
    with pytest.raises(ValueError, match="name one"):
        read_eval_summary(path)
    with pytest.raises(ValueError, match="no benchmark 'aime24'"):
        read_eval_summary(path, "aime24")
    path.write_text(json.dumps({"benchmarks": {"graph": {**scores, "task": {"false_yes": 0.1}}}}))
    assert read_eval_summary(path)["task"] == {"false_yes": 0.1}
