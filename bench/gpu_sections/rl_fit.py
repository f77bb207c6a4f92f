"""Sections `rl_fit` and `rl_vllm`: a real RL loop (engine, rewards, sync, update) of `RLModule` on a tiny Llama.

`rl_fit` runs 3 rollout steps with the transformers engine, once unsharded (autocast) and once under FSDP2
(`ModelParallelStrategy`): float32 master weights, bf16 compute on a GPU, lr 1e-6. `rl_vllm` runs the same loop with
`VLLMEngine` asleep through each update (sleep mode, level 2) and synced one layer per bucket. Each reports whether
the weights moved, the engine-vs-trainer log-prob gap, loss, sync and generation time; `rl_vllm` also the GPU memory
sleep frees.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from transformers import LlamaForCausalLM

from astro_pl.datamodules.prompts import PromptDataModule
from astro_pl.modules.optim import OptimArgs
from astro_pl.modules.rl import GRPOArgs, RLModule
from astro_pl.modules.tiny_llama import build_tiny_llama, train_tokenizer
from astro_pl.rollout import build_engine
from astro_pl.rollout.base import EngineArgs, SamplingArgs
from astro_pl.tasks import ArithmeticTask
from gpu_sections.common import StepTimer, alternating


class FreeMemoryProbe:
    """The engine, recording free GPU memory after each generation (engine awake); a forward pre-hook on the policy
    records it during the update (engine asleep)."""

    def __init__(self, engine):
        self.engine, self.after_generate, self.in_update = engine, [], []

    def generate(self, prompts, params):
        out = self.engine.generate(prompts, params)
        self.after_generate.append(free_gpu_bytes())
        return out

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def hook(self, _module, _inputs) -> None:
        self.in_update.append(free_gpu_bytes())


def free_gpu_bytes() -> int:
    return torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else 0


def tiny_model(root: Path) -> Path:
    model_dir = root / "tiny_model"
    if not model_dir.exists():
        train_tokenizer([f"Evaluate {i} + {i * 7} - {i % 5}. \\boxed{{{i}}}" for i in range(500)], root / "tok",
                        vocab_size=512)
        build_tiny_llama(root / "tok", model_dir, seed=0)
    return model_dir


def rl_fit_check(root: Path, args, sharded: bool, engine: str = "hf") -> dict:
    """Three rollout steps of `RLModule` on a tiny Llama, with the transformers engine, or with vLLM sleeping
    through each update (level 2: the weights are dropped and synced back before the next rollout)."""
    model_dir = tiny_model(root)
    cuda = torch.cuda.is_available()
    # eager: the section checks sleep and sync, and compiling plus CUDA-graph capture would cost a minute
    engine_args = EngineArgs(kind=engine, model=str(model_dir), dtype="auto", max_model_len=256,
                             gpu_memory_utilization=0.2, enable_sleep_mode=True, enforce_eager=True)
    # one layer per sync bucket, so vLLM's in-place reload runs layer by layer, as it does at 8B
    module = RLModule(str(model_dir), engine=engine_args, rewards=[alternating], sleep_engine=engine == "vllm",
                      sync_bucket_mb=1e-6,
                      grpo=GRPOArgs(group_size=4, micro_batch_size=8),
                      sampling=SamplingArgs(max_tokens=64, temperature=1.0),
                      optim=OptimArgs(lr=1e-6, warmup_ratio=0.0))
    probe = FreeMemoryProbe(build_engine(engine_args))
    module.attach_engine(probe)
    module.configure_model()
    module.model.register_forward_pre_hook(probe.hook)
    data = PromptDataModule(ArithmeticTask(num_train=64, num_val=4), batch_size=4)
    timer = StepTimer(1)
    strategy = ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1) if sharded else "auto"
    L.Trainer(accelerator="gpu" if cuda else "cpu", devices=1, max_steps=3, strategy=strategy,
              logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              limit_val_batches=0, callbacks=[timer]).fit(module, datamodule=data)
    probe.close()
    base = LlamaForCausalLM.from_pretrained(model_dir).state_dict()
    moved, dtypes = [], set()
    for name, param in module.model.named_parameters():
        full = param.full_tensor() if hasattr(param, "full_tensor") else param
        dtypes.add(str(full.dtype))
        if name.endswith("proj.weight"):
            moved.append((full.detach().cpu() != base[name]).float().mean().item())
    last = timer.metrics[-1]
    result = {
        "master_dtypes": sorted(dtypes),
        "proj_weights_moved_frac": round(sum(moved) / len(moved), 4),
        # after two sleeps the engine runs on synced weights only: a lost or stale weight shows as a large gap
        "engine_logp_gap": round(last.get("train/engine_logp_gap", float("nan")), 5),
        "loss_last": round(last["train/loss"], 6),
        "generate_s": round(last["time/generate_s"], 3),
        "sync_s": round(last["time/sync_s"], 4),
        "train_s": round(last["time/train_s"], 4),
    }
    if engine == "vllm":
        # the least free memory seen in any update pass against the most seen after any generation
        result["sleep_freed_gib"] = round((min(probe.in_update) - max(probe.after_generate)) / 2**30, 2)
    return result
