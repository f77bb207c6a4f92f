"""Weight sync: size-capped buckets, HF names, LoRA sent merged while the model itself is left untouched."""

from __future__ import annotations

import copy

import pytest
import torch

from astro_pl.loading import load_causal_lm
from astro_pl.modules.weight_sync import hf_named_parameters, layer_of, sync_weights, weight_buckets


class Recorder:
    def __init__(self):
        self.buckets = []

    def load_weights(self, named):
        self.buckets.append([(n, t.clone()) for n, t in named])


def test_buckets_hold_whole_layers():
    sizes = {"model.embed_tokens.weight": 40, "model.layers.0.self_attn.q_proj.weight": 40,
             "model.layers.0.self_attn.k_proj.weight": 40, "model.layers.1.mlp.up_proj.weight": 40,
             "model.layers.10.mlp.up_proj.weight": 30, "model.norm.weight": 10}
    named = [(n, torch.zeros(size, dtype=torch.uint8)) for n, size in sizes.items()]
    buckets = [[layer_of(n) for n, _ in b] for b in weight_buckets(iter(named), 100)]
    # embed (40) + layer 0 (80) > 100; layer 0 (80) + layer 1 (40) > 100; then 40 + 30 + 10
    assert buckets == [["model.embed_tokens.weight"], ["model.layers.0", "model.layers.0"],
                       ["model.layers.1", "model.layers.10", "model.norm.weight"]]
    # a layer above the cap goes alone, whole
    assert [len(b) for b in weight_buckets(iter(named), 1)] == [1, 2, 1, 1, 1]


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


def test_sync_sends_the_engines_dtype(tiny_model_dir):
    model = load_causal_lm(str(tiny_model_dir), "float32")
    engine = Recorder()
    sync_weights(model, engine, bucket_bytes=2**20, dtype=torch.bfloat16)
    sent = dict(p for b in engine.buckets for p in b)
    assert all(sent[n].dtype == torch.bfloat16 and torch.equal(sent[n], p.detach().to(torch.bfloat16))
               for n, p in model.named_parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the master weights are untouched


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


def _gather_bf16(rank: int, model_dir: str, store: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from astro_pl.modules.fsdp import shard_decoder

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        model = shard_decoder(load_causal_lm(model_dir, "float32"), init_device_mesh("cpu", (2,)))
        sent = dict(hf_named_parameters(model, torch.bfloat16))
        if rank == 0:
            torch.save(sent, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "qwen3"])
def test_fsdp2_shards_go_out_whole_in_the_engine_dtype(architecture, tiny_model_dir, tiny_qwen_dirs, tmp_path):
    """Two CPU processes with float32 master shards: every weight arrives whole and equal to the full weight cast
    to bf16 (`_full` casts each shard before gathering, so the gather moves half the bytes); Qwen2's biases and
    Qwen3's q/k norms are sharded too."""
    import torch.multiprocessing as mp

    model_dir = {"llama": tiny_model_dir, **tiny_qwen_dirs}[architecture]
    out = tmp_path / "sent.pt"
    mp.spawn(_gather_bf16, args=(str(model_dir), str(tmp_path / "store"), str(out)), nprocs=2)
    sent = torch.load(out)
    full = load_causal_lm(str(model_dir), "float32")
    assert sent.keys() == dict(full.named_parameters()).keys()
    for name, param in full.named_parameters():
        assert sent[name].dtype == torch.bfloat16 and torch.equal(sent[name], param.detach().to(torch.bfloat16)), name
