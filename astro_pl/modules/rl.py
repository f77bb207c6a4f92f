"""ASTRO-RL: a GRPO-family LightningModule whose rollouts come from an engine living in the training process.

One training step = one rollout batch:
1. sync the policy into the engine (skipped when no optimiser step happened since the last sync; always done
   after a start or resume, since the engine loaded the base weights),
2. sample G completions for each of B prompts (the engine's log-probs kept),
3. reward each with the reward functions (default: the task's checker, +1 / -1; no final answer, or an answer cut
   off at the token limit, is wrong), and mark the tokens of single steps with any step rewards,
4. group advantages; with dynamic sampling, groups whose rewards are all equal are dropped and more prompts
   are drawn until B groups are kept or `max_extra_draws` is used up,
5. the update (`astro_pl.modules.policy_update`): `epochs` passes over the batch in `mini_batches` optimiser steps
   each, micro-batched, with the clipped-ratio loss (token or GSPO sequence ratio), an optional KL to a frozen
   reference, entropy bonus and token- or sequence-level importance correction.

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
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from typing_extensions import override

from astro_pl.data.problems import Problem
from astro_pl.errors import UsageError, check_model_path
from astro_pl.evaluation.backtracks import DEFAULT_BACKTRACK_PHRASES
from astro_pl.evaluation.metrics import MeanBacktracks, MeanResponseLength, PassAtK
from astro_pl.loading import resolve_dtype
from astro_pl.modules.collectives import all_reduce_scalar, ranks_per_engine
from astro_pl.modules.experience import Group, GroupBuffer
from astro_pl.modules.grpo_args import GRPOArgs
from astro_pl.modules.kernels import apply_fused_kernels
from astro_pl.modules.lora import LoraArgs
from astro_pl.modules.optim import OptimArgs, configure_adamw_cosine
from astro_pl.modules.policy_update import PolicyForward, UpdateFailure, UpdateScale, build_experience, policy_update
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
        step_rewards: Rewards on the tokens of single steps (`astro_pl.rewards.steps`, e.g. `StepFaultPenalty`:
            a move the task's rules reject), added to those tokens' advantages after the group normalisation; a
            group they mark carries a signal even when its outcomes tie.
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
        fused_kernels: Liger's RMSNorm, RoPE and SwiGLU kernels where liger-kernel is installed and the policy is
            on CUDA; elsewhere the PyTorch path. Log-probs never build full logits either way.
        lora: Train LoRA adapters (peft) instead of all weights; the engine gets the merged weights.
        seed: Seeds sampling and mini-batch shuffling (with the step), so reruns and resumes repeat exactly.
        engine_group_size: Consecutive ranks that share one engine and so submit identical requests; None
            derives it from `engine_args` (`tensor_parallel_size` under vLLM's `external_launcher`, else 1).
        backtrack_phrases: Phrases `rollout/backtracks` counts, as `astro eval --backtrack_phrases` (the graph
            task's traces say "restart." and "back to"); None: eval's default.
    """

    def __init__(
        self,
        model_path: str,
        engine: EngineArgs | None = None,
        task: Task | None = None,
        rewards: list[Callable] | None = None,
        reward_weights: list[float] | None = None,
        step_rewards: list[Callable] | None = None,
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
        fused_kernels: bool = False,
        lora: LoraArgs | None = None,
        seed: int = 0,
        engine_group_size: int | None = None,
        backtrack_phrases: list[str] | None = None,
    ):
        super().__init__()
        if sync_bucket_mb <= 0:
            raise ValueError(f"--model.sync_bucket_mb must be > 0, got {sync_bucket_mb}")
        # dataclasses go in as dicts, so checkpoints load with torch.load(weights_only=True)
        self.save_hyperparameters(ignore=["engine", "task", "rewards", "step_rewards", "sampling", "grpo", "optim",
                                          "lora"])
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
        self.step_rewards = list(step_rewards or [])
        self.hparams["step_rewards"] = [reward_name(fn) for fn in self.step_rewards]
        self.sampling = dataclasses.replace(sampling, n=grpo.group_size, logprobs=True)
        self.grpo = grpo
        self.val_max_tokens = val_max_tokens or sampling.max_tokens
        self.optim = optim or OptimArgs(lr=1e-6, warmup_ratio=0.0)
        self.lora = lora
        self.hparams.update({k: dataclasses.asdict(v) for k, v in dict(
            engine=self.engine_args, sampling=sampling, grpo=grpo, optim=self.optim).items()})
        self.hparams["lora"] = dataclasses.asdict(lora) if lora else None
        self.sync_bucket_bytes = int(sync_bucket_mb * 2**20)
        self.sleep_engine, self.use_fsdp, self.seed = sleep_engine, fsdp, seed
        self.backtrack_phrases = list(backtrack_phrases or DEFAULT_BACKTRACK_PHRASES)
        self.gradient_checkpointing, self.fused_kernels = gradient_checkpointing, fused_kernels
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
        self._idle_steps = 0  # rollout steps in a row that kept no group (grpo.max_idle_steps)
        self._version = 0  # bumped by every optimiser step
        self._synced_version: int | None = None
        self._engine_attached = False
        self.last_rollout: GroupBuffer | None = None
        self.val_pass1, self.val_length, self.val_backtracks = (PassAtK(k=1), MeanResponseLength(),
                                                                MeanBacktracks(self.backtrack_phrases))

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

        check_model_path(self.model_path, "--model.init_args.model_path")
        self.tokenizer = load_tokenizer(self.model_path)
        self.model = load_causal_lm(self.model_path, self.dtype_name)
        if self.fused_kernels:
            apply_fused_kernels(self.model, self.trainer.strategy.root_device if self._trainer else self.device)
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

            check_model_path(self.model_path, "--model.init_args.model_path")
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
        except StopIteration:
            raise  # the prompts ran out: Lightning ends the epoch (every rank draws alike, so all at once)
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
        metrics = rollout_metrics(rollouts, len(groups), getattr(correct, "correct", None), self.backtrack_phrases)
        # prompts this rank's engine generated for: its group's (every rank draws the same number)
        metrics["rollout/engine_prompts"] = float(rollouts.buffer.drawn * self.engine_group_size)
        metrics["time/sync_s"] = sync_s
        t1 = time.perf_counter()
        if groups:
            metrics.update(self._update(groups, step))
        self._idle_steps = 0 if groups else self._idle_steps + 1
        if self.grpo.max_idle_steps is not None and self._idle_steps >= self.grpo.max_idle_steps:
            raise UsageError(f"RL stopped at rollout step {step}: {self._idle_steps} steps in a row kept no group "
                             f"whose samples scored differently (reward/mean {metrics['reward/mean']:+.2f}), so "
                             "nothing was learnt; the prompts are too easy or too hard for this policy (astro "
                             "select-prompts picks them by pass rate), or raise --model.grpo.max_idle_steps")
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
            max_extra_draws=self.grpo.max_extra_draws, engine_group=self._engine_group,
            step_rewards=self.step_rewards, decode=self._decode)

    def _decode(self, token_ids: list[int]) -> str:
        """A completion's text as the engine writes it (special tokens skipped), for placing step rewards."""
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    # ---- the update ---------------------------------------------------------------------------------------------

    def _policy_forward(self, model: torch.nn.Module) -> PolicyForward:
        return PolicyForward(model, self.sampling.temperature, self.compute_dtype if self._autocast else None,
                             self.grpo.pack_sequences, self.tokenizer.pad_token_id)

    def _update(self, groups: list[Group], step: int) -> dict[str, float]:
        exp = build_experience(groups, self.grpo, self.tokenizer.pad_token_id, self.device)
        reference = self._policy_forward(self.reference) if self.grpo.beta > 0 else None
        scale = UpdateScale(self.grpo.constant_normalizer or float(self.sampling.max_tokens), self.trainer.world_size)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "minibatch-order", step))
        try:
            result = policy_update(self._policy_forward(self.model), reference, exp, self.grpo, self.optimizers(),
                                   self.lr_schedulers(), self.manual_backward, scale, generator)
        except UpdateFailure as failure:
            self._version += failure.optimizer_steps
            self._fail(f"{failure} at step {step} (optimiser step {self.global_step})", None)
        self._version += result.optimizer_steps
        return result.metrics

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
