"""ASTRO-RL: a GRPO-family LightningModule whose rollouts come from an engine living in the training process.

One training step = one rollout batch:
1. sync the policy into the engine (skipped when no optimiser step happened since the last sync; always done
   after a start or resume, since the engine loaded the base weights),
2. sample G completions for each of B prompts (the engine's log-probs kept),
3. reward each with the reward functions (default: the task's checker, +1 / -1; no final answer, or an answer cut
   off at the token limit, is wrong),
4. group advantages; with dynamic sampling, groups whose rewards are all equal are dropped and more prompts
   are drawn until B groups are kept or `max_extra_draws` is used up,
5. `epochs` passes over the batch in `mini_batches` optimiser steps each, micro-batched, with the clipped-ratio
   loss, optional k3 KL to a frozen reference and optional truncated importance weights.

Every rank runs its own engine on its own prompts; groups never span ranks, so advantages are local. Ranks that
form one tensor-parallel vLLM engine (`external_launcher`: the training ranks are its workers) gather their
prompts, submit the same requests with one seed, and each keeps the completions of its own prompts. Loss
normalisers (tokens, sequences) are summed over ranks so that FSDP's gradient averaging gives the loss of the
global batch. Dynamic sampling draws until every rank has enough groups and then keeps the same number on every
rank, so all ranks run the same number of forward/backward passes.

Departures from the paper (which leaves these open): the defaults are GRPO's (seq_mean, std scaling, no KL);
DAPO and Dr. GRPO are config choices. A failed rollout or a non-finite loss writes a checkpoint and stops.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from typing_extensions import override

from astro_pl.data.problems import Problem
from astro_pl.evaluation.metrics import MeanBacktracks, MeanResponseLength, PassAtK
from astro_pl.loading import resolve_dtype
from astro_pl.modules.advantages import group_advantages
from astro_pl.modules.collectives import all_reduce_scalar, ranks_per_engine
from astro_pl.modules.experience import (
    Experience,
    Group,
    GroupBuffer,
    first_response_column,
    pack_experience,
    plan_micro_batches,
)
from astro_pl.modules.grpo_args import GRPOArgs
from astro_pl.modules.logprobs import token_logprobs_and_entropy
from astro_pl.modules.lora import LoraArgs
from astro_pl.modules.losses import (
    aggregate_loss,
    clipped_ratio_loss,
    kl_k3,
    masked_mean,
    truncated_is_weights,
)
from astro_pl.modules.optim import OptimArgs, configure_adamw_cosine
from astro_pl.modules.rollouts import Rollouts, collect_rollouts, rollout_metrics
from astro_pl.modules.weight_sync import sync_weights
from astro_pl.rewards.functions import TaskCorrectness, reward_name
from astro_pl.rollout import resolve_engine_args
from astro_pl.rollout.base import EngineArgs, RolloutEngine, SamplingArgs
from astro_pl.seeds import derive_seed
from astro_pl.tasks.base import Task


class RolloutFailure(RuntimeError):
    """A rollout or update could not complete; a checkpoint was written first."""


class RLModule(L.LightningModule):
    """Policy optimisation with verifiable rewards and on-policy rollouts from an in-process engine.

    Args:
        model_path: Policy checkpoint (Hugging Face directory, usually the SFT export).
        engine: The rollout engine (`kind` vllm or hf, dtype, ...); its model defaults to the policy path and its
            dtype to `compute_dtype`. Ignored when an engine is attached.
        task: The domain whose checker the default reward uses; None takes the datamodule's `task`, so YAML names
            it once (under `data`).
        rewards: Reward functions in TRL's signature (`astro_pl.rewards.functions`): class paths with init args, or
            dotted paths of plain functions. Default: `TaskCorrectness()` (+1 / -1, cut-off answers wrong).
        reward_weights: One weight per reward function (default all 1).
        sampling: Rollout sampling (default max_tokens 128); `n` is replaced by `grpo.group_size`. `top_p` must
            be 1: vLLM renormalises its log-probs over the nucleus and the trainer does not, which would bias the
            importance ratios and the clipping.
        grpo: Algorithm knobs (default `GRPOArgs()`).
        val_max_tokens: Most tokens per validation answer (greedy).
        optim: AdamW (default lr 1e-6, no warmup) with warmup + cosine over `trainer.max_steps` optimiser
            steps (each rollout step makes `grpo.epochs * grpo.mini_batches` of them).
        dtype: Dtype of the stored (master) weights and optimiser state. float32 by default: at RL's learning
            rates a bf16 weight cannot take the step (lr 1e-6 is under half the bf16 spacing of any weight
            above ~3e-4 in size), so plain-bf16 training leaves almost every weight where it was.
        compute_dtype: Dtype of forward/backward ("auto": bf16 on GPUs that have it, float32 on CPU), applied by
            FSDP2's mixed-precision policy when sharded, else by autocast. The engine gets weights in its own dtype.
        sync_bucket_mb: Most megabytes gathered and sent to the engine at once during weight sync; buckets hold
            whole layers, so a layer larger than this goes alone.
        sleep_engine: Put the engine to sleep during the update (GPU vLLM with `enable_sleep_mode`: KV cache
            released, weights dropped) and refill it at the next sync.
        fsdp: Shard each decoder layer with FSDP2 when run under `ModelParallelStrategy`.
        gradient_checkpointing: Recompute activations in backward (long responses, large models).
        lora: Train LoRA adapters (peft) instead of all weights; the engine gets the merged weights.
        seed: Seeds sampling and mini-batch shuffling (with the step), so reruns and resumes repeat exactly.
        engine_group_size: Consecutive ranks that share one engine and so submit identical requests; None
            derives it from `engine_args` (`tensor_parallel_size` under vLLM's `external_launcher`, else 1).
        nan_at_step: Testing aid: make the loss NaN at this rollout step to exercise the failure path.
    """

    def __init__(
        self,
        model_path: str,
        engine: EngineArgs | None = None,
        task: Task | None = None,
        rewards: list[Callable] | None = None,
        reward_weights: list[float] | None = None,
        sampling: SamplingArgs | None = None,
        grpo: GRPOArgs | None = None,
        val_max_tokens: int | None = None,
        optim: OptimArgs | None = None,
        dtype: str = "float32",
        compute_dtype: str = "auto",
        sync_bucket_mb: float = 256.0,
        sleep_engine: bool = False,
        fsdp: bool = True,
        gradient_checkpointing: bool = False,
        lora: LoraArgs | None = None,
        seed: int = 0,
        engine_group_size: int | None = None,
        nan_at_step: int | None = None,
    ):
        super().__init__()
        if sync_bucket_mb <= 0:
            raise ValueError(f"--model.sync_bucket_mb must be > 0, got {sync_bucket_mb}")
        # dataclasses go in as dicts, so checkpoints load with torch.load(weights_only=True)
        self.save_hyperparameters(ignore=["engine", "task", "rewards", "sampling", "grpo", "optim", "lora"])
        self.automatic_optimization = False
        self.model_path, self.dtype_name = model_path, dtype
        resolve_dtype(dtype, "--model.dtype")  # fails here, not at model loading
        self.compute_dtype_name = compute_dtype
        self.compute_dtype = resolve_dtype(compute_dtype, "--model.compute_dtype")
        self._autocast = False  # set by configure_model: unsharded weights stored wider than compute_dtype
        self.engine_args = resolve_engine_args(engine or EngineArgs(dtype=compute_dtype), model_path)
        if sleep_engine and self.engine_args.kind == "vllm" and not self.engine_args.enable_sleep_mode:
            raise ValueError("--model.sleep_engine true needs --model.engine.enable_sleep_mode true: a vLLM "
                             "engine started without sleep mode cannot free its memory")
        grpo = grpo or GRPOArgs()
        sampling = sampling or SamplingArgs(max_tokens=128)
        if sampling.top_p < 1:
            raise ValueError(f"--model.sampling.top_p must be 1 in RL, got {sampling.top_p}: vLLM's log-probs are "
                             "renormalised over the nucleus and the trainer's are not, which biases the importance "
                             "ratios and the clipping")
        self.task = task
        self.rewards = list(rewards) if rewards else [TaskCorrectness()]
        self.reward_weights = list(reward_weights) if reward_weights is not None else [1.0] * len(self.rewards)
        if len(self.reward_weights) != len(self.rewards):
            raise ValueError(f"--model.reward_weights has {len(self.reward_weights)} weights for "
                             f"{len(self.rewards)} rewards")
        self.hparams["rewards"] = [reward_name(fn) for fn in self.rewards]
        self.sampling = dataclasses.replace(sampling, n=grpo.group_size, logprobs=True)
        self.grpo = grpo
        self.val_max_tokens = val_max_tokens or sampling.max_tokens
        self.optim = optim or OptimArgs(lr=1e-6, warmup_ratio=0.0)
        self.lora = lora
        self.hparams.update({k: dataclasses.asdict(v) for k, v in dict(
            engine=self.engine_args, sampling=sampling, grpo=grpo, optim=self.optim).items()})
        self.hparams["lora"] = dataclasses.asdict(lora) if lora else None
        self.sync_bucket_bytes = int(sync_bucket_mb * 2**20)
        self.sleep_engine, self.use_fsdp, self.seed, self.nan_at_step = sleep_engine, fsdp, seed, nan_at_step
        self.gradient_checkpointing = gradient_checkpointing
        self.engine_group_size = engine_group_size or ranks_per_engine(self.engine_args)
        if self.engine_group_size < 1:
            raise ValueError(f"--model.engine_group_size must be >= 1, got {engine_group_size}")
        self._engine_group = None  # process group of the ranks sharing this rank's engine (size > 1 only)
        self.model: torch.nn.Module | None = None  # the policy
        # a tuple keeps the frozen reference out of the module tree: it is rebuilt from model_path, so it stays
        # out of checkpoints, optimiser state and weight sync
        self._reference: tuple[torch.nn.Module, ...] = ()
        self.engine: RolloutEngine | None = None
        self.tokenizer = None
        self.rollout_step = 0  # rollout batches done (optimiser steps are trainer.global_step)
        self._version = 0  # bumped by every optimiser step
        self._synced_version: int | None = None
        self._engine_attached = False
        self.last_rollout: GroupBuffer | None = None
        self.val_pass1, self.val_length, self.val_backtracks = PassAtK(k=1), MeanResponseLength(), MeanBacktracks()

    # ---- setup ------------------------------------------------------------------------------------------------

    def attach_engine(self, engine: RolloutEngine) -> None:
        """Uses `engine` instead of building one (tests, or an engine shared with evaluation)."""
        self.engine = engine
        self._engine_attached = True
        self._synced_version = None

    @override
    def configure_model(self) -> None:
        if self.model is not None:
            return
        from astro_pl.loading import load_causal_lm, load_tokenizer
        from astro_pl.modules.lora import add_lora

        self.tokenizer = load_tokenizer(self.model_path)
        self.model = load_causal_lm(self.model_path, self.dtype_name)
        if self.gradient_checkpointing:
            self.model.config.use_cache = False
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.lora is not None:
            self.model = add_lora(self.model, self.lora)
        reference = None
        if self.grpo.beta > 0:  # frozen: stored in the compute dtype, no master copy needed
            reference = load_causal_lm(self.model_path, self.compute_dtype_name).requires_grad_(False).eval()
        mesh = getattr(self, "device_mesh", None) if self._trainer is not None else None
        stored = next(self.model.parameters()).dtype
        if self.use_fsdp and mesh is not None:
            from astro_pl.modules.fsdp import shard_decoder

            param_dtype = None if self.compute_dtype == stored else self.compute_dtype
            self.model = shard_decoder(self.model, mesh["data_parallel"], param_dtype)
            if reference is not None:
                reference = shard_decoder(reference, mesh["data_parallel"])
        else:
            self._autocast = self.compute_dtype != stored
        self._reference = () if reference is None else (reference,)

    @property
    def reference(self) -> torch.nn.Module | None:
        """The frozen initial policy of the KL term (None when beta == 0), on this module's device."""
        if not self._reference:
            return None
        from torch.distributed.fsdp import FSDPModule

        reference = self._reference[0]
        if not isinstance(reference, FSDPModule) and next(reference.parameters()).device != self.device:
            reference.to(self.device)  # Lightning moves only registered submodules; FSDP2 placed sharded ones
        return reference

    @override
    def setup(self, stage: str) -> None:
        if self.task is None:
            self.task = getattr(self.trainer.datamodule, "task", None) if self._trainer is not None else None
            if self.task is None:
                raise ValueError("RLModule needs a task: give --model.task, or a datamodule with a `task` "
                                 "(PromptDataModule's --data.task)")
        size = self.engine_group_size
        if size > 1 and self._engine_group is None:
            world = self.trainer.world_size
            if world % size:
                raise ValueError(f"engine group size {size} (tensor-parallel ranks per engine) does not divide the "
                                 f"{world} training ranks")
            for start in range(0, world, size):  # every rank creates every group, as new_group requires
                group = dist.new_group(list(range(start, start + size)))
                if start <= self.global_rank < start + size:
                    self._engine_group = group
        if self.tokenizer is None:
            from astro_pl.loading import load_tokenizer

            self.tokenizer = load_tokenizer(self.model_path)
        if self.engine is None and stage in ("fit", "validate"):
            from astro_pl.rollout import build_engine

            self.engine = build_engine(self.engine_args)

    @override
    def teardown(self, stage: str) -> None:
        if self.engine is not None and not self._engine_attached:
            self.engine.close()
            self.engine = None

    @override
    def configure_optimizers(self):
        total = self.trainer.estimated_stepping_batches
        return configure_adamw_cosine(self.model.named_parameters(), self.optim, total)

    # ---- checkpoint extras --------------------------------------------------------------------------------------

    @override
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rl_state"] = {"rollout_step": self.rollout_step, "version": self._version,
                                  "torch_rng": torch.get_rng_state()}

    @override
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("rl_state", {})
        self.rollout_step = int(state.get("rollout_step", 0))
        self._version = int(state.get("version", 0))
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
        self._synced_version = None  # the engine still holds the base weights

    # ---- the step -----------------------------------------------------------------------------------------------

    @override
    def training_step(self, dataloader_iter) -> None:
        step = self.rollout_step
        t0 = time.perf_counter()
        try:
            sync_s = self._sync()
            rollouts = self._collect(dataloader_iter, step)
        except Exception as error:  # noqa: BLE001 - reported with a checkpoint, then re-raised
            failed = 1.0
            cause = error
        else:
            failed, cause = 0.0, None
        if all_reduce_scalar(failed, "max") > 0:
            self._fail(f"rollout failed at step {step}" + (f": {cause!r}" if cause else " on another rank"), cause)
        if self.sleep_engine and self.engine.sleep():
            self._synced_version = None  # the sleeping engine dropped its weights
        self.last_rollout = rollouts.buffer  # what this step sampled, for inspection and tests
        kept = int(all_reduce_scalar(len(rollouts.buffer), "min"))
        groups = rollouts.buffer.groups[: min(kept, rollouts.wanted)]
        correct = next((fn for fn in self.rewards if reward_name(fn) == "correct"), None)
        metrics = rollout_metrics(rollouts, len(groups), getattr(correct, "correct", None))
        # prompts this rank's engine generated for: its group's (every rank draws the same number)
        metrics["rollout/engine_prompts"] = float(rollouts.buffer.drawn * self.engine_group_size)
        metrics["time/sync_s"] = sync_s
        t1 = time.perf_counter()
        if groups:
            metrics.update(self._update(groups, step))
        metrics["time/train_s"] = time.perf_counter() - t1
        metrics["time/step_s"] = time.perf_counter() - t0
        self.rollout_step += 1
        self.log_dict(metrics, on_step=True, on_epoch=False, prog_bar=False, batch_size=1)
        self.log("reward", metrics["reward/mean"], prog_bar=True, on_step=True, batch_size=1)

    def _sync(self) -> float:
        """Loads the policy into the engine unless it holds this version already, then wakes the engine; returns
        the seconds spent loading (0 when skipped). Waking after loading keeps the KV cache unmapped while the
        gathered weights are alive, as TRL and veRL do."""
        seconds = 0.0
        if self._synced_version != self._version:
            start = time.perf_counter()
            with torch.no_grad():
                sync_weights(self.model, self.engine, self.sync_bucket_bytes, resolve_dtype(self.engine_args.dtype))
            self._synced_version = self._version
            seconds = time.perf_counter() - start
        if self.sleep_engine:
            self.engine.wake_up()
        return seconds

    def _render(self, problems: list[Problem]) -> tuple[list[str], list[list[int]]]:
        """Prompt texts of `problems` (the task's format, this policy's chat template) and their token ids; the
        rendered prompt already holds BOS, so ids are encoded without special tokens."""
        prompts = [self.task.prompt(self.tokenizer, p) for p in problems]
        return prompts, [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]

    def _collect(self, dataloader_iter, step: int) -> Rollouts:
        def next_problems() -> list[Problem]:
            batch = next(dataloader_iter)
            return batch[0] if isinstance(batch, tuple) else batch

        engine_index = self.global_rank // self.engine_group_size
        return collect_rollouts(
            self.engine, next_problems, self._render, self.sampling,
            lambda draw: derive_seed(self.seed, "rollout", step, draw, engine_index),
            self.rewards, self.reward_weights, self.task, dynamic_sampling=self.grpo.dynamic_sampling,
            max_extra_draws=self.grpo.max_extra_draws, engine_group=self._engine_group)

    # ---- the update ---------------------------------------------------------------------------------------------

    def _forward_logp(self, model: torch.nn.Module, mb: Experience) -> tuple[torch.Tensor, torch.Tensor]:
        """[n, L-1] log-probs of each next token and entropies of its distribution (0 before the first response token).

        Logits are computed from the first response position on (`logits_to_keep`): prompt positions are never
        scored, and for large vocabularies the [n, L, V] logits are much of the memory of a step (hence also the
        chunked log-softmax of `token_logprobs_and_entropy`).

        No attention mask is passed: rows are right-padded (`pack_experience`), so causal attention alone keeps
        real tokens from seeing padding, and padded positions are never counted. A padding mask would force SDPA
        off its causal kernel onto a masked full-square one (a third of the update's GPU time on an H200).
        """
        start = first_response_column(mb.response_mask)
        keep = mb.input_ids.shape[1] - start
        # nullcontext, not autocast(enabled=False), which would switch off a Trainer's bf16-mixed autocast
        cast = torch.autocast(self.device.type, dtype=self.compute_dtype) if self._autocast else nullcontext()
        with cast:
            logits = model(input_ids=mb.input_ids, logits_to_keep=keep).logits[:, :-1]  # [n, L-1-start, V]
        temperature = self.sampling.temperature if self.sampling.temperature > 0 else 1.0
        logp, ent = token_logprobs_and_entropy(logits, mb.input_ids[:, start + 1:], temperature)
        return F.pad(logp, (start, 0)), F.pad(ent, (start, 0))

    @torch.no_grad()
    def _score(self, model: torch.nn.Module, exp: Experience, computed: torch.Tensor) -> torch.Tensor:
        """Log-probs under `model` of the rows marked `computed` (0 elsewhere)."""
        out = torch.zeros_like(exp.engine_logp)
        for mb_rows in self._plan(exp, torch.arange(exp.num_sequences), computed):
            logp, _ = self._forward_logp(model, exp.select(mb_rows))
            out[mb_rows, : logp.shape[1]] = logp
        return out

    def _plan(self, exp: Experience, rows: torch.Tensor, computed: torch.Tensor) -> list[torch.Tensor]:
        """The `computed` ones of `rows` split into length-sorted micro-batches, as many on every rank (FSDP runs
        them in lockstep), at least one.

        Rows not computed (gradient 0) fill in, shortest first, when this rank has too few rows for the count the
        other ranks need, or none: the optimiser then sees zero gradients, as it would without skipping.
        """
        g = self.grpo
        lengths = exp.attention_mask.sum(1).cpu()  # planned on the host: one transfer, not one per sequence
        run, fillers = rows[computed[rows]], rows[~computed[rows]]
        plan = plan_micro_batches(lengths[run], g.micro_batch_size, g.micro_batch_tokens)
        count = int(all_reduce_scalar(max(len(plan), 1), "max"))
        if len(run) < count:
            shortest = fillers[torch.argsort(lengths[fillers], stable=True)]
            run = torch.cat([run, shortest[: count - len(run)]])
        if count != len(plan):
            plan = plan_micro_batches(lengths[run], g.micro_batch_size, g.micro_batch_tokens, count)
        return [run[p] for p in plan]

    def _update(self, groups: list[Group], step: int) -> dict[str, float]:
        g = self.grpo
        rewards = torch.tensor([r for grp in groups for r in grp.rewards])
        advantages = group_advantages(rewards, g.group_size, g.advantage_scale, g.advantage_eps)
        exp = pack_experience(groups, advantages, self.tokenizer.pad_token_id, g.mask_truncated)
        exp = Experience(*[None if t is None else t.to(self.device) for t in exp])
        self.model.train()
        computed = torch.ones(exp.num_sequences, dtype=torch.bool)  # the rows that run forward/backward
        if g.skip_zero_advantage:
            computed = exp.advantages.cpu() != 0
        reuse = g.epochs * g.mini_batches > 1
        if reuse:
            exp = exp._replace(old_logp=self._score(self.model, exp, computed))
        if g.beta > 0:
            exp = exp._replace(ref_logp=self._score(self.reference, exp, computed))
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        world = self.trainer.world_size
        constant = g.constant_normalizer or float(self.sampling.max_tokens)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "minibatch-order", step))
        # statistics stay on the device until the end: a .item() per micro-batch would stall the GPU each time
        stats: dict[str, list[torch.Tensor]] = {k: [] for k in ("loss", "clip_low", "clip_high", "kl", "entropy",
                                                                 "ratio_mean", "ratio_max", "is_weight_mean",
                                                                 "grad_norm", "engine_logp_gap")}
        for epoch in range(g.epochs):
            order = torch.randperm(exp.num_sequences, generator=generator)
            for index, rows in enumerate(order.chunk(g.mini_batches)):
                before_update = epoch == 0 and index == 0  # the trainer still holds the sampling policy
                num_tokens = all_reduce_scalar(float(exp.response_mask[rows].sum()))
                num_sequences = all_reduce_scalar(float(len(rows)))
                optimizer.zero_grad(set_to_none=True)
                total = torch.zeros((), device=self.device)
                finite = torch.ones((), dtype=torch.bool, device=self.device)
                for mb_rows in self._plan(exp, rows, computed):
                    mb = exp.select(mb_rows)
                    logp, ent = self._forward_logp(self.model, mb)
                    old = mb.old_logp if mb.old_logp is not None else logp.detach()
                    weights = truncated_is_weights(old, mb.engine_logp, g.tis_cap) if g.tis_cap else None
                    out = clipped_ratio_loss(logp, old, mb.advantages, mb.response_mask, g.eps_low, g.eps_high,
                                             weights)
                    per_token = out.per_token
                    if g.beta > 0:
                        kl = kl_k3(logp, mb.ref_logp) * mb.response_mask
                        per_token = per_token + g.beta * kl
                        stats["kl"].append(masked_mean(kl.detach(), mb.response_mask))
                    loss = aggregate_loss(per_token, mb.response_mask, g.aggregation, constant, num_tokens,
                                          num_sequences) * world
                    if self.nan_at_step == step:
                        loss = loss * float("nan")
                    finite &= torch.isfinite(loss.detach())
                    self.manual_backward(loss)
                    total += loss.detach() / world
                    m = mb.response_mask.bool()
                    if before_update:  # engine vs trainer on the same tokens: the off-policy gap of the sampler
                        gap = (logp.detach() - mb.engine_logp).abs()
                        stats["engine_logp_gap"].append(masked_mean(gap, m))
                    stats["clip_low"].append(masked_mean(out.clipped_low.float(), m))
                    stats["clip_high"].append(masked_mean(out.clipped_high.float(), m))
                    stats["entropy"].append(masked_mean(ent, m))
                    stats["ratio_mean"].append(masked_mean(out.ratio, m))
                    stats["ratio_max"].append(torch.where(m, out.ratio.detach(), 0.0).amax())  # ratios are > 0
                    if weights is not None:
                        stats["is_weight_mean"].append(masked_mean(weights, m))
                # checked before the optimiser step, so a bad loss never reaches the weights (its NaN gradients
                # are dropped with the rest of this mini-batch's)
                if all_reduce_scalar(0.0 if finite.item() else 1.0, "max") > 0:
                    self._fail(f"non-finite loss at step {step} (optimiser step {self.global_step})", None)
                stats["grad_norm"].append(self._clip_and_step(optimizer, scheduler))
                stats["loss"].append(total)
        names = [k for k, v in stats.items() if v]
        reduce = {"ratio_max": torch.amax}  # the others are means
        values = torch.stack([reduce.get(k, torch.mean)(torch.stack(stats[k]).float()) for k in names]).tolist()
        metrics = {f"train/{k}": value for k, value in zip(names, values, strict=True)}  # one sync above
        metrics["train/ratio_max"] = metrics.get("train/ratio_max") or 1.0  # 1.0 when no token was counted
        metrics["train/clip_frac"] = metrics.get("train/clip_low", 0.0) + metrics.get("train/clip_high", 0.0)
        metrics["train/lr"] = scheduler.get_last_lr()[0]
        metrics["train/computed_frac"] = computed.float().mean().item()
        return metrics

    def _clip_and_step(self, optimizer, scheduler) -> torch.Tensor:
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.grpo.max_grad_norm or math.inf)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        if not torch.isfinite(norm):
            self._fail(f"non-finite gradient norm at step {self.rollout_step}", None)
        optimizer.step()
        scheduler.step()
        self._version += 1
        return norm.detach()

    def _fail(self, message: str, cause: BaseException | None) -> None:
        """Writes a checkpoint (weights from before this update's first bad step) and stops with `message`."""
        root = Path(self.trainer.default_root_dir)
        callback = self.trainer.checkpoint_callback
        folder = Path(callback.dirpath) if callback is not None and callback.dirpath else root / "checkpoints"
        path = folder / f"failed-step{self.rollout_step}.ckpt"
        self.trainer.save_checkpoint(str(path))
        raise RolloutFailure(f"{message}; checkpoint written to {path} (resume with --ckpt_path {path})") from cause

    @override
    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        return batch  # prompts are text; the engine tokenizes and places them

    # ---- validation ---------------------------------------------------------------------------------------------

    @override
    def validation_step(self, batch, batch_idx: int) -> None:
        """Greedy answers to held-out problems, scored with the evaluation metrics (pass@1 = accuracy here); a
        cut-off answer is wrong."""
        self._sync()
        params = SamplingArgs(n=1, temperature=0.0, max_tokens=self.val_max_tokens, stop=self.sampling.stop,
                              seed=self.seed)
        outputs = self.engine.generate(self._render(batch)[1], params)
        texts = [o[0].text for o in outputs]
        answers = [self.task.final_answer(o[0].text, o[0].finish_reason) for o in outputs]
        correct = [a is not None and self.task.check(a, problem.answer) for a, problem in zip(answers, batch,
                                                                                              strict=True)]
        self.val_pass1.update(torch.tensor(correct).unsqueeze(1))
        self.val_length.update(torch.tensor([float(len(o[0].token_ids)) for o in outputs]))
        self.val_backtracks.update(texts)
        for name, metric in (("accuracy", self.val_pass1), ("response_len", self.val_length),
                             ("backtracks", self.val_backtracks)):
            self.log(f"val/{name}", metric, on_epoch=True, prog_bar=name == "accuracy", batch_size=len(batch))
