"""`HFEngine`: rollouts with transformers `generate` (KV cache, left-padded batches), for when vLLM is absent.

Follows `VLLMEngine`'s conventions so the two are interchangeable:
- Text prompts are tokenized without special tokens (`render_prompt` already wrote the BOS).
- Log-probs are those of the sampling distribution: log-softmax of logits / temperature for the sampled token
  (temperature 1 when greedy), what an RL trainer recomputes; vLLM's `processed_logprobs` also renormalise over
  top-p, so RL samples with top_p = 1. They are recorded step by step by a logits processor, so memory stays at
  one [B, V] row block instead of `output_logits`' [T, B, V].
- Token ids keep the token that completed a stop string (and the EOS); the text drops both.
- Greedy (temperature 0) output matches vLLM token for token in float32.

Departs from vLLM in seeding: `generate` draws all rows of a batch from one generator, so a seeded call is
reproducible (same prompts, params and `max_batch_size`) but its samples differ from vLLM's per-prompt seeds.
The global RNG is left untouched (`torch.random.fork_rng`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from transformers import GenerationConfig, LogitsProcessor, PreTrainedModel, StoppingCriteria

from astro_pl.loading import load_causal_lm, load_tokenizer
from astro_pl.rollout.base import Completion, EngineArgs, SamplingArgs, completion_text, encode_prompts, first_stop


class LogprobRecorder(LogitsProcessor):
    """Keeps the log-softmax of logits / temperature and, one step later, picks the sampled token's entry.

    Custom processors run before transformers' temperature/top-p warpers, so the scores seen here are raw and the
    temperature is applied here.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = temperature
        self.last: torch.Tensor | None = None  # [B, V]
        self.picked: list[torch.Tensor] = []  # T x [B]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.last is not None:
            self.picked.append(self.last.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.last = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def finish(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """Log-probs of all new tokens, [B, T]."""
        if self.last is not None and len(self.picked) < new_tokens.shape[1]:
            self.picked.append(self.last.gather(-1, new_tokens[:, len(self.picked) :][:, :1]).squeeze(-1))
        return torch.stack(self.picked, dim=1)


class StopOnStrings(StoppingCriteria):
    """Marks a row done once its new text contains a stop string (checked on the last few tokens only)."""

    def __init__(self, tokenizer, stop: Sequence[str], prompt_len: int) -> None:
        self.tokenizer, self.stop, self.prompt_len = tokenizer, tuple(stop), prompt_len
        self.window = max(len(s) for s in stop) + 4  # a token decodes to >= 1 char, apart from partial bytes

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.BoolTensor:
        tails = self.tokenizer.batch_decode(input_ids[:, max(self.prompt_len, input_ids.shape[1] - self.window) :])
        return torch.tensor([any(s in t for s in self.stop) for t in tails], device=input_ids.device)


def trim_completion(tokenizer, ids: list[int], logprobs: list[float], eos_ids: set[int], params: SamplingArgs):
    """Cuts one row's new tokens after the EOS or after the token that completed the first stop string.

    Returns:
        The `Completion`: text without stop string or EOS, ids and log-probs up to and including the stopping token.
    """

    def decode(k: int) -> str:
        return tokenizer.decode(ids[:k], skip_special_tokens=True)

    reason = "length"
    eos_at = next((k for k, t in enumerate(ids) if t in eos_ids), None)
    if eos_at is not None:
        ids, reason = ids[: eos_at + 1], "stop"
    if params.stop and first_stop(decode(len(ids)), params.stop) >= 0:
        lo, hi = 1, len(ids)  # binary search for the shortest prefix whose text holds a stop string
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if first_stop(decode(mid), params.stop) >= 0 else (mid + 1, hi)
        ids, reason = ids[:lo], "stop"
    return Completion(completion_text(tokenizer, ids, params.stop), ids, logprobs[: len(ids)], reason)


class HFEngine:
    """Rollout engine over a transformers causal LM.

    Args:
        args: Model and tokenizer paths and dtype (vLLM-only fields are ignored).
        max_batch_size: Most sequences (prompts x samples) decoded together; caps memory.
    """

    def __init__(self, args: EngineArgs, max_batch_size: int = 64) -> None:
        model = load_causal_lm(args.model, args.dtype)
        if torch.cuda.is_available():
            model = model.cuda()
        self.wrap(model.eval(), load_tokenizer(args.tokenizer or args.model), max_batch_size)

    @classmethod
    def from_model(cls, model: PreTrainedModel, tokenizer, max_batch_size: int = 64) -> HFEngine:
        """Wraps a model already in memory (RL's fallback engine samples from the policy itself)."""
        engine = cls.__new__(cls)
        engine.wrap(model, tokenizer, max_batch_size)
        return engine

    def wrap(self, model: PreTrainedModel, tokenizer, max_batch_size: int) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model, self.tokenizer, self.max_batch_size = model, tokenizer, max_batch_size
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos = tokenizer.eos_token_id if eos is None else eos
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def generate(self, prompts: Sequence[str | list[int]], params: SamplingArgs) -> list[list[Completion]]:
        """Returns `params.n` completions for each prompt; see the module docstring for seeds and log-probs."""
        rows = [ids for ids in encode_prompts(self.tokenizer, prompts) for _ in range(params.n)]
        flat: list[Completion] = []
        for start in range(0, len(rows), self.max_batch_size):
            seed = None if params.seed is None else params.seed + start
            flat += self.generate_batch(rows[start : start + self.max_batch_size], params, seed)
        return [flat[i * params.n : (i + 1) * params.n] for i in range(len(rows) // params.n)]

    @torch.no_grad()
    def generate_batch(self, rows: list[list[int]], params: SamplingArgs, seed: int | None) -> list[Completion]:
        device = self.model.device
        width = max(len(r) for r in rows)
        input_ids = torch.tensor([[self.pad_id] * (width - len(r)) + r for r in rows], device=device)  # [B, L]
        attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        recorder = LogprobRecorder(params.temperature or 1.0)
        stopping = [StopOnStrings(self.tokenizer, params.stop, width)] if params.stop else []
        # Neutral values set explicitly, or the model's generation_config defaults (top_k, penalties) fill them in.
        sampling = {} if params.temperature == 0 else dict(temperature=params.temperature, top_p=params.top_p, top_k=0)
        config = GenerationConfig(
            do_sample=bool(sampling),
            **sampling,
            repetition_penalty=1.0,
            max_new_tokens=params.max_tokens,
            eos_token_id=sorted(self.eos_ids),
            pad_token_id=self.pad_id,
            use_cache=True,  # a training config may carry use_cache=False; without the KV cache decode is ~20x slower
        )
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            sequences = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=config,
                logits_processor=[recorder],
                stopping_criteria=stopping,
            )
        new = sequences[:, width:]  # [B, T]
        logprobs = recorder.finish(new).tolist() if params.logprobs else [[] for _ in rows]
        return [
            trim_completion(self.tokenizer, ids, lps if params.logprobs else [], self.eos_ids, params)
            for ids, lps in zip(new.tolist(), logprobs, strict=True)
        ]

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copies tensors into the model by Hugging Face parameter name (no KV cache outlives a call)."""
        state = self.model.state_dict()
        with torch.no_grad():
            for name, tensor in named_tensors:
                if name not in state:
                    raise KeyError(f"HFEngine.load_weights: the model has no parameter named {name!r}")
                state[name].copy_(tensor)

    def sleep(self) -> bool:
        """No-op (returns False): the model stays where it is."""
        return False

    def wake_up(self) -> None:
        """No-op."""

    def close(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
