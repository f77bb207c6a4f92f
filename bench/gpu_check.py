"""GPU check of the training paths at realistic shapes: SFT MFU, the RL update at 8K-token responses, the chunked
log-probs, and a real RL loop (engine, rewards, sync, update) on the GPU.

Sections, each timed on its own and written to `--out` as soon as it ends (a later failure loses nothing):
- `collectives`: which tensors a one-process default group on NCCL (Lightning's backend on GPUs) reduces: a CPU
  tensor, and one on `astro_pl.modules.collectives.collective_device()`, which the RL step's all-reduces use.
- `logprobs`: `token_logprobs_and_entropy` (forward + backward) on bf16 logits [4, 4096, 128256] for several chunk
  sizes, beside the direct `logits.float()` way: time and peak memory above the logits (picks CUDA's chunk size).
- `rl_fit`: `RLModule` with the transformers engine on a tiny Llama for 3 rollout steps, once unsharded (autocast)
  and once under FSDP2 (`ModelParallelStrategy`): float32 master weights, bf16 compute, lr 1e-6. Reports whether
  the weights moved, the engine-vs-trainer log-prob gap, loss, sync and generation time.
- `rl_vllm`: the same loop with `VLLMEngine` (needs vllm) asleep through each update (sleep mode, level 2) and
  synced one layer per bucket: the log-prob gap after two sleep / re-sync cycles, and the GPU memory sleep frees.
- `rl_update`: the real `RLModule` update (gradient checkpointing, clipped-ratio loss, AdamW) of a randomly
  initialised Llama-3.2-1B-shaped model (16 layers, d 2048, GQA 32/8, vocab 128256; 1.24B parameters) on
  synthetic rollouts: 64 responses of log-uniform length 512..8192 after 256-token prompts, micro-batched three
  ways (2 sequences; 8 sequences; 8 sequences capped at 17408 padded tokens, the 8B recipe's setting).
- `sft`: the real `SFTModule` under FSDP2 on one GPU (float32 master weights, bf16 compute) on packed rows of
  `--seq_len` tokens. MFU = (6 * params + 12 * layers * d_model * attended) * tokens/s / peak bf16 FLOP/s, with
  `attended` the token-weighted mean example length. Peak: H100/H200 SXM 989e12, H100 PCIe 756e12, A100 312e12.

    bench/gpu_check.sh --out $OUT/gpu_check.json     # on a GPU machine: one JSON line, under 8 minutes
    .venv/bin/python bench/gpu_check.py --smoke       # CPU, tiny sizes: checks the script itself
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from lightning.pytorch.strategies import ModelParallelStrategy  # noqa: E402
from torch.utils.data import DataLoader, IterableDataset  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from astro_pl.datamodules.packing import collate_packed, pack_best_fit  # noqa: E402
from astro_pl.modules.experience import Group, GroupBuffer, plan_micro_batches  # noqa: E402
from astro_pl.modules.optim import OptimArgs  # noqa: E402
from astro_pl.modules.rl import GRPOArgs, RLModule  # noqa: E402
from astro_pl.modules.rollouts import Rollouts  # noqa: E402
from astro_pl.modules.sft import SFTModule  # noqa: E402
from astro_pl.modules.tiny_llama import train_tokenizer  # noqa: E402
from astro_pl.rollout.base import Completion, EngineArgs, SamplingArgs  # noqa: E402

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
    result = {
        "tokens_per_s": round(tokens_per_s, 1),
        "step_s": round(seconds / len(timer.times), 4),
        "tflops": round(achieved / 1e12, 2),
        "mfu": round(achieved / peak, 4) if peak else None,
        "padding_fraction": round(1 - timer.tokens / (len(timer.times) * args.batch_size * args.seq_len), 4),
        "attended_tokens": round(attended, 1),
        "loss_last": round(timer.metrics[-1]["train/loss"], 4),
        "peak_mem_gib": round(peak_memory_gib(), 2),
    }
    return result


class SyntheticRolloutRL(RLModule):
    """`RLModule` whose rollouts are made up (random tokens, mixed rewards) so only the update is timed."""

    def setup(self, stage: str) -> None:
        pass  # no engine

    def _sync(self) -> float:
        return 0.0

    def _collect(self, dataloader_iter, step: int):
        next(dataloader_iter)
        args = self.bench_args
        gen = torch.Generator().manual_seed(step)
        low, high = math.log(max(1, args.rl_response_len // 16)), math.log(args.rl_response_len)
        buffer, groups = GroupBuffer(), []
        for _ in range(args.rl_prompts):
            prompt = torch.randint(3, args.vocab, (args.rl_prompt_len,), generator=gen).tolist()
            completions = []
            for _ in range(self.grpo.group_size):
                n = round(math.exp(low + (high - low) * float(torch.rand(1, generator=gen))))
                ids = torch.randint(3, args.vocab, (n,), generator=gen).tolist()
                completions.append(Completion("", ids, [-2.0] * n, "stop"))
            rewards = [1.0 if i % 2 else -1.0 for i in range(self.grpo.group_size)]
            groups.append(Group(prompt, completions, rewards, "0"))
        buffer.add(groups, [True] * len(groups))
        self.lengths = [len(g.prompt_ids) + len(c.token_ids) for g in groups for c in g.completions]
        return Rollouts(buffer, {}, 0.0, 0.0, len(groups))


class PromptStub(L.LightningDataModule):
    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(Forever([[None] * self.batch_size]), batch_size=None)


RL_MICRO_BATCHING = {"seqs2": (2, None), "seqs8": (8, None), "seqs8_tokens17408": (8, 17408)}


def rl_update_check(model_dir: Path, config: LlamaConfig, args, name: str) -> dict:
    """One micro-batching of the update: mean seconds per update after one warm-up, passes, peak memory."""
    args.vocab = config.vocab_size
    size, tokens = RL_MICRO_BATCHING[name]
    if args.smoke:  # responses of <= 64 tokens: a cap that still splits them
        tokens = tokens and tokens // 64
    grpo = GRPOArgs(group_size=args.rl_group_size, micro_batch_size=size, micro_batch_tokens=tokens,
                    aggregation="token_mean")
    module = SyntheticRolloutRL(str(model_dir), engine=EngineArgs(kind="hf"), grpo=grpo,
                                gradient_checkpointing=True, sampling=SamplingArgs(max_tokens=args.rl_response_len),
                                optim=OptimArgs(lr=1e-6, warmup_ratio=0.0))
    module.bench_args = args
    timer = StepTimer(1)
    reset_memory()
    trainer(1 + args.rl_steps, timer, profile_path(args, f"rl_update_{name}")).fit(
        module, datamodule=PromptStub(args.rl_prompts))
    train_s = [m["time/train_s"] for m in timer.metrics]
    lengths = torch.tensor(module.lengths)
    return {
        "update_s": round(sum(train_s) / len(train_s), 3),
        "passes": len(plan_micro_batches(lengths, size, tokens)),
        "sequences": len(lengths),
        "tokens": int(lengths.sum()),
        "loss_last": round(timer.metrics[-1]["train/loss"], 6),
        "peak_mem_gib": round(peak_memory_gib(), 2),
    }


def logprobs_check(args) -> dict:
    """Forward + backward of the log-probs and entropies of bf16 logits, per chunk size and the direct way."""
    from astro_pl.modules.logprobs import token_logprobs_and_entropy

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows, positions, vocab = (2, 64, 512) if args.smoke else (4, 4096, 128256)
    torch.manual_seed(0)
    logits = (torch.randn(rows, positions, vocab, device=device, dtype=torch.bfloat16) * 2).requires_grad_()
    labels = torch.randint(0, vocab, (rows, positions), device=device)
    weights = torch.randn(rows, positions, device=device)

    def direct():
        x = logits.float()
        logp = x.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(x, -1)
        full = torch.log_softmax(logits.detach().float(), -1)
        return logp, -(full.exp() * full).sum(-1)

    sides = {"direct": direct}
    for chunk in (1 << 22, 1 << 24, 1 << 26, 1 << 28):
        chunk = chunk >> 12 if args.smoke else chunk
        sides[f"chunk_{chunk}"] = lambda chunk=chunk: token_logprobs_and_entropy(logits, labels, 1.0, chunk)
    result = {"shape": [rows, positions, vocab], "logits_gib": round(logits.numel() * 2 / 2**30, 3)}
    for name, step in sides.items():
        times = []
        reset_memory()
        base = torch.cuda.memory_allocated() if device == "cuda" else 0
        for _ in range(4):  # the first is a warm-up
            logits.grad = None
            sync()
            start = time.perf_counter()
            logp, entropy = step()
            (logp * weights).sum().backward()
            sync()
            times.append(time.perf_counter() - start)
            del logp, entropy
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if device == "cuda" else None
        result[name] = {"ms": round(1000 * statistics.median(times[1:]), 2),
                        "peak_above_logits_gib": peak and round(peak, 3)}
    return result


def alternating(completions: list[str], **kwargs) -> list[float]:
    """A reward alternating -1 / +1 within each (even-sized) group: a randomly initialised model never writes a
    boxed answer, so the task's reward would be -1 everywhere and the update a no-op. Sampling, sync and update stay
    real."""
    return [1.0 if i % 2 else -1.0 for i in range(len(completions))]


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
    from astro_pl.modules.tiny_llama import build_tiny_llama

    model_dir = root / "tiny_model"
    if not model_dir.exists():
        train_tokenizer([f"Evaluate {i} + {i * 7} - {i % 5}. \\boxed{{{i}}}" for i in range(500)], root / "tok",
                        vocab_size=512)
        build_tiny_llama(root / "tok", model_dir, seed=0)
    return model_dir


def rl_fit_check(root: Path, args, sharded: bool, engine: str = "hf") -> dict:
    """Three rollout steps of `RLModule` on a tiny Llama on the GPU, with the transformers engine, or with vLLM
    sleeping through each update (level 2: the weights are dropped and synced back before the next rollout)."""
    from astro_pl.datamodules.prompts import PromptDataModule
    from astro_pl.rollout import build_engine
    from astro_pl.tasks import ArithmeticTask

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


def collectives_probe() -> dict:
    """One-process default group on the backend Lightning picks (NCCL on GPUs): which tensors can be reduced."""
    import socket

    import torch.distributed as dist

    from astro_pl.modules.collectives import collective_device

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(0)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    result = {"backend": backend}
    for name, device in (("cpu_tensor", torch.device("cpu")), ("collective_device", collective_device())):
        try:
            value = torch.ones(1, dtype=torch.float64, device=device)
            dist.all_reduce(value)
            result[name] = "ok"
        except Exception as error:  # noqa: BLE001 - the error is the finding
            result[name] = repr(error)[:300]
    dist.destroy_process_group()
    return result


def collectives_check() -> dict:
    """`collectives_probe` in a fresh process (the sections before it may have left a process group behind)."""
    out = subprocess.run([sys.executable, __file__, "--collectives_probe"], capture_output=True, text=True,
                         timeout=120)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"probe printed no result (exit {out.returncode}): {out.stderr[-500:]}")
    return json.loads(lines[-1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny model, short rows, CPU-sized (tests the script)")
    p.add_argument("--out", type=Path, default=None, help="also write the result here after every section")
    p.add_argument("--sections", default="collectives,logprobs,rl_fit,rl_vllm,rl_update,sft",
                   help="comma-separated, run in order")
    p.add_argument("--profile", type=Path, default=None,
                   help="folder: write the operators of the last step of each training section there")
    p.add_argument("--rl_micro_batching", default=",".join(RL_MICRO_BATCHING),
                   help=f"comma-separated, of {', '.join(RL_MICRO_BATCHING)}")
    p.add_argument("--collectives_probe", action="store_true", help=argparse.SUPPRESS)
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
    p.add_argument("--rl_response_len", type=int, default=8192)
    p.add_argument("--rl_steps", type=int, default=2)
    args = p.parse_args(argv)
    if args.smoke:
        args.seq_len, args.batch_size, args.warmup, args.steps = 256, 2, 1, 2
        args.rl_prompts, args.rl_group_size, args.rl_prompt_len, args.rl_response_len = 2, 4, 16, 64
        args.rl_steps = 1
    if args.attn is None:  # the fastest for packed rows that is there: flash-attn varlen, else flex (an H200:
        # 1.48x sdpa's tokens/s, whose dense block mask costs packed rows half their time), else sdpa on CPU
        try:
            import flash_attn  # noqa: F401

            args.attn = "flash_attention_2" if torch.cuda.is_available() else "sdpa"
        except ImportError:
            args.attn = "flex_attention" if torch.cuda.is_available() else "sdpa"
    args.device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.collectives_probe:
        print(json.dumps(collectives_probe()))
        return {}
    start = time.perf_counter()
    result = {"bench": "gpu_check", "device": args.device_name, "torch": torch.__version__,
              "transformers": transformers.__version__, "lightning": L.__version__, "attn": args.attn,
              "peak_bf16_tflops": (peak_flops(args.device_name, args.peak_tflops) or 0) / 1e12 or None}

    def record(name: str, run) -> None:
        """Runs one section; its result or its error goes in `result[name]`, then to --out."""
        began = time.perf_counter()
        print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
        try:
            result[name] = run()
        except Exception as error:  # noqa: BLE001 - one broken section must not lose the others
            traceback.print_exc()
            result[name] = {"error": repr(error)[:500]}
        result[name]["section_s"] = round(time.perf_counter() - began, 1)
        reset_memory()
        if args.out:
            args.out.write_text(json.dumps(result) + "\n")

    sections = args.sections.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if "collectives" in sections:
            record("collectives", collectives_check)
        if "logprobs" in sections:
            record("logprobs", lambda: logprobs_check(args))
        if "rl_fit" in sections:
            record("rl_fit_unsharded", lambda: rl_fit_check(root, args, sharded=False))
            record("rl_fit_fsdp2", lambda: rl_fit_check(root, args, sharded=True))
        if "rl_vllm" in sections:
            record("rl_fit_vllm_sleep", lambda: rl_fit_check(root, args, sharded=False, engine="vllm"))
        if {"rl_update", "sft"} & set(sections):
            model_dir, config, params = build_model("smoke" if args.smoke else "1b", args.seq_len, root / "model")
            result.update(params=params, seq_len=args.seq_len, batch_rows=args.batch_size)
        if "rl_update" in sections:
            for name in args.rl_micro_batching.split(","):
                record(f"rl_update_{name}", lambda name=name: rl_update_check(model_dir, config, args, name))
        if "sft" in sections:
            record("sft", lambda: sft_check(model_dir, config, params, args))
    result["wall_s"] = round(time.perf_counter() - start, 1)
    if args.out:
        args.out.write_text(json.dumps(result) + "\n")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
