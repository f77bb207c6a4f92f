"""What the sections of `bench/gpu_check.py` share: model shapes and FLOP arithmetic, a random-init model on disk,
step timing and profiling callbacks, the one-GPU FSDP2 trainer, memory counters, and the bench's reward."""

from __future__ import annotations

import gc
import resource
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.utils.data import IterableDataset
from transformers import LlamaConfig, LlamaForCausalLM

from astro_pl.modules.tiny_llama import train_tokenizer

PEAK_BF16 = [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("A100", 312e12)]

SHAPES = {  # Llama-3.2-1B and a CPU-sized stand-in with the same structure
    "1b": dict(vocab_size=128256, hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, intermediate_size=8192, tie_word_embeddings=True, rope_theta=500000.0),
    "smoke": dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, intermediate_size=128, tie_word_embeddings=True),
}


def peak_flops(device_name: str, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    return next((flops for key, flops in PEAK_BF16 if key in device_name), None)


def flops_per_token(params: int, layers: int, d_model: int, attended: float) -> float:
    """Training FLOPs per token: 6N for the matmuls of forward + backward, plus attention scores and values."""
    return 6 * params + 12 * layers * d_model * attended


def build_model(shape: str, max_len: int, out_dir: Path) -> tuple[Path, LlamaConfig, int]:
    """Writes a random-init Llama of `shape` in HF format (bf16 on disk); returns its path, config, params."""
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=max_len, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out_dir)
    del model
    # the modules load a tokenizer with the model (RL renders its prompts with it): a small local one, digits one
    # per token
    train_tokenizer([f"Evaluate {i} + {i * 7}." for i in range(200)], out_dir, vocab_size=300)
    return out_dir, config, params


def alternating(completions: list[str], **kwargs) -> list[float]:
    """A reward alternating -1 / +1 within each (even-sized) group: a randomly initialised model never writes a
    boxed answer, so the task's reward would be -1 everywhere and the update a no-op. Sampling, sync and update stay
    real."""
    return [1.0 if i % 2 else -1.0 for i in range(len(completions))]


class Forever(IterableDataset):
    def __init__(self, items: list) -> None:
        self.items = items

    def __iter__(self):
        while True:
            yield from self.items


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepTimer(L.Callback):
    """Wall time of each training step after `warmup` steps, the device synchronised at both ends."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.times, self.tokens, self.metrics = warmup, [], 0, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        sync()
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sync()
        if batch_idx >= self.warmup:
            self.times.append(time.perf_counter() - self.start)
            self.tokens += int(batch["num_tokens"]) if isinstance(batch, dict) else 0
            self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})


class ProfileLastStep(L.Callback):
    """Profiles the last training step and writes its operators, by device time, to `path`."""

    def __init__(self, last: int, path: Path) -> None:
        self.last, self.path, self.profiler = last, path, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.last:  # batch_idx lags in RL's dataloader_iter steps; one optimiser step each
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.profiler is not None:
            sync()
            self.profiler.__exit__(None, None, None)
            sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
            table = self.profiler.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=70)
            self.path.write_text(table)
            self.profiler = None


def trainer(steps: int, timer: StepTimer, profile: Path | None = None) -> L.Trainer:
    """One device under FSDP2 (`ModelParallelStrategy`), float32 master weights, no logger or checkpoints."""
    callbacks = [timer] if profile is None else [timer, ProfileLastStep(steps - 1, profile)]
    return L.Trainer(accelerator="gpu" if torch.cuda.is_available() else "cpu", devices=1, max_steps=steps,
                     strategy=ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1),
                     precision="32-true", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, use_distributed_sampler=False, callbacks=callbacks)


def peak_memory_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # CPU: the process's peak RSS


def profile_path(args, section: str) -> Path | None:
    return args.profile / f"profile_{section}.txt" if args.profile else None


def reset_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
