"""ASTRO-SFT: supervised fine-tuning of a causal LM on search traces (stage 3 of ASTRO).

Paper (reported): full fine-tune, 1 epoch, AdamW lr 3e-6 with cosine decay, sequence length 8192, loss on all
tokens. Here LoRA (peft) is an option, the model is any HF causal LM by path, and under `ModelParallelStrategy` each
decoder layer is an FSDP2 unit. The loss is the token-level mean over the whole global batch (summed per rank,
divided by the all-reduced token count), so it does not depend on how rows are split across devices.
The model is exported in HF format by the `astro_pl.modules.export.HFExport` callback.
"""

from __future__ import annotations

import logging
import time

import lightning as L
import torch

from astro_pl.datamodules.packing import IGNORE_INDEX
from astro_pl.errors import check_model_path
from astro_pl.loading import load_causal_lm, load_tokenizer, resolve_dtype
from astro_pl.modules.fsdp import shard_decoder
from astro_pl.modules.kernels import apply_fused_kernels, liger_linear_cross_entropy_sum
from astro_pl.modules.lm_head import head_output
from astro_pl.modules.logprobs import linear_logprobs_and_entropy
from astro_pl.modules.lora import LoraArgs, add_lora
from astro_pl.modules.optim import OptimArgs, configure_adamw_cosine

log = logging.getLogger(__name__)


def per_token_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """[M] cross-entropy of each of `labels` under the LM head applied to `hidden` [M, D], in chunks (no [M, V]
    logits)."""
    return -linear_logprobs_and_entropy(hidden, weight, labels, bias=bias)[0]


def token_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                   bias: torch.Tensor | None = None, liger: bool = False) -> torch.Tensor:
    """Summed cross-entropy of `labels` under the LM head applied to `hidden`, in chunks (no [M, V] logits).

    Args:
        hidden: [M, D] last hidden states (after the final norm) of the predicting positions.
        weight: [V, D] the LM head's weight; `bias` its optional [V] bias.
        labels: [M] the token each position predicts.
        liger: Use Liger's fused linear cross-entropy (CUDA with liger-kernel only).

    Returns:
        The loss summed over the M tokens.
    """
    if liger:
        return liger_linear_cross_entropy_sum(hidden, weight, labels, bias)
    return per_token_loss(hidden, weight, labels, bias).sum()


def first_token_ids(tokenizer, texts: list[str], field: str) -> torch.Tensor:
    """Ids of each text's first token (" dead" -> the id of "Ġdead"), for a loss over the tokens that start them.

    A text whose first token here is only whitespace (" dead" where the tokenizer never saw "dead": "Ġ", "d", ...)
    is left out with a warning, since that token also stands for every other space.
    """
    ids = set()
    for text in texts:
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not tokens:
            raise ValueError(f"{field}: every text must have a token, got {text!r}")
        if tokenizer.decode(tokens[:1]).strip():
            ids.add(tokens[0])
        else:
            log.warning("%s: %r starts with a whitespace token in this tokenizer, so it is not counted", field, text)
    if not ids:
        raise ValueError(f"{field}: none of {texts!r} starts with a token of its own in this tokenizer")
    return torch.tensor(sorted(ids))


