"""Log-probs of the sampled tokens and entropies from [N, T, V] logits, without fp32 copies of the logits.

The direct way, `logits.float()` then log-sum-exp and gather, keeps an fp32 copy of all the logits for the backward
pass, and the entropy makes more such copies: ~14 bytes per logit for bf16 logits, which at a 128K vocabulary is
the largest allocation of an RL update (31 GB for 17K tokens). `token_logprobs_and_entropy` walks the positions in
chunks, in fp32 one chunk at a time, and keeps only the logits it was given plus one fp32 log-sum-exp per position;
its backward pass recomputes the softmax chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

CHUNK_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 26}
"""Logits per chunk by device: 4 MB of fp32 stays in a CPU's cache (fastest there); on a GPU 256 MB keeps the
number of kernel launches small (a 128K vocabulary gives 512 positions per chunk)."""


def token_logprobs_and_entropy(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                               chunk_elements: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each label under softmax(logits / temperature), and that distribution's entropy.

    Args:
        logits: [N, T, V] in any float dtype (a view is fine: nothing is copied whole).
        labels: [N, T] token ids, aligned with the logits (shift before calling).
        temperature: Divides the logits (the sampling temperature, so that log-probs match the sampler's).
        chunk_elements: Logits handled at once (whole positions, at least one): the fp32 working memory is a few
            times this x 4 bytes. None: `CHUNK_ELEMENTS` of the logits' device.

    Returns:
        [N, T] float32 log-probs (differentiable with respect to `logits`) and [N, T] float32 entropies (for
        logging; no gradient).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    chunk_elements = chunk_elements or CHUNK_ELEMENTS.get(logits.device.type, CHUNK_ELEMENTS["cpu"])
    chunk_positions = max(1, chunk_elements // logits.shape[-1])
    return _ChunkedLogProbs.apply(logits, labels, float(temperature), chunk_positions)


def _blocks(rows: int, positions: int, chunk: int) -> Iterator[tuple[int, slice]]:
    for row in range(rows):
        for start in range(0, positions, chunk):
            yield row, slice(start, start + chunk)


class _ChunkedLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, temperature, chunk):
        rows, positions, _ = logits.shape
        lse = torch.empty(rows, positions, dtype=torch.float32, device=logits.device)
        entropy = torch.empty_like(lse)
        for row, cols in _blocks(rows, positions, chunk):
            x = logits[row, cols].float() / temperature
            block_lse = torch.logsumexp(x, dim=-1)
            lse[row, cols] = block_lse
            # H = -sum p (x - lse) = lse - sum p x
            entropy[row, cols] = block_lse - (torch.exp(x - block_lse[:, None]) * x).sum(-1)
        picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1).float() / temperature
        ctx.save_for_backward(logits, labels, lse)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.mark_non_differentiable(entropy)
        return picked - lse, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):
        logits, labels, lse = ctx.saved_tensors
        rows, positions, _ = logits.shape
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        scale = grad_logp.float() / ctx.temperature  # d logp / d logit_v = (1[v = label] - p_v) / T
        for row, cols in _blocks(rows, positions, ctx.chunk):
            p = torch.exp(logits[row, cols].float() / ctx.temperature - lse[row, cols, None])
            block = -p * scale[row, cols, None]
            block.scatter_add_(-1, labels[row, cols, None], scale[row, cols, None])
            grad[row, cols] = block.to(grad.dtype)
        return grad, None, None, None
