"""One switch for Liger's fused GPU kernels (`fused_kernels: true`), with the PyTorch path as the fallback.

Where `liger-kernel` is importable and the model runs on CUDA, the switch patches the model instance's RMSNorm,
RoPE and SwiGLU with Liger's Triton kernels (Llama, Qwen2, Qwen3 and the other model types Liger knows), and SFT's
loss uses Liger's fused linear cross-entropy. Anywhere else (CPU, no liger-kernel, an unknown model type) nothing
changes: the losses already avoid the full logits through `linear_logprobs_and_entropy`, in PyTorch. The RL
update keeps that PyTorch path on GPUs too: it needs each token's log-prob and entropy for its own losses, which
Liger's fused losses do not return.
"""

from __future__ import annotations

import importlib.util
import logging

import torch

log = logging.getLogger(__name__)


def liger_usable(device: torch.device) -> bool:
    """True when Liger's Triton kernels can run for a model on `device` (CUDA with liger-kernel installed)."""
    return device.type == "cuda" and importlib.util.find_spec("liger_kernel") is not None


def apply_fused_kernels(model: torch.nn.Module, device: torch.device) -> bool:
    """Patches `model` (a Hugging Face causal LM, before LoRA and FSDP wrapping) with Liger's RMSNorm, RoPE and
    SwiGLU kernels where `liger_usable(device)`; returns whether it did. Liger's own loss patches stay off: the
    losses here call the model for hidden states and apply the LM head themselves."""
    if not liger_usable(device):
        log.info("fused_kernels: liger-kernel is not usable on %s; using the PyTorch path", device)
        return False
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)
    return True


def liger_linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """Summed cross-entropy of `labels` ([M], -100 ignored) under hidden [M, D] @ weight.T, by Liger's kernel."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    return LigerFusedLinearCrossEntropyLoss(reduction="sum", ignore_index=-100)(weight, hidden, labels, bias)
