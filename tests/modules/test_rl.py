"""RLModule driven by a scripted engine: the step, sync skipping, dynamic sampling, failure checkpoints, args.

The scripted engine answers "Evaluate ..." prompts with a boxed answer that is right or wrong by a seeded coin,
so rewards, groups and advantages are real; the policy, optimiser, Trainer and checkpoints are real too. Real
engines (vLLM, transformers) drive the e2e tests in tests/e2e/test_fit_rl*.py.
"""

from __future__ import annotations

import random

import lightning as L
import pytest
import torch

from astro_pl.datamodules.prompts import PromptDataModule
from astro_pl.errors import UsageError
from astro_pl.loading import load_tokenizer
from astro_pl.modules.rl import GRPOArgs, RLModule, RolloutFailure
from astro_pl.rollout.base import Completion, EngineArgs, SamplingArgs
from astro_pl.tasks import ArithmeticTask
from astro_pl.tasks.arithmetic import evaluate_tokens, parse_arithmetic


class ScriptedEngine:
    """Right answer with probability `p_right` (1 for even answers when `even_always_right`; every other sample
    when `alternate`, so every group has mixed rewards)."""

    def __init__(self, tokenizer, p_right=0.5, even_always_right=False, fail_on_call: int | None = None,
                 alternate=False):
        self.tokenizer, self.p_right, self.even_always_right = tokenizer, p_right, even_always_right
        self.alternate = alternate
        self.fail_on_call, self.calls, self.loads = fail_on_call, 0, 0
        self.loaded: dict[str, torch.Tensor] = {}
        self.all_equal: list[bool] = []

    def generate(self, prompts, params: SamplingArgs):
        self.calls += 1
        if self.fail_on_call == self.calls:
            raise RuntimeError("engine died")
        out = []
        for i, ids in enumerate(prompts):
            text = self.tokenizer.decode(ids)
            expr = text[text.index("Evaluate "):].split("\n")[0]
            gold = evaluate_tokens(parse_arithmetic(expr))
            rng = random.Random((params.seed or 0) + i)
            group, rights = [], []
            for j in range(params.n):
                right = (self.even_always_right and gold % 2 == 0) or rng.random() < self.p_right
                right = j % 2 == 0 if self.alternate else right
                rights.append(right)
                answer = f"Compute it.\n\n\\boxed{{{gold if right else gold + 1}}}"
                token_ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
                token_ids.append(self.tokenizer.eos_token_id)
                group.append(Completion(answer, token_ids, [-1.0] * len(token_ids), "stop"))
            out.append(group)
            self.all_equal.append(len(set(rights)) == 1)
        return out

    def load_weights(self, named_tensors):
        self.loads += 1
        self.loaded.update({n: t.clone() for n, t in named_tensors})

    def sleep(self):
        return False

    def wake_up(self):
        pass

    def close(self):
        pass


def make(tiny_model_dir, tmp_path, engine=None, max_steps=2, data_seed=0, precision="32-true", **kwargs):
    grpo = GRPOArgs(**{"group_size": 4, "micro_batch_size": 4, **kwargs.pop("grpo", {})})
    sampling = kwargs.pop("sampling", SamplingArgs(max_tokens=16))
    module = RLModule(str(tiny_model_dir), engine=EngineArgs(kind="hf"), grpo=grpo, sampling=sampling,
                      **{"optim": None, **kwargs})
    module.optim = type(module.optim)(lr=1e-3, warmup_ratio=0.0)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    engine = engine or ScriptedEngine(tokenizer, alternate=True)  # mixed rewards: every step updates the policy
    module.attach_engine(engine)
    data = PromptDataModule(ArithmeticTask(num_train=64, num_val=4), batch_size=2, seed=data_seed)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, default_root_dir=str(tmp_path),
                        logger=False, enable_progress_bar=False, limit_val_batches=0, enable_model_summary=False,
                        precision=precision)
    return module, data, trainer, engine


def test_grpo_args_name_the_flag():
    with pytest.raises(ValueError, match="--model.grpo.group_size"):
        GRPOArgs(group_size=1)
    with pytest.raises(ValueError, match="--model.grpo.aggregation"):
        GRPOArgs(aggregation="sum")


