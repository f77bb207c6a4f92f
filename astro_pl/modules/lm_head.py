"""Running a Hugging Face causal LM with its LM head replaced by a loss on chosen positions (no full logits).

`head_output` calls the model as usual, with two hooks on the LM head for the length of the call: one hands the
head no positions (so it computes no logits), the other applies a function of (hidden states at the chosen
positions, head weight, head bias) and returns its result as the model's `logits`. Done inside the model's own
call, this works under FSDP2: the root module's parameters (embeddings, final norm, LM head) are gathered only
during its forward, and gathered again in backward because the result is an output of that forward (read
afterwards, `lm_head.weight` is a sharded DTensor). PEFT wrappers and gradient checkpointing are unaffected.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

HeadFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
"""(hidden [M, D] at the chosen positions, weight [V, D], bias [V] or None) -> any tensor."""


def output_projection(model: torch.nn.Module) -> torch.nn.Linear:
    """The model's LM head, checked to be a plain Linear (a LoRA-wrapped head's weight alone is not the map)."""
    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        raise ValueError(f"the output projection is a {type(head).__name__}, not a plain Linear: leave lm_head out "
                         "of --model.lora.target_modules")
    return head


def head_output(model: torch.nn.Module, fn: HeadFn, rows: torch.Tensor, cols: torch.Tensor, **inputs) -> torch.Tensor:
    """`fn(hidden[rows, cols], lm_head.weight, lm_head.bias)` from one call `model(**inputs, use_cache=False)`.

    Args:
        model: A Hugging Face causal LM (also under PEFT or FSDP2).
        fn: The loss or log-prob function applied in place of the LM head.
        rows: [M] batch rows of the chosen positions.
        cols: [M] sequence positions (of the model's input) of the chosen positions.
        **inputs: Model inputs (input_ids, position_ids, attention_mask, ...).

    Returns:
        What `fn` returned.
    """
    head = output_projection(model)
    hidden: list[torch.Tensor] = []

    def take_hidden(_module, args):
        hidden.append(args[0])  # [B, T, D] after the final norm
        return (args[0][:, :0],)  # the head itself computes nothing

    def apply_fn(module, _args, _output):
        return fn(hidden.pop()[rows, cols], module.weight, module.bias)

    handles = [head.register_forward_pre_hook(take_hidden), head.register_forward_hook(apply_fn)]
    try:
        return model(**inputs, use_cache=False).logits
    finally:
        for handle in handles:
            handle.remove()
