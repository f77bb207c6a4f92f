"""Section `sft`: the real `SFTModule` under FSDP2 on one device (float32 master weights, bf16 compute on a GPU) on
packed rows of `--seq_len` random tokens; tokens/s, MFU, padding and peak memory.

MFU = (6 * params + 12 * layers * d_model * attended) * tokens/s / peak bf16 FLOP/s, with `attended` the
token-weighted mean example length (packed examples attend only within themselves).
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import LlamaConfig

from astro_pl.datamodules.packing import collate_packed, pack_best_fit
from astro_pl.modules.optim import OptimArgs
from astro_pl.modules.sft import SFTModule
from gpu_sections.common import (
    Forever,
    StepTimer,
    flops_per_token,
    peak_flops,
    peak_memory_gib,
    profile_path,
    reset_memory,
    trainer,
)


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
    trainer(args.warmup + args.steps, timer, profile_path(args, "sft")).fit(
        module, DataLoader(Forever(batches), batch_size=None))
    seconds = sum(timer.times)
    tokens_per_s = timer.tokens / seconds
    achieved = flops_per_token(params, config.num_hidden_layers, config.hidden_size, attended) * tokens_per_s
    peak = peak_flops(args.device_name, args.peak_tflops)
    return {
        "tokens_per_s": round(tokens_per_s, 1),
        "step_s": round(seconds / len(timer.times), 4),
        "tflops": round(achieved / 1e12, 2),
        "mfu": round(achieved / peak, 4) if peak else None,
        "padding_fraction": round(1 - timer.tokens / (len(timer.times) * args.batch_size * args.seq_len), 4),
        "attended_tokens": round(attended, 1),
        "loss_last": round(timer.metrics[-1]["train/loss"], 4),
        "peak_mem_gib": round(peak_memory_gib(), 2),
    }
