"""Loading the Hugging Face causal LM and tokenizer that every stage trains, samples or evaluates.

A foundation module: rollout engines, data modules, evaluation and the LightningModules all load models here, so
the dtype vocabulary ("auto", "float32", "bfloat16", "float16") and the pad-token rule are the same everywhere.
A model is named by a Hugging Face path (local directory or hub name); tiny CPU runs build one first with
`astro tiny-model` and then load it by path like any other model.
"""

from __future__ import annotations

import logging

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as transformers_logging

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
    if not torch.cuda.is_available():
        # transformers warns, at a hybrid model's first step, to install causal-conv1d, a CUDA-only kernel: on CPU
        # its PyTorch path is the only one (and the warning lands on a stage's progress line)
        transformers_logging.get_logger("transformers.integrations.hub_kernels").setLevel(logging.ERROR)
    kwargs = {"dtype": resolve_dtype(dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)
