"""PlateauRestart: a run whose loss is above the bar at the judged step starts over from fresh weights (new seed,
fresh optimiser moments, the schedule from its start) and is lengthened by the steps spent; one below it is kept."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import AutoModelForCausalLM

from astro_pl.datamodules.traces import TraceDataModule
from astro_pl.modules.optim import OptimArgs
from astro_pl.modules.restart import Bar, PlateauRestart, attempt_score, reinitialise, restart_due
from astro_pl.modules.sft import SFTModule
from astro_pl.modules.tiny_llama import tiny_config
from tests.datamodules.test_traces import write_traces


def test_restart_due_judges_the_mean_of_the_finite_losses():
    assert restart_due([0.3, 0.2], above=0.15) and not restart_due([0.1, 0.12], above=0.15)
    assert not restart_due([0.1, float("nan")], above=0.15)  # one bad step does not decide
    assert restart_due([float("nan")], above=0.15)  # a run with no finite loss has learnt nothing


def test_an_attempt_that_passed_more_bars_came_closer_whatever_its_losses():
    assert attempt_score(1, [0.3]) > attempt_score(0, [0.01])  # the look-up formed, the terminal check not yet
    assert attempt_score(0, [0.05]) > attempt_score(0, [0.1]) > attempt_score(0, [float("nan")])
    assert attempt_score(1, [0.1, 0.1]) < attempt_score(1, [0.15])  # two bars failed: their excesses add


def test_reinitialise_draws_every_weight_from_the_seed_and_leaves_the_global_rng():
    model = AutoModelForCausalLM.from_config(tiny_config("llama", vocab_size=100, hidden_size=64))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # as far from an initialisation as training could take it
    state = torch.random.get_rng_state()
    reinitialise(model, 5)
    assert torch.equal(torch.random.get_rng_state(), state)
    first = {n: p.clone() for n, p in model.named_parameters()}
    reinitialise(model, 6)
    assert not torch.equal(model.model.embed_tokens.weight, first["model.embed_tokens.weight"])
    reinitialise(model, 5)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param, first[name], rtol=0, atol=0)
    assert abs(first["model.layers.0.self_attn.q_proj.weight"].std().item() - 0.02) < 0.005  # config's init range
    assert torch.equal(first["model.norm.weight"], torch.ones(64))


def fit(tmp_path, tiny_model_dir, restart: PlateauRestart, steps: int = 4, **module_args
        ) -> tuple[L.Trainer, SFTModule, list]:
    data = write_traces(tmp_path / "traces.jsonl", n=32)
    dm = TraceDataModule(tokenizer_path=str(tiny_model_dir), train_file=str(data), max_seq_len=256, batch_size=2)
    module = SFTModule(model_path=str(tiny_model_dir), optim=OptimArgs(lr=1e-4, warmup_ratio=0.5), **module_args)
    lrs = []

    class LearningRates(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, callbacks=[restart, LearningRates()], use_distributed_sampler=False)
    trainer.fit(module, dm)
    return trainer, module, lrs


def test_a_run_above_the_bar_restarts_from_fresh_weights_and_trains_as_long_again(tmp_path, tiny_model_dir, capsys):
    every_attempt_above = {"train/loss": Bar(2, -1.0)}
    restart = PlateauRestart(bars=every_attempt_above, max_restarts=2, window=2, seed=7, keep="last")
    trainer, module, lrs = fit(tmp_path, tiny_model_dir, restart)
    out = capsys.readouterr().out  # stdout: what the pipeline's console shows
    assert "restart 2 of 2, initialisation seed 2007" in out and "attempt 3 above a bar, kept" in out
    assert out.count("\nPlateauRestart: ") == 3  # each decision on a line of its own, not after a progress bar
    assert restart.restarts == 2 and restart.judged and restart.extra_steps == 4
    assert trainer.global_step == 4 + 2 * 2  # the kept attempt trained the full 4 steps
    # the schedule (2 warmup steps, then cosine to step 4) started over at each restart
    assert lrs == pytest.approx([5e-5, 1e-4] * 3 + [1e-4, 5e-5])
    # the kept weights are 4 small steps (Adam, lr <= 1e-4) from restart 2's draw (seed 7 + 2000), far from the loaded
    kept = module.model.model.layers[0].self_attn.q_proj.weight.detach()
    loaded = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    drawn = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    reinitialise(drawn, 7 + 2000)
    assert (kept - drawn.model.layers[0].self_attn.q_proj.weight).abs().max() < 1e-3
    assert (kept - loaded.model.layers[0].self_attn.q_proj.weight).abs().mean() > 1e-2


def test_a_run_below_the_bar_is_kept_and_not_lengthened(tmp_path, tiny_model_dir):
    start = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).model.embed_tokens.weight.detach().clone()
    restart = PlateauRestart(bars={"train/loss": Bar(2, 1e9)}, window=2)
    trainer, module, _ = fit(tmp_path, tiny_model_dir, restart)
    assert restart.restarts == 0 and restart.judged and trainer.global_step == 4
    drift = (module.model.model.embed_tokens.weight.detach() - start).abs().max()
    assert 0 < drift < 1e-3  # trained on from the loaded weights, not redrawn


def test_each_metric_is_judged_at_its_own_step_and_any_above_its_bar_restarts(tmp_path, tiny_model_dir, capsys):
    # the total loss passes its bar at step 2; the loss on the answer's first token (token_losses) fails at step 3
    restart = PlateauRestart(bars={"train/loss": Bar(2, 1e9), "train/loss_answer": Bar(3, -1.0)}, max_restarts=1,
                             window=2, keep="last")
    trainer, _, _ = fit(tmp_path, tiny_model_dir, restart, token_losses={"answer": ["The answer is"]})
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("PlateauRestart")]
    assert lines[0].startswith("PlateauRestart: attempt 1 passed: train/loss ") and "at step 2 of it" in lines[0]
    assert "train/loss_answer" in lines[1] and "(bar -1.0) at step 3 of attempt 1; restart 1 of 1" in lines[1]
    assert "attempt 2 passed: train/loss " in lines[2]  # judged afresh in the new attempt
    assert "attempt 2 above a bar, kept (no restart left): train/loss_answer" in lines[3]  # kept whatever its loss
    assert restart.restarts == 1 and restart.extra_steps == 3 and trainer.global_step == 4 + 3
    # max_restarts=0 judges and says so, and trains on: the bars as a report (configs/graph/sft.yaml)
    judge_only = PlateauRestart(bars={"train/loss": Bar(2, -1.0)}, max_restarts=0, window=2)
    trainer, _, _ = fit(tmp_path, tiny_model_dir, judge_only)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("PlateauRestart")]
    assert len(lines) == 1 and "attempt 1 above a bar, kept (no restart left): train/loss " in lines[0]
    assert judge_only.restarts == 0 and trainer.global_step == 4
    with pytest.raises(ValueError, match="logs no 'train/loss_other'"):
        fit(tmp_path, tiny_model_dir, PlateauRestart(bars={"train/loss_other": Bar(2, 1.0)}, window=2))


class ScriptedLoss(L.Callback):
    """Logs `train/scripted`: attempt k's value is `values[k - 1]` (listed before PlateauRestart, which reads it)."""

    def __init__(self, restart: PlateauRestart, values: list[float]) -> None:
        self.restart, self.values = restart, values

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        pl_module.log("train/scripted", self.values[self.restart.restarts])


