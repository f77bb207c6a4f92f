"""The tiny model builders: what sets Qwen2, Qwen3 and LFM2 apart from Llama is really there, and `astro tiny-model
--architecture` writes each one loadable by transformers."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from astro_pl.cli import main as astro
from astro_pl.modules.tiny_llama import tiny_config


def test_qwen_models_carry_their_architecture(tiny_qwen_dir, tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_qwen_dir))
    config, names = model.config, dict(model.named_parameters())
    llama = dict(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).named_parameters())
    attn = "model.layers.1.self_attn"
    assert config.model_type == tiny_qwen_dir.name and config.num_hidden_layers == 2 and config.hidden_size == 128
    # grouped query attention: 2 query heads of 64 share one key/value head
    assert names[f"{attn}.q_proj.weight"].shape == (128, 128) and names[f"{attn}.k_proj.weight"].shape == (64, 128)
    qwen2_only = {f"{attn}.{p}_proj.bias" for p in "qkv"}
    qwen3_only = {f"{attn}.q_norm.weight", f"{attn}.k_norm.weight"}
    if config.model_type == "qwen2":
        assert qwen2_only <= names.keys() and not qwen3_only & names.keys()
    else:
        assert qwen3_only <= names.keys() and not qwen2_only & names.keys()
        assert config.head_dim == 64 and names[f"{attn}.q_norm.weight"].shape == (64,)  # per head, not per layer
    assert not ({f"{attn}.q_proj.bias", f"{attn}.q_norm.weight"} & llama.keys())
    assert not config.tie_word_embeddings and "lm_head.weight" in names  # as Qwen3-8B: vLLM gets lm_head itself


def test_the_tokenizer_transformers_loads_fits_the_embedding(tiny_qwen_dir, tiny_tokenizer_dir):
    """transformers loads every qwen2 model's tokenizer as its Qwen2Tokenizer (own pre-tokenizer, adds
    <|endoftext|> when missing); what it loads must tokenize as the trained BPE does, within the vocabulary."""
    from transformers import PreTrainedTokenizerFast

    from tests.conftest import tokenizer_corpus

    loaded = AutoTokenizer.from_pretrained(str(tiny_qwen_dir))
    saved = PreTrainedTokenizerFast.from_pretrained(str(tiny_qwen_dir))
    assert len(loaded) == AutoConfig.from_pretrained(str(tiny_qwen_dir)).vocab_size
    base = PreTrainedTokenizerFast.from_pretrained(str(tiny_tokenizer_dir))
    for text in tokenizer_corpus(40)[-80:]:  # MATH-500 problems and solutions
        ids = loaded(text, add_special_tokens=False)["input_ids"]
        assert ids == saved(text, add_special_tokens=False)["input_ids"] == base(text, add_special_tokens=False)[
            "input_ids"]


def test_tiny_qwen3_tokenizer_ends_turns_with_im_end(tiny_qwen_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_qwen_dir))
    config = AutoConfig.from_pretrained(str(tiny_qwen_dir))
    if config.model_type == "qwen2":  # the plain template and EOS of the shared tokenizer
        assert tokenizer.eos_token == "</s>" and "<|im_start|>" not in tokenizer.get_vocab()
        return
    assert tokenizer.eos_token == "<|im_end|>" and config.eos_token_id == tokenizer.eos_token_id
    assert tokenizer.bos_token is None
    # the think tags are single, ordinary tokens: they stay in decoded text; the turn markers are special
    ids = tokenizer("<think>\n\n</think>", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens([ids[0], ids[-1]]) == ["<think>", "</think>"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<think>\n\n</think>"
    assert tokenizer.decode(tokenizer.convert_tokens_to_ids(["<|im_end|>"]), skip_special_tokens=True) == ""


def test_unknown_architecture_names_the_flag():
    with pytest.raises(ValueError, match="--architecture must be one of llama, qwen2, qwen3, lfm2, got 'gpt2'"):
        tiny_config("gpt2", vocab_size=100)


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "qwen3"])
def test_head_dim_decouples_heads_from_width(architecture):
    config = tiny_config(architecture, vocab_size=100, hidden_size=64, num_attention_heads=4, head_dim=32)
    model = AutoModelForCausalLM.from_config(config)
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (4 * 32, 64)
    plain = AutoModelForCausalLM.from_config(tiny_config(architecture, vocab_size=100, hidden_size=64,
                                                         num_attention_heads=2))
    assert plain.model.layers[0].self_attn.q_proj.weight.shape == (64, 64)


def test_lfm2_has_its_convolutions_where_asked_and_ties_its_output_layer():
    config = tiny_config("lfm2", vocab_size=100, hidden_size=64, num_hidden_layers=4, num_attention_heads=2,
                         intermediate_size=96, conv_layers=(0, 2))
    model = AutoModelForCausalLM.from_config(config)
    layers = model.model.layers
    assert [hasattr(layer, "conv") for layer in layers] == [True, False, True, False]
    assert layers[0].conv.conv.weight.shape == (64, 1, 3)  # depthwise over the last 3 tokens
    assert layers[1].self_attn.q_proj.weight.shape == (64, 64)  # 2 heads of 32
    assert layers[1].feed_forward.w1.weight.shape == (96, 64)  # not rounded up to a multiple of 256
    assert model.lm_head.weight is model.model.embed_tokens.weight  # vLLM's LFM2 always ties them
    assert config.conv_dim == config.block_dim == 64  # read by vLLM


@pytest.mark.parametrize(("sizes", "message"), [
    ({"conv_layers": (0, 1)}, "at least one attention layer"),
    ({"conv_layers": (2,)}, "below 2"),
    ({"head_dim": 16}, "lfm2 heads are hidden_size / num_attention_heads"),
])
def test_lfm2_refuses_a_layout_vllm_cannot_run(sizes, message):
    with pytest.raises(ValueError, match=message):
        tiny_config("lfm2", vocab_size=100, hidden_size=64, num_attention_heads=2, **sizes)


@pytest.mark.parametrize("architecture", ["qwen2", "qwen3", "lfm2"])
def test_tiny_model_command_writes_the_architecture(tmp_path, architecture, capsys):
    texts = tmp_path / "traces.jsonl"
    texts.write_text("".join(json.dumps({"problem": f"Evaluate {i} + {i}.", "trace": f"\\boxed{{{2 * i}}}"}) + "\n"
                             for i in range(50)))
    out = tmp_path / "model"
    assert astro(["tiny-model", "--texts", str(texts), "--out", str(out), "--architecture", architecture,
                  "--vocab_size", "300", "--hidden_size", "64", "--num_attention_heads", "1",
                  "--intermediate_size", "96"]) in (0, None)
    assert f"tiny {architecture} with" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.config.model_type == architecture and model.config.hidden_size == 64
    assert model.config.vocab_size == len(AutoTokenizer.from_pretrained(str(out)))


def test_tiny_model_command_names_a_bad_lfm2_layout(tmp_path, capsys):
    assert astro(["tiny-model", "--texts", "x.jsonl", "--out", str(tmp_path / "m"), "--architecture", "lfm2",
                  "--num_hidden_layers", "2", "--conv_layers", "[0, 1]"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("astro tiny-model: error: --conv_layers must be distinct layer indices below 2")


def test_tiny_model_command_rejects_an_unknown_architecture(tmp_path, capsys):
    assert astro(["tiny-model", "--texts", "x.jsonl", "--out", str(tmp_path / "m"), "--architecture", "gpt2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("astro tiny-model: error:") and "architecture" in err
