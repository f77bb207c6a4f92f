"""`astro pad-heads`: a model trained with heads of 16 becomes one with heads of 32 (the smallest vLLM's CPU
attention runs) that computes the same logits, in transformers and in the real vLLM engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from astro_pl.cli import main as astro
from astro_pl.errors import UsageError
from astro_pl.modules.head_padding import pad_heads, padded_index
from astro_pl.modules.tiny_llama import build_tiny_model, tiny_config
from tests.rollout.test_qwen_engines import perturb

REPO = Path(__file__).resolve().parents[2]


def small_heads(architecture: str):
    config = tiny_config(architecture, vocab_size=100, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, rope_theta=100.0)
    model = AutoModelForCausalLM.from_config(config)
    perturb(model, 0)  # Qwen2's biases start at zero; the padding must carry them too
    return model.eval()


def test_padded_index_keeps_the_rotate_half_pairs_aligned():
    assert padded_index(4, 8).tolist() == [0, 1, 4, 5]  # pair (0, 2) -> (0, 4), pair (1, 3) -> (1, 5)


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_padded_heads_give_the_same_logits(architecture):
    model = small_heads(architecture)
    padded = pad_heads(model, 32).eval()
    assert padded.config.head_dim == 32 and padded.config.rope_parameters["rope_theta"] == pytest.approx(100.0 ** 2)
    assert padded.model.layers[0].self_attn.k_proj.weight.shape == (2 * 32, 64)  # grouped key/value heads
    ids = torch.randint(0, 100, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = model(ids).logits, padded(ids).logits
    assert expected.abs().max() > 0.1  # logits that differ by position and token, not a flat output
    assert torch.allclose(got, expected, atol=1e-5)
    widened = pad_heads(model, 64)  # any larger even size, not only twice
    with torch.no_grad():
        assert torch.allclose(widened(ids).logits, expected, atol=1e-5)


def test_padding_refuses_what_it_cannot_keep_exact():
    qwen3 = AutoModelForCausalLM.from_config(tiny_config("qwen3", vocab_size=100, hidden_size=64,
                                                         num_attention_heads=4, head_dim=16))
    with pytest.raises(UsageError, match="needs one of llama, qwen2, got qwen3"):  # q/k norms would see the zeros
        pad_heads(qwen3, 32)
    with pytest.raises(UsageError, match="must be even and above the model's 16, got 16"):
        pad_heads(small_heads("llama"), 16)


def greedy_ids(small_dir: str, padded_dir: str) -> dict:
    """Runs in the child: greedy ids of vLLM on the padded model and of transformers on the original."""
    from astro_pl.data.chat import render_prompt
    from astro_pl.loading import load_causal_lm
    from astro_pl.rollout.base import EngineArgs, SamplingArgs
    from astro_pl.rollout.hf import HFEngine
    from astro_pl.rollout.vllm import VLLMEngine
    from tests.rollout.test_engines import PROBLEMS, ids_of

    engine = VLLMEngine(EngineArgs(model=padded_dir, dtype="float32", max_model_len=512, enforce_eager=True))
    trainer = HFEngine.from_model(load_causal_lm(small_dir, "float32").eval(), engine.tokenizer)
    prompts = [render_prompt(trainer.tokenizer, p) for p in PROBLEMS]
    greedy = SamplingArgs(temperature=0, max_tokens=16)
    out = {"vllm": ids_of(engine.generate(prompts, greedy)), "hf": ids_of(trainer.generate(prompts, greedy))}
    engine.close()
    return out


def test_vllm_runs_the_padded_model_as_transformers_runs_the_original(tiny_tokenizer_dir, tmp_path):
    small = build_tiny_model(tiny_tokenizer_dir, tmp_path / "small", "llama", seed=0, hidden_size=64,
                             num_attention_heads=4, head_dim=16)
    model = AutoModelForCausalLM.from_pretrained(str(small))
    perturb(model, 1)
    model.save_pretrained(str(small))
    assert astro(["pad-heads", "--model", str(small), "--out", str(tmp_path / "padded"), "--head_dim", "32"]) == 0
    code = "import json, sys; from tests.modules.test_head_padding import greedy_ids; " \
           "print('RESULT', json.dumps(greedy_ids(sys.argv[1], sys.argv[2])))"
    run = subprocess.run([sys.executable, "-c", code, str(small), str(tmp_path / "padded")], cwd=REPO,
                         capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT ", 1)[1])
    assert result["vllm"] == result["hf"] and len({json.dumps(ids) for ids in result["hf"]}) > 1
