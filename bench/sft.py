"""SFT training throughput: our SFTModule + TraceDataModule (packed rows) vs TRL's SFTTrainer (padded batches).

Same tiny Llama (~25M parameters, built locally), same rendered traces, same batch size (rows of `--seq_len`
tokens), same AdamW settings and float32 on CPU (bf16 on GPU), in one process. Counts real (non-padding) tokens
per second of training steps after `--warmup` steps. Prints ONE JSON line with both and their ratio
(goal: ours >= 1.3x).

    .venv/bin/python bench/sft.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

import lightning as L  # noqa: E402
import torch  # noqa: E402

from astro_pl.data.chat import render_example  # noqa: E402
from astro_pl.datamodules.traces import TraceDataModule  # noqa: E402
from astro_pl.loading import load_tokenizer  # noqa: E402
from astro_pl.modules.optim import OptimArgs  # noqa: E402
from astro_pl.modules.sft import SFTModule  # noqa: E402
from astro_pl.modules.tiny_llama import build_tiny_llama, train_tokenizer  # noqa: E402


def synthetic_traces(n: int, seed: int) -> list[dict]:
    """Arithmetic traces with 1-12 steps, so lengths vary as search traces do."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        nums = [rng.randint(1, 99) for _ in range(rng.randint(2, 6))]
        steps = [f"Compute {a} + {b} = {a + b}. But wait, are we solving the problem correctly so far?"
                 for a, b in zip(nums, nums[1:], strict=False)] * rng.randint(1, 3)
        trace = "\n\n".join(steps + [f"The answer is \\boxed{{{sum(nums)}}}."])
        records.append({"problem_id": str(i), "problem": f"Evaluate {' + '.join(map(str, nums))}.", "trace": trace})
    return records


class StepTimer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.tokens, self.seconds = warmup, 0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step > self.warmup:
            self.seconds += time.perf_counter() - self.start
            self.tokens += int(batch["num_tokens"])


def run_ours(model_dir: Path, data: Path, args) -> dict:
    module = SFTModule(model_path=str(model_dir), optim=OptimArgs(lr=args.lr, warmup_ratio=0.1), max_grad_norm=1.0)
    dm = TraceDataModule(tokenizer_path=str(model_dir), train_file=str(data), max_seq_len=args.seq_len,
                         batch_size=args.batch_size, cache_dir=str(data.parent / "cache"))
    timer = StepTimer(args.warmup)
    trainer = L.Trainer(accelerator="auto", devices=1, max_steps=args.warmup + args.steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[timer], precision="32-true")
    trainer.fit(module, dm)
    return {"tokens_per_sec": timer.tokens / timer.seconds, "tokens": timer.tokens, "seconds": timer.seconds}


def run_trl(model_dir: Path, data: Path, args) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    tokenizer = load_tokenizer(str(model_dir))
    records = [json.loads(line) for line in data.open()]
    texts = ["".join(render_example(tokenizer, r["problem"], r["trace"])) for r in records]
    dataset = Dataset.from_dict({"text": texts})

    class Timer(TrainerCallback):
        tokens, seconds = 0, 0.0

        def on_step_begin(self, a, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            if state.global_step > args.warmup:
                self.seconds += time.perf_counter() - self.start

    timer = Timer()
    config = SFTConfig(
        output_dir=str(data.parent / "trl"), per_device_train_batch_size=args.batch_size, max_length=args.seq_len,
        max_steps=args.warmup + args.steps, learning_rate=args.lr, lr_scheduler_type="cosine",
        warmup_steps=math.ceil(0.1 * (args.warmup + args.steps)),  # = our warmup_ratio 0.1
        optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0, max_grad_norm=1.0,
        report_to=[], save_strategy="no", logging_steps=1, dataloader_num_workers=0, packing=False,
        use_cpu=not torch.cuda.is_available(), bf16=False, seed=0, dataset_text_field="text",
    )
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[timer])
    real_tokens = []
    collator = trainer.data_collator

    def counting(features):  # the real tokens of each padded batch TRL trains on
        batch = collator(features)
        mask = batch.get("attention_mask")
        real_tokens.append(int(mask.sum()) if mask is not None else batch["input_ids"].numel())
        return batch

    trainer.data_collator = counting
    trainer.train()
    timed = sum(real_tokens[args.warmup : args.warmup + args.steps])
    return {"tokens_per_sec": timed / timer.seconds, "tokens": timed, "seconds": timer.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=400)
    parser.add_argument("--seq_len", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--lr", type=float, default=3e-4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        records = synthetic_traces(args.examples, seed=0)
        data = root / "traces.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in records))
        train_tokenizer([r["problem"] + " " + r["trace"] for r in records], root / "tok", vocab_size=512)
        model_dir = build_tiny_llama(root / "tok", root / "model", hidden_size=512, num_hidden_layers=8,
                                     num_attention_heads=8, intermediate_size=1408)
        from safetensors.torch import load_file

        params = sum(t.numel() for t in load_file(str(model_dir / "model.safetensors")).values()) / 1e6
        ours = run_ours(model_dir, data, args)
        trl = run_trl(model_dir, data, args)
    print(json.dumps({
        "bench": "sft_tokens_per_sec", "device": "cuda" if torch.cuda.is_available() else "cpu",
        "model_params_m": round(params, 1), "seq_len": args.seq_len, "batch_size": args.batch_size, "steps": args.steps,
        "ours_tokens_per_sec": round(ours["tokens_per_sec"], 1), "trl_tokens_per_sec": round(trl["tokens_per_sec"], 1),
        "ratio": round(ours["tokens_per_sec"] / trl["tokens_per_sec"], 3),
        "ours": "packed rows (best-fit), sdpa", "trl": "SFTTrainer packing=False (padded batches)",
    }))


if __name__ == "__main__":
    main()
