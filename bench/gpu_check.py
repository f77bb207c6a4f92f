"""GPU check of the training paths at realistic shapes: SFT MFU, the RL update at 8K-token responses, the chunked
log-probs, and a real RL loop (engine, rewards, sync, update) on the GPU.

Sections (`bench/gpu_sections/`, one module each), each timed on its own and written to `--out` as soon as it ends
(a later failure loses nothing):
- `collectives`: which tensors a one-process default group on NCCL reduces (the RL step's all-reduces).
- `logprobs`: the chunked log-probs and entropies of bf16 logits [4, 4096, 128256] per chunk size, and directly.
- `rl_fit`: `RLModule` with the transformers engine on a tiny Llama for 3 rollout steps, unsharded and under FSDP2.
- `rl_vllm`: the same loop with `VLLMEngine` (needs vllm) asleep through each update, synced one layer per bucket.
- `rl_update`: the real `RLModule` update of a randomly initialised Llama-3.2-1B-shaped model (16 layers, d 2048,
  GQA 32/8, vocab 128256; 1.24B parameters) on made-up rollouts: 64 responses of log-uniform length 512..8192 after
  256-token prompts, micro-batched three ways (2 sequences; 8 sequences; 8 sequences capped at 17408 padded
  tokens, the 8B recipe's setting).
- `sft`: the real `SFTModule` under FSDP2 on packed rows of `--seq_len` tokens: MFU against the bf16 peak
  (H100/H200 SXM 989e12, H100 PCIe 756e12, A100 312e12).

    bench/gpu_check.sh --out $OUT/gpu_check.json     # on a GPU machine: one JSON line, under 8 minutes
    .venv/bin/python bench/gpu_check.py --smoke       # CPU, tiny sizes: checks the script itself
"""

from __future__ import annotations

import argparse
import json
import os
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
from gpu_sections.collectives import collectives_check  # noqa: E402
from gpu_sections.common import build_model, peak_flops, reset_memory  # noqa: E402
from gpu_sections.logprobs import logprobs_check  # noqa: E402
from gpu_sections.rl_fit import rl_fit_check  # noqa: E402
from gpu_sections.rl_update import RL_MICRO_BATCHING, rl_update_check  # noqa: E402
from gpu_sections.sft import sft_check  # noqa: E402


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
