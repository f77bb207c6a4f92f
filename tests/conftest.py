"""Session-wide fixtures: the benchmark data folder, one tokenizer trained locally, and the tiny Llama, Qwen2 and
Qwen3 built on it.

Engines are expensive (vLLM start ~30 s on CPU), so the shared vLLM engine lives in tests/rollout/conftest-free
fixtures here and is started at most once per test session.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# Named benchmarks load from this offline folder (no hub here); subprocesses inherit it.
os.environ.setdefault("ASTRO_DATA_DIR", str(SHARED_DATA))


@pytest.fixture(autouse=True)
def _no_inherited_wandb_service():
    """A W&B run in this process records its service in WANDB_SERVICE, and a child `astro` run that inherits it logs
    through that service (its files land elsewhere, or the run fails once the service is gone). Under pytest-xdist
    any test may follow an in-process W&B test, so every test starts without it."""
    os.environ.pop("WANDB_SERVICE", None)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"benchmark data folder missing: {SHARED_DATA}"
    return SHARED_DATA


def tokenizer_corpus(limit: int = 300) -> list[str]:
    """Texts the tiny tokenizer is fitted on: synthetic-arithmetic-like lines and real MATH-500 text."""
    texts = [f"Evaluate {a} + {b} * {c}. Compute {b} * {c} = {b * c}. \\boxed{{{a + b * c}}}" for a in range(10)
             for b in range(10) for c in range(3)]
    with (SHARED_DATA / "math500.jsonl").open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= limit:
                break
            row = json.loads(line)
            texts += [row["problem"], row["solution"]]
    return texts


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """The locally trained 512-token BPE every tiny model is built on."""
    from astro_pl.modules.tiny_llama import train_tokenizer

    out = tmp_path_factory.mktemp("tiny") / "tokenizer"
    train_tokenizer(tokenizer_corpus(), out, vocab_size=512)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_tokenizer_dir) -> Path:
    """A randomly initialised 2-layer Llama (head_dim 64) with a locally trained tokenizer, in HF format."""
    from astro_pl.modules.tiny_llama import build_tiny_llama

    return build_tiny_llama(tiny_tokenizer_dir, tiny_tokenizer_dir.parent / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen_dirs(tiny_tokenizer_dir) -> dict[str, Path]:
    """A randomly initialised 2-layer Qwen2 (q/k/v biases) and Qwen3 (q/k norms, Qwen3-style chat template) by
    model type, hidden 128 with 2 query heads sharing 1 key/value head (grouped as in Qwen's releases), HF format."""
    from astro_pl.modules.tiny_llama import build_tiny_model

    root = tiny_tokenizer_dir.parent
    return {arch: build_tiny_model(tiny_tokenizer_dir, root / arch, arch, seed=0, num_key_value_heads=1)
            for arch in ("qwen2", "qwen3")}


@pytest.fixture(scope="session", params=["qwen2", "qwen3"])
def tiny_qwen_dir(request, tiny_qwen_dirs) -> Path:
    """Each of `tiny_qwen_dirs` in turn."""
    return tiny_qwen_dirs[request.param]


@pytest.fixture(scope="session")
def tiny_lfm2_dir(tiny_tokenizer_dir) -> Path:
    """A randomly initialised LFM2 of 3 layers, a short convolution then two attention layers (2 heads of 64),
    embedding and output layer tied as vLLM requires, HF format."""
    from astro_pl.modules.tiny_llama import build_tiny_model

    return build_tiny_model(tiny_tokenizer_dir, tiny_tokenizer_dir.parent / "lfm2", "lfm2", seed=0,
                            num_hidden_layers=3, conv_layers=(0,))


@pytest.fixture(scope="session")
def vllm_engine(tiny_model_dir):
    """One in-process vLLM engine on the tiny Llama for the whole session (eager: ~10 s start vs ~35 s compiled).

    Tests that change its weights must load the originals back before they return.
    """
    from astro_pl.rollout.base import EngineArgs
    from astro_pl.rollout.vllm import VLLMEngine

    engine = VLLMEngine(EngineArgs(model=str(tiny_model_dir), max_model_len=1024, enforce_eager=True))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def hf_engine(tiny_model_dir):
    """The transformers engine on the same tiny Llama (float32 on CPU); restore any weights you change."""
    from astro_pl.rollout.base import EngineArgs
    from astro_pl.rollout.hf import HFEngine

    engine = HFEngine(EngineArgs(model=str(tiny_model_dir)))
    yield engine
    engine.close()
