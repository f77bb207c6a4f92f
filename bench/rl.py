"""One RL step, side by side: our RLModule with VLLMEngine, with HFEngine, and TRL's GRPOTrainer.

Same tiny Llama (random weights, ~1M and ~25M parameters), same prompts (synthetic arithmetic), same group size,
batch and completion length, same loss family (GRPO, no KL, one optimiser step per rollout batch), same precision
on every side:
- "bf16": float32 weights with bf16 compute in training. Ours runs exactly what the RL recipes set (precision
  32-true, `dtype: float32`, `compute_dtype: bfloat16`, engine in bf16); TRL runs its default (`bf16=True`:
  autocast over float32 weights, generating with the training model under autocast).
- "fp32": float32 everywhere, the engine included.
Each (size, precision) runs in its own process (a fresh vLLM engine each); the first step of every run is warm-up
(compilation, caches) and the median of the following steps is reported. Engine start and model loading are
outside the step on every side. Prints ONE JSON line:

    {"bench": "rl", "results": {"25M/fp32": {...}, "25M/bf16": {...}, ...}, "goals": {...}}

with, per run, each side's median step seconds and mean response length (sampling differs, so the work done is
shown), our split (sync / generate / reward / train), the speedups over TRL and sync's share of our step.
Goals (issue 5): ours >= 1.5x faster than TRL on 25M, judged in bf16 (`GOAL_PRECISION`: the precision our recipes
and TRL's defaults train in); sync < 5% of the step everywhere. fp32 is reported beside it: there both updates are
the same float32 matrix products at the CPU's peak, so only generation can differ.

    .venv/bin/python bench/rl.py [--steps 6] [--sizes 1M 25M] [--precisions fp32 bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from worker import print_result, run_worker

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

SIZES = {
    "1M": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=2, intermediate_size=384),
    "25M": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, intermediate_size=1376),
}
PROMPTS, GROUP, MAX_TOKENS, LR = 8, 4, 128, 1e-5  # 32 sequences x 128 tokens per step
PRECISIONS = {  # name: (our compute dtype and engine dtype, TRL's bf16 flag); our weights are float32 in both
    "fp32": ("float32", False),
    "bf16": ("bfloat16", True),
}
GOAL_PRECISION = "bf16"


def build_model(root: Path, size: str) -> Path:
    from astro_pl.modules.tiny_llama import build_tiny_llama, train_tokenizer
    from astro_pl.tasks.arithmetic import synthetic_arithmetic

    texts = [f"{p.problem} Compute step by step.\n\n\\boxed{{{p.answer}}}" for p in synthetic_arithmetic(2000)]
    train_tokenizer(texts, root / "tokenizer", vocab_size=512)
    return build_tiny_llama(root / "tokenizer", root / size, seed=0, **SIZES[size])


def run_ours(model_dir: Path, kind: str, steps: int, root: Path, precision: str) -> dict:
    import lightning as L

    from astro_pl.datamodules.prompts import PromptDataModule
    from astro_pl.modules.optim import OptimArgs
    from astro_pl.modules.rl import GRPOArgs, RLModule
    from astro_pl.rollout.base import EngineArgs, SamplingArgs
    from astro_pl.tasks import ArithmeticTask

    records: list[dict] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            records.append({k: float(v) for k, v in trainer.callback_metrics.items()
                            if k.startswith("time/") or k == "rollout/response_len"})

    compute_dtype, _ = PRECISIONS[precision]
    module = RLModule(
        str(model_dir), engine=EngineArgs(kind=kind, max_model_len=512, enforce_eager=False, dtype=compute_dtype),
        sampling=SamplingArgs(max_tokens=MAX_TOKENS, temperature=1.0),
        grpo=GRPOArgs(group_size=GROUP, micro_batch_size=PROMPTS * GROUP, aggregation="seq_mean"),
        optim=OptimArgs(lr=LR, warmup_ratio=0.0, min_lr_ratio=1.0), dtype="float32",
        compute_dtype=compute_dtype,
    )
    data = PromptDataModule(ArithmeticTask(num_train=256), batch_size=PROMPTS)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(root), callbacks=[Record()], precision="32-true")
    trainer.fit(module, datamodule=data)
    measured = records[1:] or records
    split = {k.removeprefix("time/").removesuffix("_s"): statistics.median(r[k] for r in measured)
             for k in ("time/sync_s", "time/generate_s", "time/reward_s", "time/train_s", "time/step_s")}
    response_len = statistics.mean(r["rollout/response_len"] for r in measured)
    return {"step_s": split.pop("step"), "response_len": response_len, **split}


def run_trl(model_dir: Path, steps: int, root: Path, precision: str) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from astro_pl.data.chat import render_prompt
    from astro_pl.loading import load_tokenizer
    from astro_pl.rewards.math import math_reward
    from astro_pl.tasks.arithmetic import synthetic_arithmetic

    tokenizer = load_tokenizer(str(model_dir))
    rows = [{"prompt": render_prompt(tokenizer, p.problem), "answer": p.answer} for p in synthetic_arithmetic(256)]

    def reward(completions, answer, **_):
        return [math_reward(c, a) for c, a in zip(completions, answer, strict=True)]

    times: list[float] = []
    lengths: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            times.append(time.perf_counter() - self.start)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    config = GRPOConfig(
        output_dir=str(root / "trl"), per_device_train_batch_size=PROMPTS * GROUP, num_generations=GROUP,
        max_completion_length=MAX_TOKENS, max_steps=steps, learning_rate=LR, lr_scheduler_type="constant",
        loss_type="grpo", beta=0.0, use_cpu=True, report_to="none", logging_steps=1, save_strategy="no",
        temperature=1.0, seed=0, bf16=PRECISIONS[precision][1], disable_tqdm=True,
    )
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="float32")
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer, callbacks=[Timer()])
    trainer.train()
    return {"step_s": statistics.median(times[1:] or times), "response_len": statistics.mean(lengths[1:] or lengths)}


def worker(size: str, precision: str, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = build_model(root, size)
        from transformers import AutoConfig, AutoModelForCausalLM

        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
                     .parameters())
        trl = run_trl(model_dir, steps, root, precision)
        hf = run_ours(model_dir, "hf", steps, root / "hf", precision)
        vllm = run_ours(model_dir, "vllm", steps, root / "vllm", precision)
    return {
        "params": params, "trl": trl, "ours_hf": hf, "ours_vllm": vllm,
        "speedup_vllm_vs_trl": trl["step_s"] / vllm["step_s"],
        "speedup_hf_vs_trl": trl["step_s"] / hf["step_s"],
        "sync_frac_vllm": vllm["sync"] / vllm["step_s"],
        "sync_frac_hf": hf["sync"] / hf["step_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="steps per side; the first is warm-up")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    parser.add_argument("--worker", nargs=2, metavar=("SIZE", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print_result(worker(*args.worker, args.steps))
        return
    results = {}
    for size in args.sizes:
        for precision in args.precisions:
            results[f"{size}/{precision}"] = run_worker(
                __file__, ["--worker", size, precision, "--steps", str(args.steps)], f"worker for {size}/{precision}")
            print(f"{size}/{precision}: {results[f'{size}/{precision}']}", file=sys.stderr, flush=True)
    goals = {f"vllm_speedup_{key}_ge_1.5": r["speedup_vllm_vs_trl"] >= 1.5
             for key, r in results.items() if key == f"25M/{GOAL_PRECISION}"}
    goals["sync_frac_lt_0.05"] = all(r["sync_frac_vllm"] < 0.05 for r in results.values())
    print(json.dumps({"bench": "rl", "prompts": PROMPTS, "group": GROUP, "max_tokens": MAX_TOKENS,
                      "results": results, "goals": goals}))


if __name__ == "__main__":
    main()
