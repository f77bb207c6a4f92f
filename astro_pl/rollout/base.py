"""The one interface every rollout engine implements, and the records it returns.

Search, RL and evaluation talk to engines only through `RolloutEngine`; only `rollout/vllm.py` imports vllm.
Prompts are already-rendered text (chat template applied by the caller) or token ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class SamplingArgs:
    """How to sample completions.

    Args:
        n: Samples per prompt.
        temperature: Softmax temperature; 0 means greedy.
        top_p: Nucleus sampling mass.
        max_tokens: Most new tokens per sample.
        stop: Strings that end a sample; the stop string itself is not included in the text.
        seed: Base seed; prompt i of a call uses seed + i, so equal calls give equal samples.
        logprobs: Return the engine's log-prob of each sampled token.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = True

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"SamplingArgs.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"SamplingArgs.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingArgs.top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"SamplingArgs.max_tokens must be >= 1, got {self.max_tokens}")
        object.__setattr__(self, "stop", tuple(self.stop))


class Completion(NamedTuple):
    """One sampled continuation of one prompt."""

    text: str
    """Decoded new text, without the stop string."""
    token_ids: list[int]
    """Sampled token ids, [T]."""
    logprobs: list[float]
    """Log-prob of each sampled token under the sampling distribution (logits / temperature), [T] (empty when not
    requested)."""
    finish_reason: str
    """"stop" (EOS or stop string) or "length" (hit max_tokens)."""


@runtime_checkable
class RolloutEngine(Protocol):
    """Generates completions and takes new weights; implemented by `VLLMEngine` and `HFEngine`."""

    def generate(self, prompts: Sequence[str | list[int]], params: SamplingArgs) -> list[list[Completion]]:
        """Returns, for each prompt, `params.n` completions."""
        ...

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replaces the model weights (Hugging Face parameter names) and drops any cached prefixes."""
        ...

    def sleep(self) -> bool:
        """Frees accelerator memory between rollouts; returns whether it did (False where unsupported).

        A sleeping engine may hold no weights: `load_weights`, then `wake_up`, before the next `generate`.
        """
        ...

    def wake_up(self) -> None:
        """Ends `sleep` (a no-op when awake)."""
        ...

    def close(self) -> None:
        """Releases the engine."""
        ...


def encode_prompts(tokenizer, prompts: Sequence[str | list[int]]) -> list[list[int]]:
    """Token ids of each prompt; text is encoded without special tokens since `render_prompt` already wrote the BOS."""
    if isinstance(prompts, str):
        raise TypeError("generate() takes a list of prompts, got a single string")
    ids = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            ids.append(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        else:
            ids.append([int(t) for t in prompt])
        if not ids[-1]:
            raise ValueError(f"prompt {i} is empty")
    return ids


def first_stop(text: str, stop: Sequence[str]) -> int:
    """Index of the earliest stop string in `text`, or -1."""
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(hits) if hits else -1


def completion_text(tokenizer, token_ids: list[int], stop: Sequence[str]) -> str:
    """The text both engines report: the decoded tokens without special tokens, cut before the first stop string.

    Decoding the ids (rather than keeping vLLM's incremental text) makes the engines agree on a trailing partial
    UTF-8 character, which vLLM's detokenizer holds back and `decode` shows as U+FFFD.
    """
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    cut = first_stop(text, stop)
    return text[:cut] if cut >= 0 else text


@dataclass
class EngineArgs:
    """How to build an engine: the one engine spec of search, RL and evaluation (`--engine.kind hf`, ...).

    Args:
        kind: "vllm" (in-process vLLM) or "hf" (transformers' generate).
        model: Hugging Face model directory or hub name; None takes the command's model (RL: the policy's path;
            eval: `--model`).
        tokenizer: Tokenizer directory; defaults to `model`.
        dtype: "auto", "float32", "bfloat16" or "float16".
        max_model_len: Longest prompt + completion in tokens.
        gpu_memory_utilization: Fraction of GPU memory vLLM may claim (GPU only).
        tensor_parallel_size: vLLM tensor parallel degree (GPU only).
        enforce_eager: Skip compilation / CUDA graphs (faster start, slower decode).
        enable_sleep_mode: vLLM sleep mode to free GPU memory during training (GPU only).
        seed: Engine seed.
        extra: Further keyword arguments passed to the engine constructor as is.
    """

    kind: Literal["vllm", "hf"] = "vllm"
    model: str | None = None
    tokenizer: str | None = None
    dtype: str = "auto"
    max_model_len: int = 2048
    gpu_memory_utilization: float = 0.5
    tensor_parallel_size: int = 1
    enforce_eager: bool = False
    enable_sleep_mode: bool = False
    seed: int = 0
    extra: dict = field(default_factory=dict)
