"""GPU check of the training paths at a realistic shape: SFT step MFU and tokens/s, RL update time, peak memory.

A randomly initialised Llama-3.2-1B-shaped model (16 layers, d 2048, GQA 32/8 heads, vocab 128256, tied embeddings;
about 1.24B parameters) runs through the real `SFTModule` under Lightning's `ModelParallelStrategy` (FSDP2 on one
GPU, float32 master weights, bf16 compute) on packed rows of `--seq_len` tokens built by the real packing code
from random-length examples. Then the real `RLModule` update (clipped-ratio loss, backward, AdamW) runs on synthetic
rollouts with mixed rewards: no engine, so it times the loss/update half of an RL step, not generation.

MFU = (6 * params + 12 * layers * d_model * attended) * tokens/s / peak bf16 FLOP/s, with `attended` the
token-weighted mean example length (packed examples do not attend to each other, so the row length would overstate
it). Peak: H100/H200 SXM 989e12, H100 PCIe 756e12, A100 312e12 (`--peak_tflops` to override).

    bench/gpu_check.sh                                  # on a GPU machine: one JSON line, under 8 minutes
    .venv/bin/python bench/gpu_check.py --smoke          # CPU, tiny sizes: checks the script itself
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.strategies import ModelParallelStrategy  # noqa: E402
from torch.utils.data import DataLoader, IterableDataset  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from astro_pl.datamodules.packing import collate_packed, pack_best_fit  # noqa: E402
from astro_pl.modules.experience import Group, GroupBuffer  # noqa: E402
from astro_pl.modules.optim import OptimArgs  # noqa: E402
from astro_pl.modules.rl import GRPOArgs, RLModule  # noqa: E402
from astro_pl.modules.sft import SFTModule  # noqa: E402
from astro_pl.modules.tiny_llama import train_tokenizer  # noqa: E402
from astro_pl.rollout.base import Completion, SamplingArgs  # noqa: E402

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
    # RLModule loads a tokenizer with the model (only its pad id is used here): a small local one
    train_tokenizer([f"Evaluate {i} + {i * 7}." for i in range(200)], out_dir, vocab_size=300)
    return out_dir, config, params


def packed_batches(num_rows: int, seq_len: int, batch_size: int, vocab: int, seed: int) -> list[dict]:
    """Random-token examples of length seq_len/8..seq_len, best-fit packed into rows, collated `batch_size` rows."""
    rng = random.Random(seed)
    examples = []
    while sum(len(e["input_ids"]) for e in examples) < num_rows * seq_len * 0.97:
        ids = torch.randint(3, vocab, (rng.randint(seq_len // 8, seq_len),))
        examples.append({"input_ids": ids, "labels": ids.clone()})
    rows = pack_best_fit([len(e["input_ids"]) for e in examples], seq_len)
    rows = [[examples[i] for i in row] for row in rows]
    return [collate_packed(rows[i:i + batch_size], pad_id=0) for i in range(0, len(rows) - batch_size + 1,
                                                                               batch_size)]


class Forever(IterableDataset):
    def __init__(self, items: list) -> None:
        self.items = items

    def __iter__(self):
        while True:
            yield from self.items


class StepTimer(L.Callback):
    """Wall time of each training step after `warmup` steps, the device synchronised at both ends."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.times, self.tokens, self.metrics = warmup, [], 0, []

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sync()
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync()
        if batch_idx >= self.warmup:
            self.times.append(time.perf_counter() - self.start)
            self.tokens += int(batch["num_tokens"]) if isinstance(batch, dict) else 0
            self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def trainer(steps: int, timer: StepTimer) -> L.Trainer:
    return L.Trainer(accelerator="gpu" if torch.cuda.is_available() else "cpu", devices=1, max_steps=steps,
                     strategy=ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1),
                     precision="32-true", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, use_distributed_sampler=False, callbacks=[timer])


def peak_memory_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # CPU: the process's peak RSS


def reset_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def sft_check(model_dir: Path, config: LlamaConfig, params: int, args) -> dict:
    batches = packed_batches(args.batch_size * (args.warmup + args.steps), args.seq_len, args.batch_size,
                             config.vocab_size, seed=0)
    lengths = [int(n) for b in batches for n in torch.unique_consecutive(b["position_ids"].eq(0).cumsum(1).flatten(),
                                                                          return_counts=True)[1]]
    attended = sum(n * n for n in lengths) / sum(lengths)
    compute = "bfloat16" if torch.cuda.is_available() else "float32"
    module = SFTModule(str(model_dir), dtype="float32", compute_dtype=compute, attn_implementation=args.attn,
                       gradient_checkpointing=args.gradient_checkpointing, optim=OptimArgs(lr=1e-5, warmup_ratio=0.0))
    timer = StepTimer(args.warmup)
    reset_memory()
    trainer(args.warmup + args.steps, timer).fit(module, DataLoader(Forever(batches), batch_size=None))
    seconds = sum(timer.times)
    tokens_per_s = timer.tokens / seconds
    achieved = flops_per_token(params, config.num_hidden_layers, config.hidden_size, attended) * tokens_per_s
    peak = peak_flops(args.device_name, args.peak_tflops)
    result = {
        "sft_tokens_per_s": round(tokens_per_s, 1),
        "sft_step_s": round(seconds / len(timer.times), 4),
        "sft_tflops": round(achieved / 1e12, 2),
        "sft_mfu": round(achieved / peak, 4) if peak else None,
        "sft_padding_fraction": round(1 - timer.tokens / (len(timer.times) * args.batch_size * args.seq_len), 4),
        "sft_attended_tokens": round(attended, 1),
        "sft_loss_last": round(timer.metrics[-1]["train/loss"], 4),
        "sft_peak_mem_gib": round(peak_memory_gib(), 2),
    }
    del module, timer
    return result


