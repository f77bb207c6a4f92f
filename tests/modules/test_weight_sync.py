"""Weight sync: size-capped buckets, HF names, LoRA sent merged while the model itself is left untouched."""

from __future__ import annotations

import copy

import torch

from astro_pl.modules.models import load_causal_lm
from astro_pl.modules.weight_sync import hf_named_parameters, sync_weights, weight_buckets


class Recorder:
    def __init__(self):
        self.buckets = []

    def load_weights(self, named):
        self.buckets.append([(n, t.clone()) for n, t in named])


def test_buckets_respect_the_cap():
    # 4-byte floats: sizes 40, 40, 200, 8 bytes with a 100-byte cap -> [a, b], [c] (alone, too big), [d]
    named = [("a", torch.zeros(10)), ("b", torch.zeros(10)), ("c", torch.zeros(50)), ("d", torch.zeros(2))]
    assert [[n for n, _ in b] for b in weight_buckets(iter(named), 100)] == [["a", "b"], ["c"], ["d"]]


def test_sync_sends_every_parameter_by_hf_name(tiny_model_dir):
    model = load_causal_lm(str(tiny_model_dir), "float32")
    engine = Recorder()
    count = sync_weights(model, engine, bucket_bytes=2**20)
    sent = dict(p for b in engine.buckets for p in b)
    assert count == len(engine.buckets) > 1
    assert sent.keys() == dict(model.named_parameters()).keys()
    assert all(torch.equal(sent[n], p) for n, p in model.named_parameters())


def test_lora_is_sent_merged_under_base_names_and_the_model_is_untouched(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    base = load_causal_lm(str(tiny_model_dir), "float32")
    names = dict(base.named_parameters()).keys()
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()  # B starts at zero; make the adapter matter
    expected = dict(copy.deepcopy(model).merge_and_unload().named_parameters())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sent = dict(hf_named_parameters(model))
    assert sent.keys() == names
    for n in names:
        torch.testing.assert_close(sent[n], expected[n])
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(sent[q], before[f"base_model.model.{q.replace('.weight', '.base_layer.weight')}"])
    # bit for bit: an in-place merge + unmerge would leave rounding error in the frozen base weights
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n]), n
