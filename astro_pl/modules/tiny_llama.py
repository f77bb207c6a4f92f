"""Tiny Llama, Qwen2, Qwen3 and LFM2 models and tokenizers made locally, for CPU runs and tests (no hub downloads).

`train_tokenizer` fits a byte-level BPE on the texts a run will see; `build_tiny_model` writes a randomly
initialised model of one of `ARCHITECTURES` in Hugging Face format that transformers and vLLM both load. The Qwen
ones carry what sets them apart from Llama, so weight sync, export and chat rendering meet it on CPU: Qwen2 has
q/k/v biases, Qwen3 per-head q/k RMSNorms and a chat template with a thinking switch. LFM2 (Liquid AI's hybrid)
replaces some attention layers by gated short convolutions over the last 3 tokens: a previous-token feature by
construction, which an in-context look-up (an induction circuit) otherwise has to learn in attention first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    Lfm2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

from astro_pl.data.chat import PLAIN_CHAT_TEMPLATE, QWEN3_CHAT_TEMPLATE
from astro_pl.errors import UsageError
from astro_pl.options import parse_dataclass
from astro_pl.runfiles import read_jsonl

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>"]

ARCHITECTURES = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config, "lfm2": Lfm2Config}
"""`--architecture` choices: the Hugging Face config class each builds."""

QWEN2_UNK_TOKEN = "<|endoftext|>"

QWEN3_TURN_TOKENS = ["<|im_start|>", "<|im_end|>"]
QWEN3_THINK_TOKENS = ["<think>", "</think>"]
"""Added to a Qwen3 tokenizer as Qwen3's own are: the turn markers special (<|im_end|> is the EOS), the think tags
ordinary added tokens, so they stay in decoded text where the trace's reasoning starts and ends."""


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 512,
                    split_digits: bool = True) -> PreTrainedTokenizerFast:
    """Trains a byte-level BPE tokenizer with BOS/EOS/PAD and the plain chat template, and saves it.

    With `split_digits`, digits are split one per token (as in Llama 3 / Qwen): a number is then spelled the same
    way wherever it appears, which is what lets a tiny model learn arithmetic from a few thousand traces. Without
    it, a run of digits is still cut off from the text around it (so "57" is the same token after a space, a ">"
    or a line break) and BPE may merge it whole: one token per node id of the graph task.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=split_digits), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", padding_side="left"
    )
    fast.chat_template = PLAIN_CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
    return fast


def tiny_config(
    architecture: str,
    vocab_size: int,
    hidden_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    num_key_value_heads: int | None = None,
    head_dim: int | None = None,
    rope_theta: float = 10_000.0,
    intermediate_size: int = 256,
    max_position_embeddings: int = 2048,
    bos_token_id: int | None = 1,
    eos_token_id: int = 2,
    pad_token_id: int = 0,
    conv_layers: tuple[int, ...] = (0,),
) -> PretrainedConfig:
    """A config of `architecture` (one of `ARCHITECTURES`); head_dim (default hidden/heads) must be one vLLM's
    CPU attention supports (32, 64, 128...). Key/value heads default to the attention heads (no grouping).
    `conv_layers` (LFM2 only) are the indices of the layers that are short convolutions; the rest attend."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"--architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}")
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads or num_attention_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        torch_dtype="float32",
    )
    if architecture == "lfm2":
        return Lfm2Config(**common, **lfm2_fields(hidden_size, num_hidden_layers, num_attention_heads, head_dim,
                                                  rope_theta, conv_layers))
    # Qwen3 defaults head_dim to 128; the others take hidden/heads unless told
    extra = {"head_dim": head_dim or hidden_size // num_attention_heads} if head_dim or architecture == "qwen3" else {}
    return ARCHITECTURES[architecture](**common, rope_theta=rope_theta, tie_word_embeddings=False, **extra)


def lfm2_fields(hidden_size: int, num_hidden_layers: int, num_attention_heads: int, head_dim: int | None,
                rope_theta: float, conv_layers: tuple[int, ...]) -> dict:
    """What an LFM2 config needs beyond the common sizes for vLLM's Lfm2ForCausalLM to run it as transformers does.

    vLLM always ties the output layer to the embedding and reads the conv and MLP widths from `conv_dim` and
    `block_dim` (fields of Liquid AI's released configs that transformers' `Lfm2Config` leaves out); the MLP keeps
    `intermediate_size` as given (LFM2 would otherwise round it up to a multiple of 256). vLLM sizes heads as
    hidden/heads, so a `head_dim` other than that is refused.
    """
    if head_dim is not None and head_dim * num_attention_heads != hidden_size:
        raise ValueError(f"lfm2 heads are hidden_size / num_attention_heads ({hidden_size // num_attention_heads}), "
                         f"got --head_dim {head_dim}")
    bad = [i for i in conv_layers if not 0 <= i < num_hidden_layers]
    if bad or len(set(conv_layers)) >= num_hidden_layers:
        raise ValueError(f"--conv_layers must be distinct layer indices below {num_hidden_layers} that leave at least "
                         f"one attention layer, got {list(conv_layers)}")
    return dict(
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        layer_types=["conv" if i in conv_layers else "full_attention" for i in range(num_hidden_layers)],
        block_auto_adjust_ff_dim=False,
        conv_dim=hidden_size,
        block_dim=hidden_size,
        tie_word_embeddings=True,
    )


def qwen3_tokenizer(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """`tokenizer` made Qwen3-like in place: turn and think tokens added, <|im_end|> as EOS, no BOS, and the
    Qwen3-style chat template (its generation prompt honours `enable_thinking`)."""
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN3_TURN_TOKENS})
    tokenizer.add_tokens(QWEN3_THINK_TOKENS)
    tokenizer.eos_token, tokenizer.bos_token = "<|im_end|>", None
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(tokenizer_dir: str | Path, out_dir: str | Path, architecture: str = "llama", seed: int = 0,
                     **sizes) -> Path:
    """Writes a randomly initialised `architecture` model sized by `sizes` plus its tokenizer to `out_dir` (HF
    format); a Qwen3 gets the tokenizer made Qwen3-like (`qwen3_tokenizer`)."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir))
    if architecture == "qwen2":
        # transformers loads any qwen2 model's tokenizer as its Qwen2Tokenizer, which adds this token (its unknown
        # token) when missing: one id past the embedding. Present from the start, it is sized in.
        tokenizer.add_special_tokens({"unk_token": QWEN2_UNK_TOKEN})
    if architecture == "qwen3":
        qwen3_tokenizer(tokenizer)
    config = tiny_config(
        architecture,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **sizes,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    out_dir = Path(out_dir)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def build_tiny_llama(tokenizer_dir: str | Path, out_dir: str | Path, seed: int = 0, **sizes) -> Path:
    """Writes a randomly initialised Llama (`build_tiny_model` with architecture "llama")."""
    return build_tiny_model(tokenizer_dir, out_dir, "llama", seed, **sizes)


@dataclass
class TinyModelArgs:
    """`astro tiny-model`: fit a tokenizer on JSONL text fields and write a randomly initialised tiny model."""

    texts: str | list[str] = ""
    """JSONL file(s) whose text fields the BPE tokenizer is fitted on."""
    out: str = ""
    """Output folder (Hugging Face format)."""
    fields: list[str] = field(default_factory=lambda: ["problem", "trace"])
    """Text fields to read."""
    architecture: Literal["llama", "qwen2", "qwen3", "lfm2"] = "llama"
    """Model family: llama, qwen2 (q/k/v biases), qwen3 (q/k norms, thinking template) or lfm2 (short convolutions
    in the layers `conv_layers`, attention in the rest)."""
    vocab_size: int = 512
    """Tokenizer vocabulary (at least the 256 bytes and the special tokens)."""
    split_digits: bool = True
    """One token per digit (arithmetic); false lets BPE keep numbers whole (graph node ids)."""
    hidden_size: int = 128
    """Model width."""
    num_hidden_layers: int = 2
    """Decoder layers."""
    num_attention_heads: int = 2
    """Attention heads (must divide hidden_size unless head_dim is given)."""
    head_dim: int | None = None
    """Width of each attention head; None: hidden_size / heads. More heads than width allows (hidden 64, 4 heads of
    32) help a tiny model learn look-ups while keeping a head size vLLM's CPU attention runs."""
    conv_layers: list[int] = field(default_factory=lambda: [0])
    """lfm2 only: indices of the layers that are gated short convolutions over the last 3 tokens."""
    rope_theta: float = 10_000.0
    """RoPE base. A small base (100) turns more of each head's dimensions into fast-rotating, position-sensitive
    ones: the previous-token heads a look-up needs form sooner (short sequences only)."""
    intermediate_size: int = 256
    """MLP width."""
    max_position_embeddings: int = 2048
    """Longest sequence."""
    seed: int = 0
    """Initialisation seed."""
    overwrite: bool = False
    """Replace the files of a non-empty --out folder (a trained model there is lost)."""

    def sizes(self) -> dict:
        """The model's sizes as `tiny_config` takes them."""
        return dict(hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
                    num_attention_heads=self.num_attention_heads, head_dim=self.head_dim, rope_theta=self.rope_theta,
                    intermediate_size=self.intermediate_size, max_position_embeddings=self.max_position_embeddings,
                    **({"conv_layers": tuple(self.conv_layers)} if self.architecture == "lfm2" else {}))

    def __post_init__(self) -> None:
        """Refuses sizes the tokenizer or model would silently ignore or fail on, and a non-empty --out folder."""
        self.texts = [self.texts] if isinstance(self.texts, str) else list(self.texts)
        if not self.texts or not all(self.texts):
            raise UsageError("--texts is required (JSONL files of the traces or problems)")
        if not self.out:
            raise UsageError("--out is required (the folder to write the model to)")
        smallest_vocab = len(pre_tokenizers.ByteLevel.alphabet()) + len(SPECIAL_TOKENS)
        if self.vocab_size < smallest_vocab:
            raise UsageError(f"--vocab_size must be >= {smallest_vocab} (256 bytes + {len(SPECIAL_TOKENS)} special "
                             f"tokens), got {self.vocab_size}")
        for flag in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings", "rope_theta"):
            if getattr(self, flag) < 1:
                raise UsageError(f"--{flag} must be >= 1, got {getattr(self, flag)}")
        if self.head_dim is not None and self.head_dim < 1:
            raise UsageError(f"--head_dim must be >= 1, got {self.head_dim}")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise UsageError(f"--hidden_size {self.hidden_size} must be a multiple of --num_attention_heads "
                             f"{self.num_attention_heads}")
        try:  # the sizes as the model's config takes them (LFM2's layer layout and heads)
            tiny_config(self.architecture, self.vocab_size, **self.sizes())
        except ValueError as err:
            raise UsageError(str(err)) from None
        out = Path(self.out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not self.overwrite:
            raise UsageError(f"--out {out}: not empty (it may hold a trained model); pass --overwrite to replace it")


def main(argv: list[str] | None = None) -> int:
    """`astro tiny-model`: fit a tokenizer on trace/problem JSONL text fields and write a tiny Llama, Qwen2, Qwen3
    or LFM2."""
    cfg = parse_dataclass(TinyModelArgs, "astro tiny-model", main.__doc__, argv)
    out = Path(cfg.out)
    corpus = [str(row[k]) for path in cfg.texts for row in read_jsonl(path, missing_ok=False)
              for k in cfg.fields if k in row]
    if not any(text.strip() for text in corpus):
        raise UsageError(f"--texts {' '.join(cfg.texts)}: no text in the fields {cfg.fields}")
    train_tokenizer(corpus, out / "tokenizer", vocab_size=cfg.vocab_size, split_digits=cfg.split_digits)
    build_tiny_model(out / "tokenizer", out, cfg.architecture, seed=cfg.seed, **cfg.sizes())
    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(str(out)).parameters())
    print(f"tiny {cfg.architecture} with {params / 1e6:.2f}M parameters written to {out}")
    return 0
