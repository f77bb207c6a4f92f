"""Writing a runnable copy of configs/rl/synthetic.yaml for the RL end-to-end tests (tiny model, tmp folders)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import yaml

REPO = Path(__file__).resolve().parents[2]
EASY = dict(min_operations=1, max_operations=1, operand_max=3)
"""Problems the briefly trained policy sometimes gets right (answers -2..9), so groups have mixed rewards."""


def rl_config(tmp_path: Path, model_dir: Path, *, steps: int = 2, engine: str = "vllm", devices: int = 1,
              grpo: dict | None = None, model: dict | None = None, trainer: dict | None = None,
              name: str = "rl.yaml") -> Path:
    """configs/rl/synthetic.yaml with the tiny model, output under tmp_path and short rollouts."""
    text = (REPO / "configs" / "rl" / "synthetic.yaml").read_text()
    text = text.replace("runs/sft/synthetic/hf", str(model_dir)).replace("runs/rl/synthetic", str(tmp_path / "run"))
    config = yaml.safe_load(text)
    config["trainer"].update({"max_steps": steps, "val_check_interval": 2, "limit_val_batches": 1, **(trainer or {})})
    config["trainer"]["callbacks"][0]["init_args"]["every_n_train_steps"] = 1
    init = config["model"]["init_args"]
    init["engine"]["kind"] = engine
    init["sampling"]["max_tokens"] = 16
    init["grpo"].update(micro_batch_size=8, **(grpo or {}))
    init.update(model or {})
    config["data"]["init_args"].update(batch_size=2, val_batch_size=2, task={
        "class_path": "astro_pl.tasks.ArithmeticTask", "init_args": {"num_train": 64, "num_val": 2, **EASY}})
    if devices > 1:
        config["trainer"]["devices"] = devices
        config["trainer"]["strategy"] = {"class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
                                         "init_args": {"data_parallel_size": devices, "tensor_parallel_size": 1}}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def with_callback(config_path: Path, callback: dict) -> Path:
    """A copy of the config at `config_path` (beside it, "-cb" added to its name) with one more trainer callback."""
    config = yaml.safe_load(config_path.read_text())
    config["trainer"]["callbacks"].append(callback)
    path = config_path.with_name(config_path.stem + "-cb.yaml")
    path.write_text(yaml.safe_dump(config))
    return path


class NaNHiddenAt(L.Callback):
    """Makes the policy's final hidden states NaN during rollout step `step` (a forward hook on the final norm):
    that step's loss is not finite, while the weights, and so the failure checkpoint, stay clean."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if pl_module.rollout_step == self.step:
            norm = pl_module.model.get_decoder().norm
            norm.register_forward_hook(lambda _module, _inputs, output: output * float("nan"))


def run_astro(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`astro ...` in a fresh process (each run starts its own engine); fails the test with its output."""
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
           "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, "-m", "astro_pl.cli", *args], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=timeout)
    return result


def train_boxed_policy(model_dir: Path, out_dir: Path, steps: int = 60, seed: int = 0) -> Path:
    """Fits `model_dir` briefly on one-operation synthetic problems answered "\\boxed{gold}" and saves it."""
    import torch

    from astro_pl.data.chat import render_example
    from astro_pl.loading import load_causal_lm, load_tokenizer
    from astro_pl.tasks.arithmetic import synthetic_arithmetic

    torch.manual_seed(seed)
    tokenizer = load_tokenizer(str(model_dir))
    model = load_causal_lm(str(model_dir), "float32")
    problems = synthetic_arithmetic(256, seed=seed + 7, **EASY)
    texts = ["".join(render_example(tokenizer, p.problem, f"\\boxed{{{p.answer}}}")) for p in problems]
    batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small gains nothing from more, and loses much on a busy machine
    for _ in range(steps):
        rows = torch.randperm(len(texts))[:32]
        loss = model(input_ids=batch["input_ids"][rows], attention_mask=batch["attention_mask"][rows],
                     labels=labels[rows]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir
