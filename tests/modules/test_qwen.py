"""Qwen2 (q/k/v biases) and Qwen3 (q/k norms) through the trainer side: a short SFT fit exported and loaded back,
and the weights a sync sends (whole layers, LoRA merged under base names; FSDP2 gathers: tests/modules/
test_weight_sync.py)."""

from __future__ import annotations

import copy

import torch
from transformers import AutoModelForCausalLM

from astro_pl.loading import load_causal_lm
from astro_pl.modules.export import HFExport, export_hf
from astro_pl.modules.optim import OptimArgs
from astro_pl.modules.sft import SFTModule
from astro_pl.modules.weight_sync import hf_named_parameters, layer_of, weight_buckets
from tests.modules.test_sft import fit, hf_logits

ATTN = "model.layers.0.self_attn"


def own_weights(model_type: str) -> list[str]:
    """The parameters Llama does not have: Qwen2's q/k/v biases, Qwen3's per-head q/k norms."""
    return [f"{ATTN}.{p}_proj.bias" for p in "qkv"] if model_type == "qwen2" else [f"{ATTN}.q_norm.weight",
                                                                                    f"{ATTN}.k_norm.weight"]


def batch_loss(model, batch) -> float:
    logits = hf_logits(model, batch)[:, :-1]
    labels = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100).item()


def test_sft_fit_exports_a_model_transformers_loads_back(tiny_qwen_dir, tmp_path):
    module = SFTModule(model_path=str(tiny_qwen_dir), optim=OptimArgs(lr=1e-2, warmup_ratio=0.0))
    out = tmp_path / "export"
    batch = fit(tmp_path, tiny_qwen_dir, module, HFExport(str(out), dtype="float32"), steps=4)
    trained = module.model.eval()
    loaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    base = AutoModelForCausalLM.from_pretrained(str(tiny_qwen_dir)).eval()
    assert type(loaded) is type(base) and loaded.config.model_type == tiny_qwen_dir.name
    assert torch.allclose(hf_logits(loaded, batch), hf_logits(trained, batch), atol=1e-5)
    assert batch_loss(loaded, batch) < batch_loss(base, batch) - 0.1  # four steps at lr 1e-2 learned something
    saved, start = dict(loaded.named_parameters()), dict(base.named_parameters())
    for name in own_weights(loaded.config.model_type):  # trained, and exported under their own names
        assert not torch.equal(saved[name], start[name]), name
    if loaded.config.model_type == "qwen3":  # the template's turn end closes every training example
        im_end = module.tokenizer.convert_tokens_to_ids("<|im_end|>")
        assert (batch["labels"] == im_end).sum() >= batch["labels"].shape[0]

    half = export_hf(trained, module.tokenizer, tmp_path / "bf16", dtype="bfloat16")
    loaded = AutoModelForCausalLM.from_pretrained(str(half), dtype="auto")
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    for name, param in trained.named_parameters():
        assert torch.equal(dict(loaded.named_parameters())[name], param.detach().to(torch.bfloat16)), name


def test_smallest_buckets_hold_each_layer_whole(tiny_qwen_dir):
    model = load_causal_lm(str(tiny_qwen_dir), "float32")
    buckets = [[name for name, _ in b] for b in weight_buckets(hf_named_parameters(model), 1)]
    assert all(len({layer_of(n) for n in b}) == 1 for b in buckets)
    [layer0] = [b for b in buckets if layer_of(b[0]) == "model.layers.0"]
    # vLLM fuses q/k/v (with their biases) into one qkv_proj; the norms act on its output: all must come together
    assert {f"{ATTN}.{p}_proj.weight" for p in "qkvo"} | set(own_weights(model.config.model_type)) <= set(layer0)
    assert sum(len(b) for b in buckets) == len(dict(model.named_parameters()))


def test_lora_is_sent_merged_under_the_base_names(tiny_qwen_dir):
    from peft import LoraConfig, get_peft_model

    base = load_causal_lm(str(tiny_qwen_dir), "float32")
    names = dict(base.named_parameters()).keys()
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    expected = dict(copy.deepcopy(model).merge_and_unload().named_parameters())
    sent = dict(hf_named_parameters(model))
    assert sent.keys() == names  # Qwen2's biases leave the adapted layers as q_proj.bias, not base_layer.bias
    for n in names:
        torch.testing.assert_close(sent[n], expected[n])

