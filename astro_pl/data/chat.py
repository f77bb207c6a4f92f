"""Rendering a problem (and optionally its solution) as model text: the one place prompts are formatted.

Search, SFT, RL and evaluation all call `render_prompt`, so a model sees the same prompt format in every stage.
Tokenizers with a chat template use it (problem = user turn); others get a plain template. Templates with a thinking
switch (Qwen3's) read `enable_thinking`; the others ignore it.
"""

from __future__ import annotations

PLAIN_USER = "<|user|>\n"
PLAIN_ASSISTANT = "\n<|assistant|>\n"

# The same layout as the plain template, as a Jinja chat template, given to the tokenizers we train ourselves.
PLAIN_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|>\n{{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}<|assistant|>\n{{ m['content'] }}{{ eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# Qwen3's layout in small, given to the tiny Qwen3: with thinking off the generation prompt already holds an empty
# think block, so the model answers without reasoning (Qwen3's own template does the same).
QWEN3_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)


def render_prompt(tokenizer, problem: str, system_prompt: str | None = None, enable_thinking: bool = True) -> str:
    """The prompt text for a problem, ending where the model's answer starts.

    `enable_thinking` goes to the chat template: false asks a Qwen3-style model to answer without a reasoning block.
    """
    template = getattr(tokenizer, "chat_template", None)
    if template:
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": problem}
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             enable_thinking=enable_thinking)
    bos = tokenizer.bos_token or ""
    system = f"{system_prompt}\n" if system_prompt else ""
    return f"{bos}{system}{PLAIN_USER}{problem}{PLAIN_ASSISTANT}"


def render_example(tokenizer, problem: str, response: str, system_prompt: str | None = None) -> tuple[str, str]:
    """(prompt, completion) text of a training example; the completion ends with the EOS token."""
    return render_prompt(tokenizer, problem, system_prompt), render_completion(tokenizer, response)


def render_completion(tokenizer, response: str) -> str:
    """The completion text of a training example: the response, then the EOS token."""
    return response + (tokenizer.eos_token or "")
