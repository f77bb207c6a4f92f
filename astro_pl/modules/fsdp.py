"""FSDP2 sharding of a Hugging Face decoder, shared by the SFT and RL modules.

Under Lightning's `ModelParallelStrategy`, `configure_model` calls `shard_decoder` with `self.device_mesh`: each
decoder layer becomes its own FSDP unit (all-gathered just before it runs, freed after), then the root module
(embeddings, final norm, LM head) is wrapped. Parameters stay float32 in the optimizer; `param_dtype` sets the
compute dtype (bf16 on GPU).
"""

from __future__ import annotations

import torch
from torch import nn


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks of an HF causal LM (also under a PEFT wrapper)."""
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and type(module).__name__ == "ModuleList":
            names = {type(m).__name__ for m in module}
            if len(names) == 1 and next(iter(names)).endswith(("DecoderLayer", "Block")):
                return list(module)
    raise ValueError(f"no decoder layers (a ModuleList of *DecoderLayer) found in {type(model).__name__}")


def shard_decoder(model: nn.Module, mesh, param_dtype: torch.dtype | None = None, reshard_after_forward: bool = True):
    """Applies `fully_shard` to every decoder layer, then to the whole model, in place.

    Args:
        model: The HF model (or PEFT model) to shard.
        mesh: The data-parallel device mesh (`LightningModule.device_mesh["data_parallel"]`).
        param_dtype: Compute dtype of the all-gathered parameters; None keeps the stored dtype.
        reshard_after_forward: Free gathered parameters after forward (ZeRO-3); False keeps them (ZeRO-2-like).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if param_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model