class SyntheticRolloutRL(RLModule):
    """`RLModule` whose rollouts are made up (random tokens, mixed rewards) so only the update is timed."""

    def setup(self, stage: str) -> None:
        pass  # no engine

    def _sync(self) -> float:
        return 0.0

    def _collect(self, dataloader_iter, step: int):
        next(dataloader_iter)
        g, args = self.grpo.group_size, self.bench_args
        gen = torch.Generator().manual_seed(step)
        buffer = GroupBuffer()
        groups = []
        for _ in range(args.rl_prompts):
            prompt = torch.randint(3, args.vocab, (args.rl_prompt_len,), generator=gen).tolist()
            completions = []
            for _ in range(g):
                n = int(torch.randint(args.rl_response_len // 4, args.rl_response_len + 1, (1,), generator=gen))
                ids = torch.randint(3, args.vocab, (n,), generator=gen).tolist()
                completions.append(Completion("", ids, [-2.0] * n, "stop"))
            rewards = [1.0 if i % 2 else -1.0 for i in range(g)]
            groups.append(Group(prompt, completions, rewards, "0"))
        buffer.add(groups, [True] * len(groups))
        return buffer, 0.0, 0.0, sum(len(c.token_ids) for grp in groups for c in grp.completions)


class PromptStub(L.LightningDataModule):
    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(Forever([[None] * self.batch_size]), batch_size=None)


def rl_check(model_dir: Path, config: LlamaConfig, args) -> dict:
    args.vocab = config.vocab_size
    grpo = GRPOArgs(group_size=args.rl_group_size, micro_batch_size=args.rl_micro_batch, aggregation="token_mean")
    module = SyntheticRolloutRL(str(model_dir), engine="hf", grpo=grpo,
                                sampling=SamplingArgs(max_tokens=args.rl_response_len),
                                optim=OptimArgs(lr=1e-6, warmup_ratio=0.0))
    module.bench_args = args
    timer = StepTimer(1)
    reset_memory()
    trainer(1 + args.rl_steps, timer).fit(module, datamodule=PromptStub(args.rl_prompts))
    train_s = [m["time/train_s"] for m in timer.metrics]
    return {
        "rl_update_s": round(sum(train_s) / len(train_s), 4),
        "rl_sequences": args.rl_prompts * args.rl_group_size,
        "rl_loss_last": round(timer.metrics[-1]["train/loss"], 6),
        "rl_peak_mem_gib": round(peak_memory_gib(), 2),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny model, short rows, CPU-sized (tests the script)")
    p.add_argument("--seq_len", type=int, default=8192)
    p.add_argument("--batch_size", type=int, default=2, help="packed rows per step")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--attn", default=None, help="attention implementation (default: flash_attention_2 if installed)")
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--peak_tflops", type=float, default=None, help="override the detected bf16 peak")
    p.add_argument("--rl_prompts", type=int, default=8)
    p.add_argument("--rl_group_size", type=int, default=8)
    p.add_argument("--rl_prompt_len", type=int, default=256)
    p.add_argument("--rl_response_len", type=int, default=1024)
    p.add_argument("--rl_micro_batch", type=int, default=8)
    p.add_argument("--rl_steps", type=int, default=3)
    args = p.parse_args(argv)
    if args.smoke:
        args.seq_len, args.batch_size, args.warmup, args.steps = 256, 2, 1, 2
        args.rl_prompts, args.rl_group_size, args.rl_prompt_len, args.rl_response_len = 2, 4, 16, 32
        args.rl_micro_batch, args.rl_steps = 4, 1
    if args.attn is None:
        try:
            import flash_attn  # noqa: F401

            args.attn = "flash_attention_2" if torch.cuda.is_available() else "sdpa"
        except ImportError:
            args.attn = "sdpa"
    args.device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, config, params = build_model("smoke" if args.smoke else "1b", args.seq_len, Path(tmp) / "model")
        result = {"bench": "gpu_check", "device": args.device_name, "params": params, "seq_len": args.seq_len,
                  "batch_rows": args.batch_size, "attn": args.attn, "torch": torch.__version__,
                  "peak_bf16_tflops": (peak_flops(args.device_name, args.peak_tflops) or 0) / 1e12 or None}
        result.update(sft_check(model_dir, config, params, args))
        result.update(rl_check(model_dir, config, args))
    result["wall_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
