"""Zero-pad a model's attention heads to a larger head size without changing what it computes.

Why: a tiny model learns the graph task's edge look-up (an induction circuit) at head size 16 where at 32 it mostly
does not within the CPU budget, but vLLM's CPU attention runs head sizes of 32 and up. Padding makes the trained
model one vLLM runs, with the same logits.

For Llama and Qwen2 (rotate-half RoPE), each head's dims [0, d/2) stay in place and [d/2, d) move to [D/2, D/2 + d/2);
the rest are zero in q, k and v, and o_proj reads nothing from them. RoPE pairs dim i with i + D/2 at frequency
base'^(-2i/D), so base' = base^(D/d) keeps the frequency of every moved pair; the query is scaled by sqrt(D/d) to keep
the 1/sqrt(head size) softmax temperature. Qwen3 is refused: its per-head q/k RMSNorm would see the zeros.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from astro_pl.errors import UsageError, check_model_path

PADDABLE = ("llama", "qwen2")


def padded_index(old: int, new: int) -> torch.Tensor:
    """Where each of a head's `old` dims goes in a head of `new` dims (the two rotate-half halves stay aligned)."""
    half = torch.arange(old // 2)
    return torch.cat([half, half + new // 2])


def pad_rows(weight: torch.Tensor, heads: int, old: int, new: int, scale: float = 1.0) -> torch.Tensor:
    """A q/k/v projection's weight (heads*old, in) or bias (heads*old,) as (heads*new, ...), zero where padded."""
    out = weight.new_zeros((heads, new, *weight.shape[1:]))
    out[:, padded_index(old, new)] = weight.reshape(heads, old, *weight.shape[1:]) * scale
    return out.reshape(heads * new, *weight.shape[1:])


def pad_columns(weight: torch.Tensor, heads: int, old: int, new: int) -> torch.Tensor:
    """o_proj's weight (out, heads*old) as (out, heads*new), reading nothing from the padded dims."""
    out = weight.new_zeros((weight.shape[0], heads, new))
    out[:, :, padded_index(old, new)] = weight.reshape(weight.shape[0], heads, old)
    return out.reshape(weight.shape[0], heads * new)


def pad_state_dict(state: dict[str, torch.Tensor], heads: int, kv_heads: int, old: int, new: int
                   ) -> dict[str, torch.Tensor]:
    """The attention weights of every layer padded from head size `old` to `new`; other tensors as they were."""
    scale = math.sqrt(new / old)
    padded = {}
    for name, tensor in state.items():
        if ".self_attn.q_proj." in name:
            padded[name] = pad_rows(tensor, heads, old, new, scale)
        elif ".self_attn.k_proj." in name or ".self_attn.v_proj." in name:
            padded[name] = pad_rows(tensor, kv_heads, old, new)
        elif ".self_attn.o_proj.weight" in name:
            padded[name] = pad_columns(tensor, heads, old, new)
        else:
            padded[name] = tensor
    return padded


def pad_heads(model, head_dim: int):
    """A new model like `model` (a Llama or Qwen2 causal LM) with attention heads of `head_dim`, same logits."""
    config = model.config
    old = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = dict(config.rope_parameters or {})
    if config.model_type not in PADDABLE:
        raise UsageError(f"--head_dim: padding heads needs one of {', '.join(PADDABLE)}, got {config.model_type}")
    if rope.get("rope_type", "default") != "default" or getattr(config, "partial_rotary_factor", 1.0) != 1.0:
        raise UsageError(f"--head_dim: padding heads needs plain RoPE, got {rope}")
    if head_dim <= old or head_dim % 2:
        raise UsageError(f"--head_dim must be even and above the model's {old}, got {head_dim}")
    new_config = config.__class__.from_dict(config.to_dict())
    new_config.head_dim = head_dim
    new_config.rope_parameters = rope | {"rope_theta": rope["rope_theta"] ** (head_dim / old)}
    padded = model.__class__(new_config)
    state = pad_state_dict(model.state_dict(), config.num_attention_heads, config.num_key_value_heads, old, head_dim)
    padded.load_state_dict(state)
    return padded.to(model.dtype)


@dataclass
class PadHeadsArgs:
    """`astro pad-heads`: a trained model rewritten with larger attention heads (same logits)."""

    model: str = ""
    """Hugging Face model folder to pad (Llama or Qwen2)."""
    out: str = ""
    """Folder for the padded model and its tokenizer."""
    head_dim: int = 32
    """The new head size (vLLM's CPU attention runs 32, 64, 80, ...)."""

    def __post_init__(self) -> None:
        if not self.model or not self.out:
            raise UsageError("--model and --out are required")
        check_model_path(self.model, "--model")


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from astro_pl.options import parse_dataclass

    args = parse_dataclass(PadHeadsArgs, "astro pad-heads", __doc__.split("\n\n")[0], argv)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    old = model.config.head_dim
    pad_heads(model, args.head_dim).save_pretrained(args.out)
    AutoTokenizer.from_pretrained(args.model).save_pretrained(args.out)
    print(f"{Path(args.model)} -> {Path(args.out)}: heads of {old} padded to {args.head_dim}", flush=True)
    return 0
