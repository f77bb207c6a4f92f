"""Section `logprobs`: `token_logprobs_and_entropy` (forward + backward) on bf16 logits [4, 4096, 128256] for
several chunk sizes, beside the direct `logits.float()` way: time and peak memory above the logits (this picked
CUDA's chunk size)."""

from __future__ import annotations

import statistics
import time

import torch

from astro_pl.modules.logprobs import token_logprobs_and_entropy
from gpu_sections.common import reset_memory, sync


def logprobs_check(args) -> dict:
    """Forward + backward of the log-probs and entropies of bf16 logits, per chunk size and the direct way."""
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