def test_two_steps_update_policy_and_sync_each_time(tiny_model_dir, tmp_path):
    module, data, trainer, engine = make(tiny_model_dir, tmp_path)
    trainer.fit(module, datamodule=data)
    assert module.rollout_step == 2 and trainer.global_step == 2
    # one sync per step: the first after start, the second because the first update changed the weights
    assert engine.loads == 2 and engine.calls == 2
    # the engine holds the weights after the first update, not the base weights, nor the final ones
    name = "model.layers.0.self_attn.q_proj.weight"
    final = dict(module.model.named_parameters())[name].detach()
    assert not torch.equal(engine.loaded[name], final)
    m = trainer.callback_metrics
    for key in ("reward/mean", "reward/accuracy", "train/loss", "train/clip_frac", "train/entropy",
                "time/sync_s", "rollout/tokens_per_s", "rollout/backtracks", "train/ratio_mean"):
        assert key in m, key
    assert 0.0 <= m["reward/accuracy"] <= 1.0
    assert m["train/ratio_mean"].item() == pytest.approx(1.0)  # on-policy single step: ratio exactly 1
    assert data.sampler.position == 4  # 2 steps x 2 prompts, no extra draws


def test_sync_is_skipped_when_weights_unchanged(tiny_model_dir, tmp_path):
    module, data, trainer, engine = make(tiny_model_dir, tmp_path)
    module.configure_model()
    assert module._sync() > 0 and engine.loads == 1
    assert module._sync() == 0.0 and engine.loads == 1
    module._version += 1
    module._sync()
    assert engine.loads == 2


class SleepingEngine(ScriptedEngine):
    """Keeps the contract of a GPU vLLM engine that sleeps (level 2): asleep it holds no weights, so they must be
    loaded before `wake_up`, and it only generates awake. Every answer of the first call is right (all groups
    equal), later ones right by a coin."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer, p_right=1.0)
        self.asleep, self.events = False, []

    def _event(self, name):
        if not self.events or self.events[-1] != name:  # one "load" per sync, however many buckets
            self.events.append(name)

    def generate(self, prompts, params):
        assert not self.asleep and self.loaded, "generate() on an engine without weights or asleep"
        self._event("generate")
        out = super().generate(prompts, params)
        self.p_right = 0.5
        return out

    def load_weights(self, named_tensors):
        self._event("load")
        super().load_weights(named_tensors)

    def sleep(self):
        self._event("sleep")
        self.asleep, self.loaded = True, {}
        return True

    def wake_up(self):
        if self.asleep:
            assert self.loaded, "woken without weights"
            self._event("wake")
            self.asleep = False


def test_sleeping_engine_gets_the_weights_again_before_waking(tiny_model_dir, tmp_path):
    engine = SleepingEngine(load_tokenizer(str(tiny_model_dir)))
    module, data, trainer, engine = make(tiny_model_dir, tmp_path, engine=engine, max_steps=1, sleep_engine=True,
                                         grpo={"dynamic_sampling": True, "max_extra_draws": 0})
    trainer.fit(module, datamodule=data)
    # step 0: all groups equal and dropped, so no update: the weights did not change, yet the engine dropped them
    # in its sleep and is loaded again; step 1 updates (max_steps counts optimiser steps)
    assert module.rollout_step == 2 and trainer.global_step == 1
    assert engine.events == ["load", "generate", "sleep", "load", "wake", "generate", "sleep"]


def test_dynamic_sampling_draws_more_and_reports_drops(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    engine = ScriptedEngine(tokenizer, p_right=0.5, even_always_right=True)
    module, data, trainer, engine = make(tiny_model_dir, tmp_path, engine=engine, max_steps=1, data_seed=3,
                                         grpo={"dynamic_sampling": True, "max_extra_draws": 6})
    trainer.fit(module, datamodule=data)
    m = trainer.callback_metrics
    assert m["rollout/groups_kept"].item() == 2
    # the first draw (answers 14, 14) has only even,, all-right group: dropped, so more prompts were drawn;
    # the module dropped exactly the groups the engine made all-equal
    dropped = sum(engine.all_equal) / len(engine.all_equal)
    assert dropped > 0 and m["rollout/groups_dropped_frac"].item() == pytest.approx(dropped)
    assert engine.calls >= 2 and data.sampler.position == 2 * engine.calls


def test_steps_that_keep_no_group_stop_the_run_with_a_clear_error(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    engine = ScriptedEngine(tokenizer, p_right=1.0)  # every sample right: no group has a signal
    module, data, trainer, engine = make(tiny_model_dir, tmp_path, engine=engine, max_steps=1,
                                         grpo={"dynamic_sampling": True, "max_extra_draws": 1, "max_idle_steps": 3})
    with pytest.raises(UsageError, match=r"RL stopped at rollout step 2: 3 steps in a row kept no group .* \+1\.00"):
        trainer.fit(module, datamodule=data)
    assert trainer.global_step == 0 and engine.calls == 6  # 3 steps x (1 draw + 1 extra)


def compute_steps(completions, **kwargs):
    """A step reward: -1 on the word "Compute" (every scripted answer opens with it)."""
    return [[(t.index("Compute"), t.index("Compute") + 7, -1.0)] if "Compute" in t else [] for t in completions]


def test_a_step_reward_trains_groups_whose_outcomes_tie_and_lowers_its_tokens(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    engine = ScriptedEngine(tokenizer, p_right=1.0)  # every sample right: the outcome reward gives no signal
    module, data, trainer, engine = make(tiny_model_dir, tmp_path, engine=engine, max_steps=3,
                                         grpo={"dynamic_sampling": True, "max_extra_draws": 1, "max_idle_steps": 1},
                                         step_rewards=[compute_steps])
    module.configure_model()
    prompt = tokenizer("Evaluate 2 + 3.", return_tensors="pt")["input_ids"]
    marked = tokenizer("Compute", add_special_tokens=False)["input_ids"][0]

    def marked_logp() -> float:
        with torch.no_grad():
            return torch.log_softmax(module.model(prompt).logits[0, -1].float(), -1)[marked].item()

    before = marked_logp()
    trainer.fit(module, datamodule=data)
    m = trainer.callback_metrics
    assert trainer.global_step == 3 and engine.calls == 3   # every group kept: no extra draw, no idle stop
    assert m["rollout/groups_kept"].item() == 2 and m["reward/compute_steps"].item() < 0
    assert marked_logp() < before - 0.1


class PoisonWeightAt(L.Callback):
    """Sets the final norm's weight to NaN before rollout step `step`: that step's loss is NaN."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if module.rollout_step == self.step:
            with torch.no_grad():
                module.model.model.norm.weight.fill_(float("nan"))


