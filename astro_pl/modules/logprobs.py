"""Log-probs of the sampled tokens and entropies from [N, T, V] logits, without fp32 copies of the logits.

The direct way, `logits.float()` then log-sum-exp and gather, keeps an fp32 copy of all the logits for the backward
pass, and the entropy makes more such copies: ~14 bytes per logit for bf16 logits, which at a 128K vocabulary is
the largest allocation of an RL update (31 GB for 17K tokens). `token_logprobs_and_entropy` walks the positions in
chunks, in fp32 one chunk at a time, and keeps only the logits it was given plus one fp32 log-sum-exp per position;
its backward pass recomputes the softmax chunk by chunk.

`linear_logprobs_and_entropy` goes one step further and starts from the last hidden states and the LM head's
weight, so the logits are never made whole at all: the RL update and the SFT loss use it.
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


HIDDEN_CHUNK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 26}
"""Logits per chunk of `linear_logprobs_and_entropy` by device: on a CPU 16 MB of fp32 keeps the chunk's matrix
product large enough to run near peak; on a GPU as `CHUNK_ELEMENTS`."""


def linear_logprobs_and_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                                temperature: float = 1.0, bias: torch.Tensor | None = None,
                                chunk_elements: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each label and the entropy under softmax((hidden @ weight.T + bias) / temperature), without
    the [M, V] logits ever existing: logits are made, used and dropped a chunk of positions at a time, forward
    and again in backward (as Liger's fused-linear losses do), so memory is O(chunk x V) beside the inputs.

    Both outputs are differentiable with respect to `hidden`, `weight` and `bias` (the entropy for an entropy
    bonus). The product runs in the autocast dtype when autocast is on, else in `hidden`'s dtype (what the LM
    head itself would do); the softmax runs in fp32.

    Args:
        hidden: [M, D] last hidden states (after the final norm) of the scored positions.
        weight: [V, D] output projection (the LM head's weight, unsharded).
        labels: [M] token id that each position predicts.
        temperature: Divides the logits (the sampling temperature).
        bias: Optional [V] output bias.
        chunk_elements: Logits handled at once; None: `HIDDEN_CHUNK_ELEMENTS` of the device.

    Returns:
        [M] float32 log-probs and [M] float32 entropies.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    chunk_elements = chunk_elements or HIDDEN_CHUNK_ELEMENTS.get(hidden.device.type, HIDDEN_CHUNK_ELEMENTS["cpu"])
    chunk_positions = max(1, chunk_elements // weight.shape[0])
    device = hidden.device.type
    compute_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    return _FusedLinearLogProbs.apply(hidden, weight, bias, labels, float(temperature), chunk_positions, compute_dtype)


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  temperature: float) -> torch.Tensor:
    logits = hidden @ weight.T  # [c, V] in the compute dtype
    if bias is not None:
        logits = logits + bias.to(logits.dtype)
    return logits.float() / temperature


class _FusedLinearLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, temperature, chunk, compute_dtype):
        with torch.autocast(hidden.device.type, enabled=False):  # casts are explicit
            compute_weight = weight.to(compute_dtype)
            lse = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
            entropy, picked = torch.empty_like(lse), torch.empty_like(lse)
            for start in range(0, hidden.shape[0], chunk):
                rows = slice(start, start + chunk)
                x = _chunk_logits(hidden[rows].to(compute_dtype), compute_weight, bias, temperature)  # [c, V]
                block_lse = torch.logsumexp(x, dim=-1)
                lse[rows] = block_lse
                entropy[rows] = block_lse - (torch.exp(x - block_lse[:, None]) * x).sum(-1)  # lse - sum p x
                picked[rows] = x.gather(-1, labels[rows, None]).squeeze(-1)
        ctx.save_for_backward(hidden, weight, bias, labels, lse, entropy)
        ctx.temperature, ctx.chunk, ctx.compute_dtype = temperature, chunk, compute_dtype
        ctx.set_materialize_grads(False)
        return picked - lse, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, bias, labels, lse, entropy = ctx.saved_tensors
        with torch.autocast(hidden.device.type, enabled=False):
            compute_weight = weight.to(ctx.compute_dtype)
            grad_hidden = torch.zeros_like(hidden)
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            grad_bias = None if bias is None else torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
            for start in range(0, hidden.shape[0], ctx.chunk):
                rows = slice(start, start + ctx.chunk)
                block_hidden = hidden[rows].to(ctx.compute_dtype)
                x = _chunk_logits(block_hidden, compute_weight, bias, ctx.temperature)  # [c, V]
                p = torch.exp(x - lse[rows, None])
                # d logp / dx_v = 1[v = label] - p_v;  d H / dx_v = -p_v (log p_v + H);  x = logits / T
                scale = torch.zeros_like(lse[rows]) if grad_logp is None else grad_logp[rows].float()
                if grad_entropy is None:
                    grad_x = -p * scale[:, None]
                else:
                    weight_h = grad_entropy[rows].float()[:, None]
                    grad_x = -p * (scale[:, None] + weight_h * (x - lse[rows, None] + entropy[rows, None]))
                grad_x.scatter_add_(-1, labels[rows, None], scale[:, None])
                grad_logits = (grad_x / ctx.temperature).to(ctx.compute_dtype)  # [c, V]
                grad_hidden[rows] = (grad_logits @ compute_weight).to(hidden.dtype)
                grad_weight += (grad_logits.T @ block_hidden).float()
                if grad_bias is not None:
                    grad_bias += grad_logits.float().sum(0)
        grad_bias = None if grad_bias is None else grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight.to(weight.dtype), grad_bias, None, None, None, None
