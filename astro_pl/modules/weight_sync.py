"""Streaming the policy's weights into a rollout engine, in Hugging Face parameter names.

FSDP2 shards every parameter as a DTensor; `full_tensor()` all-gathers one parameter at a time (a collective:
every rank walks the parameters in the same order), and the gathered tensors go to the engine in buckets of at
most `bucket_bytes`, so peak extra memory is one bucket, not a full copy of the model. A PEFT LoRA model sends
W + scale * B @ A under the base weight's original name, computed out of place: merging and unmerging in place
would add float rounding to the frozen base weights at every sync.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from astro_pl.rollout.base import RolloutEngine


def _full(t: torch.Tensor) -> torch.Tensor:
    full_tensor = getattr(t, "full_tensor", None)
    return (full_tensor() if full_tensor is not None else t).detach()


def _is_peft(model: nn.Module) -> bool:
    return hasattr(model, "merge_adapter") and hasattr(model, "peft_config")


def lora_delta(layer: nn.Module) -> torch.Tensor:
    """scale * B @ A summed over the active adapters of a peft LoRA layer (gathered when sharded)."""
    delta = None
    for adapter in layer.active_adapters:
        if adapter in layer.lora_A:
            d = (_full(layer.lora_B[adapter].weight) @ _full(layer.lora_A[adapter].weight)) * layer.scaling[adapter]
            delta = d if delta is None else delta + d
    return delta


def hf_named_parameters(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face name, full tensor) of every policy weight; LoRA adapters added to their base weights."""
    if not _is_peft(model):
        for name, param in model.named_parameters():
            yield name, _full(param)
        return
    modules = dict(model.named_modules())
    for name, param in model.named_parameters():
        if "lora_" in name:
            continue
        tensor = _full(param)
        if name.endswith(".base_layer.weight"):
            delta = lora_delta(modules[name.removesuffix(".base_layer.weight")])
            if delta is not None:
                tensor = tensor + delta.to(tensor.dtype)
        yield name.removeprefix("base_model.model.").replace(".base_layer.", "."), tensor


def weight_buckets(named: Iterator[tuple[str, torch.Tensor]], bucket_bytes: int) -> Iterator[list]:
    """Groups (name, tensor) pairs into lists of at most `bucket_bytes` (a larger tensor goes alone)."""
    bucket, size = [], 0
    for name, tensor in named:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


def sync_weights(model: nn.Module, engine: RolloutEngine, bucket_bytes: int, dtype: torch.dtype | None = None) -> int:
    """Streams all weights of `model` into `engine`; returns the number of buckets sent.

    If the engine fails, the walk still runs to the end (other ranks wait in the same all-gathers) and the first
    error is raised afterwards.
    """
    named = ((n, t.to(dtype) if dtype is not None else t) for n, t in hf_named_parameters(model))
    count, error = 0, None
    for bucket in weight_buckets(named, bucket_bytes):
        if error is None:
            try:
                engine.load_weights(bucket)
                count += 1
            except Exception as e:  # noqa: BLE001 - re-raised after the collective walk
                error = e
    if error is not None:
        raise error
    return count