def test_nan_loss_stops_with_checkpoint(tiny_model_dir, tmp_path):
    module, data, trainer, _ = make(tiny_model_dir, tmp_path, max_steps=4)
    trainer.callbacks.append(PoisonWeightAt(1))
    with pytest.raises(RolloutFailure, match="non-finite loss at step 1") as info:
        trainer.fit(module, datamodule=data)
    ckpt = tmp_path / "checkpoints" / "failed-step1.ckpt"
    assert ckpt.is_file() and str(ckpt) in str(info.value)
    state = torch.load(ckpt, weights_only=False)
    assert state["rl_state"]["rollout_step"] == 1 and state["global_step"] == 1
    assert state["rl_state"]["version"] == 1  # the NaN gradients reached no optimiser step
    assert all(torch.isfinite(v).all() for k, v in state["state_dict"].items() if not k.endswith("model.norm.weight"))


def test_engine_error_stops_with_checkpoint(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    module, data, trainer, _ = make(tiny_model_dir, tmp_path, engine=ScriptedEngine(tokenizer, fail_on_call=2))
    with pytest.raises(RolloutFailure, match="rollout failed at step 1: RuntimeError\\('engine died'\\)"):
        trainer.fit(module, datamodule=data)
    assert (tmp_path / "checkpoints" / "failed-step1.ckpt").is_file()


def test_several_optimiser_steps_per_rollout(tiny_model_dir, tmp_path):
    module, data, trainer, engine = make(tiny_model_dir, tmp_path, max_steps=4,
                                         grpo={"epochs": 2, "mini_batches": 2, "tis_cap": 2.0, "beta": 0.1,
                                               "aggregation": "token_mean", "eps_high": 0.28})
    trainer.fit(module, datamodule=data)
    # 4 optimiser steps = 1 rollout of 2 epochs x 2 mini-batches
    assert module.rollout_step == 1 and engine.calls == 1
    m = trainer.callback_metrics
    assert m["train/kl"].item() >= 0 and "train/is_weight_mean" in m
    # later mini-batches see a moved policy: the ratio leaves 1
    assert m["train/ratio_max"].item() != pytest.approx(1.0, abs=1e-7)
    # the frozen reference is rebuilt from model_path: not in the checkpoint, the optimiser or the parameters
    trainer.save_checkpoint(tmp_path / "kl.ckpt")
    state = torch.load(tmp_path / "kl.ckpt", weights_only=True)
    assert state["state_dict"] and not [k for k in state["state_dict"] if "reference" in k]
    num_params = len(list(module.model.parameters()))
    assert len(list(module.parameters())) == num_params
    assert len(state["optimizer_states"][0]["state"]) == num_params
    assert all(not p.requires_grad for p in module.reference.parameters())


def test_activation_checkpointing_gives_the_same_update(tiny_model_dir, tmp_path):
    weights = []
    for checkpointing in (False, True):
        module, data, trainer, _ = make(tiny_model_dir, tmp_path / str(checkpointing), max_steps=1,
                                        gradient_checkpointing=checkpointing)
        trainer.fit(module, datamodule=data)
        assert module.model.is_gradient_checkpointing == checkpointing
        weights.append({k: v.detach().clone() for k, v in module.model.named_parameters()})
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=1e-5, atol=1e-6)


