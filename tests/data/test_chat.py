"""Prompt rendering: the plain layout, and the Qwen3-style template's thinking switch."""

from __future__ import annotations

from transformers import AutoTokenizer

from astro_pl.data.chat import render_example, render_prompt


def test_plain_template_renders_user_then_assistant_and_ignores_the_switch(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    expected = "<s><|user|>\nEvaluate 1 + 2.\n<|assistant|>\n"
    assert render_prompt(tokenizer, "Evaluate 1 + 2.") == expected
    assert render_prompt(tokenizer, "Evaluate 1 + 2.", enable_thinking=False) == expected


def qwen3_tokenizer(tiny_tokenizer_dir, tmp_path):
    from astro_pl.modules.tiny_llama import build_tiny_model

    return AutoTokenizer.from_pretrained(str(build_tiny_model(tiny_tokenizer_dir, tmp_path, "qwen3", hidden_size=64,
                                                              num_attention_heads=1, intermediate_size=64)))


def test_qwen3_template_honours_enable_thinking(tiny_tokenizer_dir, tmp_path):
    tokenizer = qwen3_tokenizer(tiny_tokenizer_dir, tmp_path)
    turns = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nEvaluate 1 + 2.<|im_end|>\n"
    thinking = render_prompt(tokenizer, "Evaluate 1 + 2.", "Be brief.")
    assert thinking == turns + "<|im_start|>assistant\n"  # the model opens its own <think> block
    assert render_prompt(tokenizer, "Evaluate 1 + 2.", "Be brief.", enable_thinking=True) == thinking
    off = render_prompt(tokenizer, "Evaluate 1 + 2.", "Be brief.", enable_thinking=False)
    assert off == turns + "<|im_start|>assistant\n<think>\n\n</think>\n\n"  # an empty think block: answer directly
    # the think tags are one token each, so the model sees its reasoning block closed
    ids = tokenizer(off, add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids[-6:]) == ["<think>", "Ċ", "Ċ", "</think>", "Ċ", "Ċ"]


def test_qwen3_training_example_ends_the_turn_with_im_end(tiny_tokenizer_dir, tmp_path):
    tokenizer = qwen3_tokenizer(tiny_tokenizer_dir, tmp_path)
    prompt, completion = render_example(tokenizer, "Evaluate 1 + 2.", "<think>\n1 + 2 = 3\n</think>\n\n\\boxed{3}")
    assert prompt == "<|im_start|>user\nEvaluate 1 + 2.<|im_end|>\n<|im_start|>assistant\n"
    assert completion.endswith("\\boxed{3}<|im_end|>")
