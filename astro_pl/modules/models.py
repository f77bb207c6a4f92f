"""Loading the causal LM and tokenizer that SFT, RL and evaluation train or sample from.

A model is named by a Hugging Face path (local directory or hub name). Tiny CPU runs build one first with
`astro_pl.modules.tiny_llama.build_tiny_llama` and then load it by path like any other model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, flag: str = "dtype") -> torch.dtype:
    """"auto" is bf16 where CUDA supports it and float32 elsewhere (CPU tests stay exact); `flag` names the setting
    in the error."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    if name not in DTYPES:
        raise ValueError(f"{flag} must be one of auto, {', '.join(DTYPES)}; got {name!r}")
    return DTYPES[name]


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str, dtype: str = "auto", attn_implementation: str | None = None) -> PreTrainedModel:
    """Loads a causal LM for training; `attn_implementation` e.g. "sdpa" or "flash_attention_2"."""
    kwargs = {"dtype": resolve_dtype(dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


@dataclass
class LoraArgs:
    """LoRA adapters (peft) instead of a full fine-tune."""

    r: int = 16
    """Rank of the adapter matrices."""
    alpha: int = 32
    """Scaling numerator: updates are scaled by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Names of the linear layers that get adapters (Llama: q/k/v/o_proj, gate/up/down_proj)."""


def add_lora(model: PreTrainedModel, lora: LoraArgs):
    """Wraps `model` with trainable LoRA adapters (peft); the base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    if model.is_gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, config)
