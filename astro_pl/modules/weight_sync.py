"""Streaming the policy's weights into a rollout engine, in Hugging Face parameter names.

FSDP2 shards every parameter as a DTensor; `full_tensor()` all-gathers one parameter at a time (a collective:
every rank walks the parameters in the same order), and the gathered tensors go to the engine in buckets of whole
layers, at most `bucket_bytes` (or one layer), so peak extra memory is one bucket, not a full copy of the model.
A PEFT LoRA model sends W + scale * B @ A under the base weight's original name, computed out of place: merging and
unmerging in place would add float rounding to the frozen base weights at every sync. Weights go out in the
engine's dtype: a float32 master shard is cast to bf16 before it is gathered, so the all-gather moves half the bytes.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from astro_pl.rollout.base import RolloutEngine


def _full(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The whole tensor (gathered if sharded), cast to `dtype` first so the gather moves the smaller type."""
    t = t.detach().to(dtype or t.dtype)
    full_tensor = getattr(t, "full_tensor", None)
    return full_tensor() if full_tensor is not None else t


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


def tied_names(model: nn.Module) -> tuple[str, str] | None:
    """(embedding weight, output weight) Hugging Face names when the output layer reuses the embedding's tensor."""
    output, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    if output is None or output.weight is not embedding.weight:
        return None
    names = {id(module): name.removeprefix("base_model.model.")
             for name, module in model.named_modules(remove_duplicate=False)}
    return f"{names[id(embedding)]}.weight", f"{names[id(output)]}.weight"


def hf_named_parameters(model: nn.Module, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face name, full tensor in `dtype`) of every policy weight; LoRA adapters added to their base weights
    (in the stored dtype, then cast). A tied output layer is sent under its own name too, right after the
    embedding, in the same bucket: vLLM's in-place reload of LFM2 keeps the old weights until the tied tensor has
    come under both names in one reload (tests/rollout/test_qwen_engines.py)."""
    tied = tied_names(model)
    for name, tensor in _hf_named_parameters(model, dtype):
        yield name, tensor
        if tied and name == tied[0]:
            yield tied[1], tensor


def _hf_named_parameters(model: nn.Module, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """The parameters as stored, under Hugging Face names."""
    if not _is_peft(model):
        for name, param in model.named_parameters():
            yield name, _full(param, dtype)
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
        yield name.removeprefix("base_model.model.").replace(".base_layer.", "."), tensor.to(dtype or tensor.dtype)


def layer_of(name: str) -> str:
    """The numbered layer a parameter belongs to ("model.layers.3" for "model.layers.3.mlp.up_proj.weight"), or the
    name itself outside numbered layers (embeddings, final norm, lm_head)."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return name


def whole_layers(named: Iterator[tuple[str, torch.Tensor]]) -> Iterator[list]:
    """Consecutive (name, tensor) pairs grouped by `layer_of`, lazily (one layer gathered at a time); a tensor sent
    again under another name (a tied output layer) stays with the first."""
    layer: list = []
    for name, tensor in named:
        if layer and layer_of(name) != layer_of(layer[-1][0]) and tensor is not layer[-1][1]:
            yield layer
            layer = []
        layer.append((name, tensor))
    if layer:
        yield layer


def weight_buckets(named: Iterator[tuple[str, torch.Tensor]], bucket_bytes: int) -> Iterator[list]:
    """Groups (name, tensor) pairs into lists of at most `bucket_bytes`, never splitting a layer (a layer larger
    than that goes alone).

    Whole layers because vLLM fuses a layer's q/k/v and gate/up projections into one tensor, and its in-place
    reload, handed only part of a fused tensor, fills the rest with uninitialised memory: split layers leave the
    engine generating garbage (tests/rollout/test_engines.py syncs with 1-byte buckets).
    """
    bucket, size = [], 0
    for layer in whole_layers(named):
        nbytes = sum(tensor.numel() * tensor.element_size() for _, tensor in layer)
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket += layer
        size += nbytes
    if bucket:
        yield bucket


def sync_weights(model: nn.Module, engine: RolloutEngine, bucket_bytes: int, dtype: torch.dtype | None = None) -> int:
    """Streams all weights of `model` into `engine`; returns the number of buckets sent.

    If the engine fails, the walk still runs to the end (other ranks wait in the same all-gathers) and the first
    error is raised afterwards.
    """
    count, error = 0, None
    for bucket in weight_buckets(hf_named_parameters(model, dtype), bucket_bytes):
        if error is None:
            try:
                engine.load_weights(bucket)
                count += 1
            except Exception as e:  # noqa: BLE001 - re-raised after the collective walk
                error = e
    if error is not None:
        raise error
    return count
