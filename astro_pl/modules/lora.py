"""LoRA adapters (peft) for SFT and RL; loading models is `astro_pl.loading`'s job."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import PreTrainedModel


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
