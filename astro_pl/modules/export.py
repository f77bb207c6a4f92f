"""Exporting a trained model in Hugging Face format, loadable by `AutoModelForCausalLM` and vLLM.

Works for plain and FSDP2-sharded models (the full state dict is gathered to rank 0 first) and for LoRA models,
which are either merged into the base weights (one standalone model; what vLLM serves) or saved as a PEFT adapter
(`adapter_config.json` names the base model, so transformers loads it on top of that).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
import torch
from torch import nn

from astro_pl.loading import resolve_dtype


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded CPU state dict; collective under FSDP2 (call on every rank), full only on rank 0."""
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in model.parameters()):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def rebuild(model: nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
    """A fresh CPU copy of `model` (HF model, maybe PEFT-wrapped) holding `state`, in `dtype`."""
    from transformers import AutoModelForCausalLM

    peft_config = getattr(model, "peft_config", None)
    base = model.get_base_model() if peft_config else model
    fresh = AutoModelForCausalLM.from_config(base.config, dtype=dtype)
    if peft_config:
        from peft import get_peft_model

        fresh = get_peft_model(fresh, peft_config["default"])
    fresh.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True)
    return fresh


def export_hf(model: nn.Module, tokenizer, out_dir: str | Path, merge_lora: bool = True, dtype: str = "auto",
              is_global_zero: bool = True) -> Path:
    """Writes model + tokenizer to `out_dir` with `save_pretrained`; call on every rank.

    Args:
        model: The trained HF causal LM (plain, FSDP2-sharded, and/or PEFT LoRA).
        tokenizer: Its tokenizer.
        out_dir: Output directory.
        merge_lora: Merge LoRA weights into the base (a standalone model) instead of saving an adapter.
        dtype: Dtype of the saved weights ("auto": bf16 on a bf16 GPU, else float32).
        is_global_zero: Only rank 0 writes.
    """
    state = full_state_dict(model)
    out_dir = Path(out_dir)
    if is_global_zero:
        fresh = rebuild(model, state, resolve_dtype(dtype))
        if getattr(fresh, "peft_config", None) and merge_lora:
            fresh = fresh.merge_and_unload()
        # Training turns the KV cache off; an exported model is for generation, where it must be on.
        fresh.config.use_cache = True
        fresh.generation_config.use_cache = True
        fresh.save_pretrained(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))
    return out_dir


class HFExport(L.Callback):
    """Exports `pl_module.model` and the tokenizer in HF format at the end of `fit`, and every N optimiser steps.

    The tokenizer is the DataModule's `tokenizer` (what the model was trained on) or else `pl_module.tokenizer`.
    Each export holds `export.json` with the trainer's `global_step`, which `astro eval-checkpoints` plots against.

    Args:
        dirpath: Output directory; default `<trainer.default_root_dir>/hf`, so one `--trainer.default_root_dir`
            override moves a whole run.
        merge_lora: Merge LoRA weights into the base model (true) or save a PEFT adapter (false).
        dtype: Saved dtype: "auto", "float32", "bfloat16" or "float16".
        every_n_steps: Also export every this many optimiser steps (`trainer.global_step`), beside the final one:
            `<dirpath>-step<N>/` (`hf-step20/` next to `hf/`), for the analysis across training. An RL batch may
            take several optimiser steps; the export follows the batch whose steps reach a multiple of N. None: only
            the final export.
    """

    def __init__(self, dirpath: str | None = None, merge_lora: bool = True, dtype: str = "auto",
                 every_n_steps: int | None = None) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"HFExport's init_args.every_n_steps must be >= 1 or null, got {every_n_steps}")
        self.dirpath, self.merge_lora, self.dtype, self.every_n_steps = dirpath, merge_lora, dtype, every_n_steps
        self._exported_step = 0

    def _dirpath(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath or os.path.join(trainer.default_root_dir, "hf"))

    def _export(self, trainer: L.Trainer, pl_module: L.LightningModule, out_dir: Path) -> None:
        tokenizer = getattr(trainer.datamodule, "tokenizer", None) or pl_module.tokenizer
        export_hf(pl_module.model, tokenizer, out_dir, self.merge_lora, self.dtype, trainer.is_global_zero)
        if trainer.is_global_zero:
            (out_dir / "export.json").write_text(json.dumps({"global_step": trainer.global_step}) + "\n")
        trainer.strategy.barrier()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._exported_step = trainer.global_step  # a resumed run counts on from its checkpoint

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
                           ) -> None:
        n, step = self.every_n_steps, trainer.global_step
        if n is not None and step // n > self._exported_step // n:
            final = self._dirpath(trainer)
            self._export(trainer, pl_module, final.with_name(f"{final.name}-step{step}"))
            self._exported_step = step

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._export(trainer, pl_module, self._dirpath(trainer))
