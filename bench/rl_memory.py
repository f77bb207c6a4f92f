"""Peak memory of one RL update at long responses: ours (`astro_pl.modules.policy_update`) vs TRL's GRPOTrainer.

The same batch on both sides: 8 sequences of a 32-token prompt and a 2048-token response (random token ids; the
update does not care what the text says), advantages +1 / -1, one optimiser step (AdamW, gradient clipping 1.0)
of a randomly initialised Llama with a 32K vocabulary (28M parameters, most of them in the embeddings and the LM
head, as in small real models; 2 layers keep the run short on this shared 2-core CPU), float32, all 8 sequences
in one forward/backward pass on both sides, activation checkpointing on both (what one runs at long responses;
`--no-checkpointing` turns it off on both). TRL's side is
`GRPOTrainer.compute_loss` on the batch its generation step would produce, then backward and the optimiser step
(its `train()` would first generate 16K tokens with `model.generate`, which is not what is measured here).

Each side runs in its own process. Peak memory = the highest resident set size sampled every 2 ms during the
update(s), minus the RSS just before (model, optimiser object and batch loaded on both sides). Prints ONE JSON line:

    {"bench": "rl_memory", ..., "ours": {"peak_mb", "step_s"}, "trl": {...}, "peak_ratio", "speed_ratio", "goals"}

Goal (issue 18): ours at most half TRL's peak, at no loss of speed (speed_ratio = TRL's step time / ours).

    .venv/bin/python bench/rl_memory.py [--steps 1] [--vocab 32000] [--response 2048] [--no-checkpointing]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from worker import print_result, run_worker

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

SEQUENCES, PROMPT, LR = 8, 32, 1e-5
MODEL = dict(hidden_size=384, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=6,
             intermediate_size=1024, max_position_embeddings=4096, tie_word_embeddings=False)


class PeakRSS:
    """Samples this process's resident set size in a thread; `peak_mb` is the highest minus the start."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval, self.peak, self.start = interval, 0, 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def peak_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def build_model(root: Path, vocab: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **MODEL))
    model.save_pretrained(root / "model")
    return root / "model"


def batch(vocab: int, response: int):
    """Prompt ids [S, P] and response ids [S, R] (seeded), advantages [S]."""
    import torch

    generator = torch.Generator().manual_seed(1)
    prompts = torch.randint(3, vocab, (SEQUENCES, PROMPT), generator=generator)
    responses = torch.randint(3, vocab, (SEQUENCES, response), generator=generator)
    advantages = torch.tensor([1.0, -1.0] * (SEQUENCES // 2))
    return prompts, responses, advantages


def load(model_dir: Path, checkpointing: bool):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="float32")
    model.config.use_cache = False
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def run_ours(model_dir: Path, vocab: int, response: int, steps: int, checkpointing: bool) -> dict:
    import torch

    from astro_pl.modules.experience import Group, pack_experience
    from astro_pl.modules.grpo_args import GRPOArgs
    from astro_pl.modules.policy_update import PolicyForward, UpdateScale, policy_update
    from astro_pl.rollout.base import Completion

    model = load(model_dir, checkpointing)
    prompts, responses, advantages = batch(vocab, response)
    grpo = GRPOArgs(group_size=2, micro_batch_size=SEQUENCES, aggregation="seq_mean", max_grad_norm=1.0)
    groups = [Group(prompts[i].tolist(), [Completion("", responses[i + j].tolist(), [0.0] * response, "length")
                                          for j in range(2)], [1.0, -1.0], "") for i in range(0, SEQUENCES, 2)]
    exp = pack_experience(groups, advantages, pad_id=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    times = []
    with PeakRSS() as peak:
        for step in range(steps):
            start = time.perf_counter()
            policy_update(PolicyForward(model), None, exp, grpo, optimizer, scheduler, lambda loss: loss.backward(),
                          UpdateScale(float(response), 1), torch.Generator().manual_seed(step))
            times.append(time.perf_counter() - start)
    return {"peak_mb": round(peak.peak_mb, 1), "step_s": round(min(times), 2)}


def run_trl(model_dir: Path, vocab: int, response: int, steps: int, checkpointing: bool) -> dict:
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from astro_pl.modules.tiny_llama import train_tokenizer

    tokenizer = train_tokenizer(["a b c"] * 4, model_dir.parent / "tokenizer", vocab_size=64)  # unused: no generation
    model = load(model_dir, checkpointing)
    config = GRPOConfig(output_dir=str(model_dir.parent / "trl"), per_device_train_batch_size=SEQUENCES,
                        num_generations=2, max_completion_length=response, learning_rate=LR, loss_type="grpo",
                        beta=0.0, use_cpu=True, report_to="none", bf16=False, max_grad_norm=1.0, disable_tqdm=True)
    trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **_: [0.0] * len(completions), args=config,
                          train_dataset=Dataset.from_list([{"prompt": "a"}] * SEQUENCES), processing_class=tokenizer)
    trainer.current_gradient_accumulation_steps = 1
    prompts, responses, advantages = batch(vocab, response)
    inputs = {"prompt_ids": prompts, "prompt_mask": torch.ones_like(prompts), "completion_ids": responses,
              "completion_mask": torch.ones_like(responses), "advantages": advantages,
              "num_items_in_batch": torch.tensor(float(responses.numel()))}
    model = trainer.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    times = []
    with PeakRSS() as peak:
        for _ in range(steps):
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            trainer.compute_loss(model, inputs).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            times.append(time.perf_counter() - start)
    return {"peak_mb": round(peak.peak_mb, 1), "step_s": round(min(times), 2)}


def worker(side: str, vocab: int, response: int, steps: int, checkpointing: bool) -> dict:
    import torch

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp), vocab)
        run = run_ours if side == "ours" else run_trl
        return run(model_dir, vocab, response, steps, checkpointing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1, help="updates per side (time: the fastest; peak: over all)")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--response", type=int, default=2048, help="response tokens per sequence")
    parser.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    parser.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    common = ["--steps", str(args.steps), "--vocab", str(args.vocab), "--response", str(args.response)]
    common += [] if args.checkpointing else ["--no-checkpointing"]
    if args.worker:
        print_result(worker(args.worker, args.vocab, args.response, args.steps, args.checkpointing))
        return
    sides = {}
    for side in ("trl", "ours"):
        sides[side] = run_worker(__file__, ["--worker", side, *common], f"{side} worker")
        print(f"{side}: {sides[side]}", file=sys.stderr, flush=True)
    from transformers import LlamaConfig, LlamaForCausalLM

    with __import__("torch").device("meta"):
        params = sum(p.numel() for p in LlamaForCausalLM(LlamaConfig(vocab_size=args.vocab, **MODEL)).parameters())
    peak_ratio = sides["ours"]["peak_mb"] / sides["trl"]["peak_mb"]
    speed_ratio = sides["trl"]["step_s"] / sides["ours"]["step_s"]
    print(json.dumps({"bench": "rl_memory", "params": params, "vocab": args.vocab, "sequences": SEQUENCES,
                      "prompt_tokens": PROMPT, "response_tokens": args.response, "checkpointing": args.checkpointing,
                      "ours": sides["ours"], "trl": sides["trl"], "peak_ratio": round(peak_ratio, 3),
                      "speed_ratio": round(speed_ratio, 3),
                      "goals": {"peak_le_half_trl": peak_ratio <= 0.5, "speed_ratio_ge_1": speed_ratio >= 1.0}}))


if __name__ == "__main__":
    main()