class SFTModule(L.LightningModule):
    """Fine-tunes a Hugging Face causal LM on rendered traces (batches from `TraceDataModule`).

    Args:
        model_path: HF model directory or hub name (tiny CPU runs: a `build_tiny_llama` directory).
        dtype: Dtype of the stored (master) weights; "float32" keeps AdamW exact, "auto" is bf16 on GPU.
        compute_dtype: Dtype of forward/backward ("auto": bf16 on a bf16 GPU, float32 on CPU).
        attn_implementation: "sdpa", "flash_attention_2" or "eager"; packed rows need sdpa/eager on CPU.
        gradient_checkpointing: Recompute activations in backward (long sequences).
        lora: LoRA settings; None trains all weights.
        optim: AdamW and warmup + cosine schedule.
        max_grad_norm: Clip the global gradient norm to this; None only measures it.
        reshard_after_forward: FSDP2: free gathered layer weights after forward (saves memory, costs a re-gather).
        fused_kernels: Liger's kernels (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy) where liger-kernel is
            installed and the model is on CUDA; elsewhere the PyTorch path (which also never builds full logits).
        token_losses: Losses over chosen target tokens, logged beside the loss: name -> texts, and
            `train/loss_<name>` is the mean loss where the target is the first token of one of the texts (NaN in a
            batch without one). {terminal: [" dead", " \\boxed"]} on graph traces: how well the model decides a
            dead end or the goal, a skill the total loss hides (`PlateauRestart` can judge it).
    """

    def __init__(
        self,
        model_path: str,
        dtype: str = "float32",
        compute_dtype: str = "auto",
        attn_implementation: str | None = "sdpa",
        gradient_checkpointing: bool = False,
        lora: LoraArgs | None = None,
        optim: OptimArgs | None = None,
        max_grad_norm: float | None = 1.0,
        reshard_after_forward: bool = True,
        fused_kernels: bool = False,
        token_losses: dict[str, list[str]] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model_path = model_path
        resolve_dtype(dtype, "--model.dtype")  # fails here, not at model loading
        self.dtype_name, self.compute_dtype = dtype, resolve_dtype(compute_dtype, "--model.compute_dtype")
        self.attn_implementation, self.gradient_checkpointing = attn_implementation, gradient_checkpointing
        self.lora, self.optim = lora, optim or OptimArgs()
        self.max_grad_norm, self.reshard_after_forward = max_grad_norm, reshard_after_forward
        self.fused_kernels, self._liger = fused_kernels, False  # _liger: Liger's kernels were applied
        self.token_losses = token_losses or {}
        self._token_ids: dict[str, torch.Tensor] = {}  # token_losses' names -> their first tokens' ids
        self._token_sums: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (loss sum, count) of a batch
        self.model = None
        self._tokenizer = None
        self._step_start = 0.0

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.model_path)
        return self._tokenizer

    # ---- model ----
    def configure_model(self) -> None:
        if self.model is not None:
            return
        check_model_path(self.model_path, "--model.init_args.model_path")
        model = load_causal_lm(self.model_path, self.dtype_name, self.attn_implementation)
        model.config.use_cache = False
        model.train()  # from_pretrained returns eval mode
        if self.fused_kernels:
            device = self.trainer.strategy.root_device if self._trainer is not None else self.device
            self._liger = apply_fused_kernels(model, device)
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.lora is not None:
            model = add_lora(model, self.lora)
        if self.device_mesh is not None:
            param_dtype = None if self.compute_dtype == torch.float32 else self.compute_dtype
            shard_decoder(model, self.device_mesh["data_parallel"], param_dtype, self.reshard_after_forward)
        self.model = model
        self._token_ids = {name: first_token_ids(self.tokenizer, texts, f"--model.init_args.token_losses.{name}")
                           for name, texts in self.token_losses.items()}

    def forward_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed token loss, token count) of this rank's micro-batch."""
        autocast = self.compute_dtype != torch.float32 and self.device_mesh is None
        targets = batch["labels"][:, 1:]  # position t predicts token t + 1
        rows, cols = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
        labels = targets[rows, cols]

        def loss_sum(hidden, weight, bias):
            if not self._token_ids:
                return token_loss_sum(hidden, weight, labels, bias, self._liger)
            losses = per_token_loss(hidden, weight, labels, bias)
            for name, ids in self._token_ids.items():
                chosen = torch.isin(labels, ids.to(labels.device))
                self._token_sums[name] = (losses.detach()[chosen].sum(), chosen.sum())
            return losses.sum()

        with torch.autocast(self.device.type, dtype=self.compute_dtype, enabled=autocast):
            loss = head_output(
                self.model, loss_sum, rows, cols,
                input_ids=batch["input_ids"],
                position_ids=batch["position_ids"],
                attention_mask=batch.get("attention_mask"),  # None for packed rows: segments come from position ids
            )
        return loss, torch.tensor(len(rows), device=targets.device)

    def global_sum(self, value: torch.Tensor) -> torch.Tensor:
        return self.trainer.strategy.reduce(value.detach().float(), reduce_op="sum")

    # ---- steps ----
    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._step_start = time.perf_counter()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss_sum, count = self.forward_loss(batch)
        world = self.trainer.world_size
        global_count = self.global_sum(count).clamp(min=1)
        # gradients are averaged over ranks, so scale by world size: the result is the global token mean
        loss = loss_sum * world / global_count
        tokens = self.global_sum(batch["num_tokens"])
        positions = self.global_sum(batch["num_positions"])
        self.log_dict({
            "train/loss": self.global_sum(loss_sum) / global_count,
            "train/padding_fraction": 1 - tokens / positions,
        }, on_step=True, prog_bar=True, rank_zero_only=True)
        for name, (chosen_sum, chosen) in self._token_sums.items():
            self.log(f"train/loss_{name}", self.global_sum(chosen_sum) / self.global_sum(chosen), on_step=True,
                     rank_zero_only=True)  # 0/0: NaN in a batch without the tokens
        self._tokens = tokens
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm or float("inf"))
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        self.log("train/grad_norm", norm, on_step=True, rank_zero_only=True)
        self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True, rank_zero_only=True)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        elapsed = time.perf_counter() - self._step_start
        self.log("train/tokens_per_sec", self._tokens / elapsed, on_step=True, rank_zero_only=True)

    def _eval_step(self, batch: dict, name: str) -> None:
        loss_sum, count = self.forward_loss(batch)
        self.log(name, loss_sum / count.clamp(min=1), sync_dist=True, batch_size=int(count), on_epoch=True)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val/loss")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test/loss")

    def on_fit_start(self) -> None:
        stats = getattr(self.trainer.datamodule, "stats", None)
        if stats and self.trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics({f"data/{k}": float(v) for k, v in stats.items()}, step=0)

    def configure_optimizers(self) -> dict:
        total_steps = self.trainer.estimated_stepping_batches
        return configure_adamw_cosine(self.model.named_parameters(), self.optim, total_steps)
