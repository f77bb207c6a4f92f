"""Section `rl_update`: the real `RLModule` update (gradient checkpointing, clipped-ratio loss, AdamW) of a randomly
initialised Llama-3.2-1B-shaped model on made-up rollouts, micro-batched three ways.

The module is driven through its public seams only: `attach_engine` takes `RandomCompletionEngine` (random
responses of log-uniform length up to `--rl_response_len`, every token at log-prob -2: no sampling to time),
`rewards` takes `alternating` (mixed rewards, so every group has an advantage), and the prompts come from
`DigitPromptTask` through the real `PromptDataModule`. Weight sync into the engine still runs (the engine drops what
it gets); only `time/train_s`, the update, is reported.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from transformers import LlamaConfig

from astro_pl.data.problems import Problem
from astro_pl.datamodules.prompts import PromptDataModule
from astro_pl.modules.experience import plan_micro_batches
from astro_pl.modules.optim import OptimArgs
from astro_pl.modules.rl import GRPOArgs, RLModule
from astro_pl.rollout.base import Completion, EngineArgs, SamplingArgs
from astro_pl.tasks.base import Split, Task
from gpu_sections.common import StepTimer, alternating, peak_memory_gib, profile_path, reset_memory, trainer

# name: (most sequences, most padded tokens) per micro-batch; 17408 is the 8B recipe's token cap
RL_MICRO_BATCHING = {"seqs2": (2, None), "seqs8": (8, None), "seqs8_tokens17408": (8, 17408)}


class DigitPromptTask(Task):
    """Problems whose prompt is `prompt_len` random digits, unrendered: with this bench's tokenizer (digits one per
    token, `train_tokenizer`) a prompt of exactly `prompt_len` tokens; with others, about that many."""

    def __init__(self, prompt_len: int, num_problems: int = 64, seed: int = 0):
        super().__init__()
        rng = random.Random(seed)
        self.items = [Problem(id=f"digits-{i}", problem="".join(rng.choices("0123456789", k=prompt_len)), answer="0")
                      for i in range(num_problems)]

    def problems(self, split: Split) -> dict[str, list[Problem]]:
        return {"train": self.items} if split == "train" else {}

    def prompt(self, tokenizer, problem: Problem) -> str:
        return problem.problem  # no chat template: its markers would add tokens to the length being measured


class RandomCompletionEngine:
    """A `RolloutEngine` whose completions are random tokens of log-uniform length `max_tokens`/16..`max_tokens`
    with log-prob -2 each, seeded by the call's seed (equal calls, equal completions). Weights it is sent are
    dropped."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def generate(self, prompts: Sequence[str | list[int]], params: SamplingArgs) -> list[list[Completion]]:
        gen = torch.Generator().manual_seed(params.seed or 0)
        low, high = math.log(max(1, params.max_tokens // 16)), math.log(params.max_tokens)
        outputs = []
        for _ in prompts:
            completions = []
            for _ in range(params.n):
                n = round(math.exp(low + (high - low) * float(torch.rand(1, generator=gen))))
                ids = torch.randint(3, self.vocab_size, (n,), generator=gen).tolist()
                completions.append(Completion("", ids, [-2.0] * n, "stop"))
            outputs.append(completions)
        return outputs

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        pass

    def sleep(self) -> bool:
        return False

    def wake_up(self) -> None:
        pass

    def close(self) -> None:
        pass


def rl_update_check(model_dir: Path, config: LlamaConfig, args, name: str) -> dict:
    """One micro-batching of the update: mean seconds per update after one warm-up, passes, peak memory."""
    size, tokens = RL_MICRO_BATCHING[name]
    if args.smoke:  # responses of <= 64 tokens: a cap that still splits them
        tokens = tokens and tokens // 64
    grpo = GRPOArgs(group_size=args.rl_group_size, micro_batch_size=size, micro_batch_tokens=tokens,
                    aggregation="token_mean")
    module = RLModule(str(model_dir), engine=EngineArgs(kind="hf"), rewards=[alternating], grpo=grpo,
                      gradient_checkpointing=True, sampling=SamplingArgs(max_tokens=args.rl_response_len),
                      optim=OptimArgs(lr=1e-6, warmup_ratio=0.0))
    module.attach_engine(RandomCompletionEngine(config.vocab_size))
    data = PromptDataModule(DigitPromptTask(args.rl_prompt_len), batch_size=args.rl_prompts)
    timer = StepTimer(1)
    reset_memory()
    trainer(1 + args.rl_steps, timer, profile_path(args, f"rl_update_{name}")).fit(module, datamodule=data)
    train_s = [m["time/train_s"] for m in timer.metrics]
    groups = module.last_rollout.groups
    lengths = torch.tensor([len(g.prompt_ids) + len(c.token_ids) for g in groups for c in g.completions])
    return {
        "update_s": round(sum(train_s) / len(train_s), 3),
        "passes": len(plan_micro_batches(lengths, size, tokens)),
        "sequences": len(lengths),
        "tokens": int(lengths.sum()),
        "prompt_tokens_mean": sum(len(g.prompt_ids) for g in groups) / len(groups),
        "loss_last": round(timer.metrics[-1]["train/loss"], 6),
        "peak_mem_gib": round(peak_memory_gib(), 2),
    }