def test_lora_trains_adapters_only_and_the_engine_gets_merged_weights(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from astro_pl.modules.lora import LoraArgs

    module, data, trainer, engine = make(tiny_model_dir, tmp_path, max_steps=2,
                                         lora=LoraArgs(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    trainer.fit(module, datamodule=data)
    base = load_file(tiny_model_dir / "model.safetensors")
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainer.optimizers[0].state) == len(trainable)
    # the second sync sent merged weights under Hugging Face names: q_proj moved, the untouched k_proj did not
    assert engine.loaded.keys() == base.keys()
    q, k = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"
    assert not torch.equal(engine.loaded[q], base[q]) and torch.equal(engine.loaded[k], base[k])
    frozen = dict(module.model.named_parameters())[f"base_model.model.{q}".replace("q_proj.", "q_proj.base_layer.")]
    assert torch.equal(frozen.detach(), base[q])  # merging for the sync left the base weights as they were


def test_token_capped_micro_batches_give_the_same_gradient(tiny_model_dir, tmp_path):
    class RecordGradients(L.Callback):
        def on_before_optimizer_step(self, trainer, module, optimizer):
            self.grads = {n: p.grad.clone() for n, p in module.model.named_parameters()}

    grads, passes = [], []
    for tokens in (None, 60):
        module, data, trainer, _ = make(tiny_model_dir, tmp_path / str(tokens), max_steps=1,
                                        grpo={"micro_batch_size": 8, "micro_batch_tokens": tokens})
        record = RecordGradients()
        trainer.callbacks.append(record)
        module.configure_model()
        calls = []
        module.model.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        trainer.fit(module, datamodule=data)
        passes.append(len(calls))
        grads.append(record.grads)
    assert passes[0] == 1 and passes[1] > 2  # 8 sequences of ~40 tokens: one pass, or several under 60 tokens
    for name, value in grads[0].items():
        torch.testing.assert_close(grads[1][name], value, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("stored", ["float32", "bfloat16"])
def test_bf16_compute_keeps_rl_sized_steps_only_with_fp32_master_weights(tiny_model_dir, tmp_path, stored):
    """At lr 1e-6 AdamW's first step moves each weight by ~1e-6: float32 master weights take it, bf16 ones
    (spacing ~1e-4 at 0.02) round almost all of it away, which is why RL stores float32 and computes in bf16."""
    module, data, trainer, _ = make(tiny_model_dir, tmp_path, max_steps=1, dtype=stored, compute_dtype="bfloat16",
                                    grpo={"max_grad_norm": None})
    module.optim = type(module.optim)(lr=1e-6, warmup_ratio=0.0, weight_decay=0.0)
    module.configure_model()
    before = {k: v.detach().clone() for k, v in module.model.named_parameters()}
    dtypes = []
    q_proj = module.model.model.layers[0].self_attn.q_proj
    q_proj.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    trainer.fit(module, datamodule=data)
    assert dtypes and set(dtypes) == {torch.bfloat16}
    moved = [(v != before[k]).float().mean().item() for k, v in module.model.named_parameters()
             if k.endswith("proj.weight")]
    moved = sum(moved) / len(moved)  # fraction of the attention and MLP weights that changed
    assert moved > 0.9 if stored == "float32" else moved < 0.1


def test_bf16_mixed_precision_trains_fp32_weights_on_cpu(tiny_model_dir, tmp_path):
    module, data, trainer, _ = make(tiny_model_dir, tmp_path, max_steps=1, precision="bf16-mixed")
    module.configure_model()
    before = {k: v.detach().clone() for k, v in module.model.named_parameters()}
    dtypes = []
    q_proj = module.model.model.layers[0].self_attn.q_proj
    q_proj.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    trainer.fit(module, datamodule=data)
    assert dtypes and set(dtypes) == {torch.bfloat16}  # the update's forward ran under autocast
    assert all(p.dtype == torch.float32 for p in module.model.parameters())
    assert any(not torch.equal(before[k], v) for k, v in module.model.named_parameters())
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


@pytest.mark.parametrize("flag", ["dtype", "compute_dtype"])
def test_bad_dtype_names_the_flag(tiny_model_dir, flag):
    with pytest.raises(ValueError, match=f"--model.{flag} must be one of auto, float32, bfloat16, float16; got 'bf16'"):
        RLModule(str(tiny_model_dir), **{flag: "bf16"})


def test_sleeping_a_vllm_engine_needs_sleep_mode(tiny_model_dir):
    with pytest.raises(ValueError, match="--model.sleep_engine true needs --model.engine.enable_sleep_mode"):
        RLModule(str(tiny_model_dir), sleep_engine=True)


def test_nucleus_sampling_is_refused_in_rl(tiny_model_dir):
    with pytest.raises(ValueError, match="--model.sampling.top_p must be 1 in RL, got 0.9"):
        RLModule(str(tiny_model_dir), sampling=SamplingArgs(top_p=0.9))


def test_skipping_zero_advantage_sequences_gives_the_same_update_with_fewer_passes(tiny_model_dir, tmp_path):
    """Even answers are always right, so their groups have all-equal rewards and advantage 0: skipping them must not
    change the weights (the normalisers still count them), only the number of sequences run."""
    weights, rows_run, metrics = {}, {}, {}
    for skip in (False, True):
        tokenizer = load_tokenizer(str(tiny_model_dir))
        engine = ScriptedEngine(tokenizer, p_right=0.5, even_always_right=True)
        module, data, trainer, _ = make(tiny_model_dir, tmp_path / str(skip), engine=engine, max_steps=4,
                                        grpo={"skip_zero_advantage": skip, "mini_batches": 2, "epochs": 1,
                                              "aggregation": "token_mean"})
        module.configure_model()
        counts = []
        module.model.get_decoder().register_forward_hook(
            lambda _m, _i, out, counts=counts: counts.append(out.last_hidden_state.shape[0]))
        trainer.fit(module, datamodule=data)
        weights[skip] = {k: v.detach().clone() for k, v in module.model.named_parameters()}
        rows_run[skip], metrics[skip] = sum(counts), trainer.callback_metrics
    assert any(engine.all_equal) and not all(engine.all_equal)  # some groups are skippable, not all
    assert rows_run[True] < rows_run[False]
    assert metrics[False]["train/computed_frac"] == 1.0  # (the last step's; whether it skipped depends on its draw)
    for name, value in weights[False].items():
        torch.testing.assert_close(weights[True][name], value, rtol=1e-5, atol=1e-7)


def test_skip_zero_advantage_refuses_a_kl_term():
    with pytest.raises(ValueError, match="--model.grpo.skip_zero_advantage needs --model.grpo.beta 0"):
        GRPOArgs(skip_zero_advantage=True, beta=0.1)