def test_when_no_attempt_passes_the_closest_trains_on_from_where_it_was_judged(tmp_path, tiny_model_dir, capsys):
    restart = PlateauRestart(bars={"train/scripted": Bar(2, 0.2)}, max_restarts=2, window=2, seed=7)
    data = write_traces(tmp_path / "traces.jsonl", n=32)
    dm = TraceDataModule(tokenizer_path=str(tiny_model_dir), train_file=str(data), max_seq_len=256, batch_size=2)
    module = SFTModule(model_path=str(tiny_model_dir), optim=OptimArgs(lr=1e-4, warmup_ratio=0.5))
    trainer = L.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, use_distributed_sampler=False,
                        callbacks=[ScriptedLoss(restart, [0.5, 0.3, 0.4]), restart])
    trainer.fit(module, dm)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("PlateauRestart")]
    assert "attempt 3 failed too: train/scripted 0.400 (bar 0.2) at step 2 of it; attempt 2 came closest and " \
           "trains on from its step 2 (no restart left)" in lines[-1]
    # attempt 2 trained its 4 steps: 2 before its judgement, 2 after it came back; attempts 1 and 3 are not counted
    assert trainer.global_step == 2 + 2 + 2 + 2 and restart.extra_steps == 4 and restart.judged
    adam = trainer.optimizers[0].state[next(module.model.parameters())]
    assert int(adam["step"]) == 4  # the optimiser's moments came back with the weights
    kept = module.model.model.layers[0].self_attn.q_proj.weight.detach()
    draws = {}
    for attempt, seed in ((2, 7 + 1000), (3, 7 + 2000)):
        drawn = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
        reinitialise(drawn, seed)
        draws[attempt] = (kept - drawn.model.layers[0].self_attn.q_proj.weight).abs().max()
    assert draws[2] < 1e-3 < draws[3]  # 4 small Adam steps from attempt 2's draw, far from attempt 3's
    # a checkpoint holds the closest attempt, so a resumed run can still come back to it
    resumed = PlateauRestart(bars={"train/scripted": Bar(2, 0.2)}, window=2)
    resumed.load_state_dict(restart.state_dict())
    assert resumed.best["attempt"] == 2 and torch.equal(resumed.best["model"]["model.norm.weight"],
                                                        restart.best["model"]["model.norm.weight"])


