"""SFTModule: packed loss = one-by-one loss, the LR schedule, LoRA and full training, HF + vLLM loading of exports."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM

from astro_pl.datamodules.packing import collate_packed, collate_padded
from astro_pl.datamodules.traces import TraceDataModule
from astro_pl.modules.checkpointing import AtomicCheckpoint
from astro_pl.modules.export import HFExport, export_hf
from astro_pl.modules.kernels import apply_fused_kernels, liger_usable
from astro_pl.modules.optim import OptimArgs, warmup_cosine
from astro_pl.modules.sft import LoraArgs, SFTModule, token_loss_sum
from tests.datamodules.test_traces import write_traces


def built(module: SFTModule) -> SFTModule:
    module.configure_model()
    return module


def test_packed_loss_equals_mean_loss_of_examples_run_one_by_one(tiny_model_dir):
    module = built(SFTModule(model_path=str(tiny_model_dir), attn_implementation="sdpa")).eval()
    gen = torch.Generator().manual_seed(0)
    examples = []
    for n in (5, 17, 9, 30, 3, 12):
        ids = torch.randint(5, 400, (n,), generator=gen)
        examples.append({"input_ids": ids, "labels": ids.clone()})
    total, count = torch.tensor(0.0), torch.tensor(0)
    with torch.no_grad():
        for ex in examples:  # each alone: no padding, no packing
            s, c = module.forward_loss(collate_padded([ex], pad_id=0, pad_to_multiple_of=1))
            total, count = total + s, count + c
        packed = collate_packed([examples[:3], examples[3:]], pad_id=0)  # rows of 31 and 45 tokens (+ padding)
        s, c = module.forward_loss(packed)
    assert c == count == sum(n - 1 for n in (5, 17, 9, 30, 3, 12))
    assert abs((s / c).item() - (total / count).item()) < 1e-5
    # without position-id segments (one long sequence) the loss differs: the test can fail
    packed["position_ids"] = torch.arange(packed["input_ids"].shape[1]).expand_as(packed["input_ids"])
    with torch.no_grad():
        s_leak, _ = module.forward_loss(packed)
    assert abs((s_leak / c).item() - (total / count).item()) > 1e-3


def test_token_loss_sum_by_hand():
    # zero hidden states -> uniform logits over 4 classes: each of the 2 predicted tokens costs ln 4
    loss = token_loss_sum(torch.zeros(2, 3), torch.randn(4, 3), torch.tensor([1, 3]))
    assert math.isclose(loss.item(), 2 * math.log(4), rel_tol=1e-6)


def test_forward_loss_equals_cross_entropy_of_the_full_logits_with_gradients(tiny_model_dir):
    batch = collate_padded([{"input_ids": torch.arange(3, 12), "labels": torch.arange(3, 12)},
                            {"input_ids": torch.arange(20, 25), "labels": torch.tensor([-100, -100, 22, 23, 24])}],
                           pad_id=0, pad_to_multiple_of=1)
    module = built(SFTModule(model_path=str(tiny_model_dir)))
    loss, count = module.forward_loss(batch)
    loss.backward()
    ours = {n: p.grad.clone() for n, p in module.model.named_parameters()}
    module.model.zero_grad()
    logits = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    plain = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(),
                                              reduction="sum")
    plain.backward()
    assert count == 8 + 3  # 8 from the first row; the second predicts 22, 23, 24
    torch.testing.assert_close(loss, plain, rtol=1e-5, atol=1e-5)
    for name, param in module.model.named_parameters():
        torch.testing.assert_close(ours[name], param.grad, rtol=1e-4, atol=1e-6)


def test_token_losses_are_the_cross_entropy_at_the_chosen_targets_only(tiny_model_dir):
    module = built(SFTModule(model_path=str(tiny_model_dir), token_losses={"answer": [" answer is", " The"]}))
    tok = module.tokenizer
    answer, the = (tok(t, add_special_tokens=False)["input_ids"][0] for t in (" answer", " The"))
    ids = torch.tensor(tok("Compute 2. The answer is 4. The end", add_special_tokens=False)["input_ids"])
    batch = collate_padded([{"input_ids": ids, "labels": ids}], pad_id=0, pad_to_multiple_of=1)
    with torch.no_grad():
        loss, count = module.forward_loss(batch)
        logits = module.model(input_ids=batch["input_ids"]).logits[0, :-1]
    every = torch.nn.functional.cross_entropy(logits, ids[1:], reduction="none")
    chosen = (ids[1:] == answer) | (ids[1:] == the)
    assert chosen.sum() == 3  # " The", " answer", " The": the texts' first tokens, wherever they are targets
    chosen_sum, chosen_count = module._token_sums["answer"]
    assert chosen_count == 3
    torch.testing.assert_close(chosen_sum, every[chosen].sum(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, every.sum(), rtol=1e-5, atol=1e-5)  # the trained loss is unchanged
    with pytest.raises(ValueError, match="token_losses.none: every text must have a token"):
        built(SFTModule(model_path=str(tiny_model_dir), token_losses={"none": [""]}))


def test_token_losses_leave_out_a_text_whose_first_token_is_a_bare_space(tiny_model_dir, caplog):
    # a word the tokenizer never saw starts with "Ġ" alone, which would count every space
    module = SFTModule(model_path=str(tiny_model_dir), token_losses={"mixed": [" qzxv", " The"], "bare": [" qzxv"]})
    tok = module.tokenizer
    assert tok.decode(tok(" qzxv", add_special_tokens=False)["input_ids"][:1]).strip() == ""
    with pytest.raises(ValueError, match="token_losses.bare: none of \\[' qzxv'\\] starts with a token of its own"):
        built(module)
    module = built(SFTModule(model_path=str(tiny_model_dir), token_losses={"mixed": [" qzxv", " The"]}))
    assert module._token_ids["mixed"].tolist() == tok(" The", add_special_tokens=False)["input_ids"][:1]
    assert "' qzxv' starts with a whitespace token" in caplog.text


def test_fused_kernels_switch_falls_back_to_pytorch_on_cpu(tmp_path, tiny_model_dir):
    # liger's Triton kernels need CUDA: on CPU the switch changes nothing, and training runs with the same loss
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    norm_type = type(model.model.norm)
    assert not liger_usable(torch.device("cpu")) and apply_fused_kernels(model, torch.device("cpu")) is False
    assert type(model.model.norm) is norm_type
    heads = []
    for fused in (True, False):
        torch.manual_seed(0)
        module = SFTModule(model_path=str(tiny_model_dir), fused_kernels=fused)
        (tmp_path / str(fused)).mkdir()
        fit(tmp_path / str(fused), tiny_model_dir, module, HFExport(str(tmp_path / f"out{fused}")), steps=2)
        assert module._liger is False
        heads.append(dict(module.model.named_parameters())["lm_head.weight"].detach().clone())
    torch.testing.assert_close(heads[0], heads[1], rtol=0, atol=0)


def test_warmup_cosine_schedule_by_hand():
    # 10 steps, 2 warmup: 0.5, 1.0, then cosine over 8 steps to min 0.1
    assert warmup_cosine(0, 10, 2) == 0.5 and warmup_cosine(1, 10, 2) == 1.0
    assert warmup_cosine(2, 10, 2) == 1.0
    assert math.isclose(warmup_cosine(6, 10, 2, 0.1), 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert math.isclose(warmup_cosine(10, 10, 2, 0.1), 0.1)
    with pytest.raises(ValueError, match="--model.optim.warmup_ratio"):
        OptimArgs(warmup_ratio=1.5)


def fit(tmp_path, tiny_model_dir, module: SFTModule, export: HFExport, steps: int = 3):
    data = write_traces(tmp_path / "traces.jsonl", n=16)
    dm = TraceDataModule(tokenizer_path=str(tiny_model_dir), train_file=str(data), max_seq_len=256, batch_size=2)
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, callbacks=[export], use_distributed_sampler=False)
    trainer.fit(module, dm)
    return next(iter(dm.train_dataloader()))


def hf_logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits


def test_lora_training_exports_merged_and_adapter_that_transformers_loads(tmp_path, tiny_model_dir):
    lora = LoraArgs(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    module = SFTModule(model_path=str(tiny_model_dir), lora=lora, optim=OptimArgs(lr=1e-2, warmup_ratio=0.0),
                       gradient_checkpointing=True)
    merged, adapter = tmp_path / "merged", tmp_path / "adapter"
    batch = fit(tmp_path, tiny_model_dir, module, HFExport(str(merged), merge_lora=True, dtype="float32"))
    export_hf(module.model, module.tokenizer, adapter, merge_lora=False, dtype="float32")
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert not (merged / "adapter_config.json").exists() and (adapter / "adapter_config.json").exists()
    expected = hf_logits(module.model.eval(), batch)
    for out in (merged, adapter):
        loaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
        assert torch.allclose(hf_logits(loaded, batch), expected, atol=1e-4), out.name
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    assert not torch.allclose(hf_logits(base, batch), expected, atol=1e-3)  # LoRA training changed the model


def test_a_crash_during_a_checkpoint_save_leaves_last_loadable(tmp_path, tiny_model_dir, monkeypatch):
    saves = []
    real_save = L.Trainer.save_checkpoint

    def crashing_save(trainer, filepath, weights_only=False, storage_options=None):
        saves.append(filepath)
        if len(saves) == 2:  # half-written, then the process "dies"
            Path(filepath).write_bytes(b"torn")
            raise RuntimeError("killed during save")
        real_save(trainer, filepath, weights_only, storage_options)

    monkeypatch.setattr(L.Trainer, "save_checkpoint", crashing_save)
    data = write_traces(tmp_path / "traces.jsonl", n=16)
    dm = TraceDataModule(tokenizer_path=str(tiny_model_dir), train_file=str(data), max_seq_len=128, batch_size=2)
    ckpt = AtomicCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last="link", every_n_train_steps=1)
    trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_progress_bar=False, callbacks=[ckpt])
    failed = r"writing the checkpoint failed \(killed during save.*last\.ckpt still holds"
    with pytest.raises(ValueError, match=failed):
        trainer.fit(SFTModule(model_path=str(tiny_model_dir)), dm)
    last = tmp_path / "ckpt" / "last.ckpt"
    assert last.is_symlink() and torch.load(last, weights_only=False)["global_step"] == 1
    # the torn file is removed; the last good checkpoint and the link to it stay
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["epoch=0-step=1.ckpt", "last.ckpt"]


def test_full_finetune_export_loads_in_transformers_and_vllm(tmp_path, tiny_model_dir):
    from astro_pl.data.chat import render_prompt

    module = SFTModule(model_path=str(tiny_model_dir), optim=OptimArgs(lr=1e-2, warmup_ratio=0.0))
    out = tmp_path / "export"
    batch = fit(tmp_path, tiny_model_dir, module, HFExport(str(out), dtype="float32"))
    loaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert torch.allclose(hf_logits(loaded, batch), hf_logits(module.model.eval(), batch), atol=1e-5)
    assert loaded.config.use_cache and loaded.generation_config.use_cache  # training turned it off; generation needs it

    tokenizer = module.tokenizer
    prompt = render_prompt(tokenizer, "Evaluate 3 + 4 * 5.")
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hf_tokens = loaded.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None)[0, ids.shape[1]:]
    # In a process of its own: vLLM's process group is process-wide, and the session's shared engine must survive.
    script = (
        "import json, sys\n"
        "from astro_pl.rollout.base import EngineArgs, SamplingArgs\n"
        "from astro_pl.rollout.vllm import VLLMEngine\n"
        "engine = VLLMEngine(EngineArgs(model=sys.argv[1], dtype='float32', max_model_len=256, enforce_eager=True))\n"
        "[[c]] = engine.generate([sys.argv[2]], SamplingArgs(temperature=0.0, max_tokens=12, logprobs=False))\n"
        "print('TOKENS', json.dumps(c.token_ids))\n"
    )
    run = subprocess.run([sys.executable, "-c", script, str(out), prompt], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    token_ids = json.loads(run.stdout.split("TOKENS ", 1)[1])
    assert token_ids[: len(hf_tokens)] == hf_tokens.tolist()[: len(token_ids)]
    assert len(token_ids) > 0
