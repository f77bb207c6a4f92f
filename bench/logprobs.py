"""Memory and time of the RL update's log-prob + entropy step, side by side with TRL's and the direct way.

Input: bf16 logits [N, T, V] at Llama 3's vocabulary (the update's largest tensor), labels, and a weighted sum of
the log-probs as the loss. Each side computes the log-probs (with gradient) and the entropies (for logging), then
runs backward to the logits:
- "direct": `logits.float()`, log-sum-exp, gather; entropy from `log_softmax` (what we did before),
- "trl": TRL's `selective_log_softmax` and `entropy_from_logits` (their CPU paths; on GPUs TRL has a Triton kernel),
- "ours": `astro_pl.modules.logprobs.token_logprobs_and_entropy` (chunked, saves only the logits and one
  log-sum-exp per position).
Each side runs in a fresh process; peak memory is the growth of the process's peak RSS over the logits already
allocated (so it includes the bf16 gradient of the logits, the same on every side), time the median of 3 runs.
Prints ONE JSON line with each side's numbers and ours / peer ratios.

    .venv/bin/python bench/logprobs.py [--tokens 2048] [--vocab 128256]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch
from worker import print_result, run_worker


def run_side(side: str, rows: int, positions: int, vocab: int) -> dict:
    torch.manual_seed(0)
    logits = torch.empty(rows, positions, vocab, dtype=torch.bfloat16)
    for row in range(rows):  # filled in small pieces, so no fp32 temporary raises the peak before we measure
        for start in range(0, positions, 16):
            block = logits[row, start:start + 16]
            block.copy_(torch.randn(block.shape) * 2)
    logits.requires_grad_()
    labels = torch.randint(0, vocab, (rows, positions))
    weights = torch.randn(rows, positions)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, logits in place

    if side == "direct":
        def step():
            x = logits.float()
            logp = x.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(x, -1)
            full = torch.log_softmax(logits.detach().float(), -1)
            return logp, -(full.exp() * full).sum(-1)
    elif side == "trl":
        from trl.trainer.utils import entropy_from_logits, selective_log_softmax

        def step():
            return selective_log_softmax(logits, labels), entropy_from_logits(logits.detach())
    else:
        from astro_pl.modules.logprobs import token_logprobs_and_entropy

        def step():
            return token_logprobs_and_entropy(logits, labels)

    times = []
    for _ in range(3):
        logits.grad = None
        start = time.perf_counter()
        logp, entropy = step()
        (logp.float() * weights).sum().backward()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mb": (peak - base) / 1024, "seconds": statistics.median(times),
            "entropy_mean": float(entropy.float().mean()), "grad_abs_sum": float(logits.grad.float().abs().sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2, help="sequences N")
    parser.add_argument("--tokens", type=int, default=2048, help="positions per sequence T")
    parser.add_argument("--vocab", type=int, default=128256, help="vocabulary V (Llama 3: 128256)")
    parser.add_argument("--side", choices=["direct", "trl", "ours"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print_result(run_side(args.side, args.rows, args.tokens, args.vocab))
        return
    sides = {}
    for side in ("direct", "trl", "ours"):
        sides[side] = run_worker(__file__, ["--side", side, "--rows", str(args.rows), "--tokens", str(args.tokens),
                                            "--vocab", str(args.vocab)], f"side {side}")
    logits_mb = args.rows * args.tokens * args.vocab * 2 / 2**20
    print(json.dumps({
        "bench": "logprobs", "rows": args.rows, "tokens": args.tokens, "vocab": args.vocab,
        "logits_mb": logits_mb, "sides": sides,
        "memory_ours_vs_trl": sides["ours"]["peak_mb"] / sides["trl"]["peak_mb"],
        "memory_ours_vs_direct": sides["ours"]["peak_mb"] / sides["direct"]["peak_mb"],
        "speedup_vs_trl": sides["trl"]["seconds"] / sides["ours"]["seconds"],
        "speedup_vs_direct": sides["direct"]["seconds"] / sides["ours"]["seconds"],
    }))


if __name__ == "__main__":
    main()