def test_bad_settings_name_the_argument():
    with pytest.raises(ValueError, match="train/loss.at_step must not be shorter than the window \\(60\\), got 50"):
        PlateauRestart(bars={"train/loss": Bar(50, 0.2)}, window=60)
    with pytest.raises(ValueError, match="at least one metric"):
        PlateauRestart(bars={})
    with pytest.raises(ValueError, match="keep must be 'best' or 'last', got 'first'"):
        PlateauRestart(bars={"train/loss": Bar(50, 0.2)}, keep="first")


def test_a_resumed_run_keeps_its_restarts_and_its_length(tmp_path, tiny_model_dir):
    data = write_traces(tmp_path / "traces.jsonl", n=32)

    class StopAt(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            trainer.should_stop = trainer.global_step == 3  # one step into the attempt after the restart

    def run(callbacks, ckpt_path=None) -> L.Trainer:
        dm = TraceDataModule(tokenizer_path=str(tiny_model_dir), train_file=str(data), max_seq_len=256, batch_size=2)
        ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True, every_n_train_steps=1)
        trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_progress_bar=False,
                            callbacks=[ckpt, *callbacks], use_distributed_sampler=False)
        trainer.fit(SFTModule(model_path=str(tiny_model_dir)), dm, ckpt_path=ckpt_path)
        return trainer

    interrupted = PlateauRestart(bars={"train/loss": Bar(2, -1.0)}, max_restarts=1, window=2)
    assert run([interrupted, StopAt()]).global_step == 3 and interrupted.restarts == 1
    resumed = PlateauRestart(bars={"train/loss": Bar(2, -1.0)}, max_restarts=1, window=2)
    trainer = run([resumed], ckpt_path="last")
    assert resumed.restarts == 1 and resumed.extra_steps == 2
    assert trainer.global_step == 3 + 2  # 3 steps after the restart, no second restart
