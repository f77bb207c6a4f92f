"""Rollout engines behind one interface (`RolloutEngine`): vLLM in-process, or transformers as the fallback."""

from __future__ import annotations

import dataclasses

from astro_pl.rollout.base import Completion, EngineArgs, RolloutEngine, SamplingArgs

__all__ = ["Completion", "EngineArgs", "RolloutEngine", "SamplingArgs", "build_engine", "resolve_engine_args"]


def resolve_engine_args(args: EngineArgs, model: str | None) -> EngineArgs:
    """`args` with its model (and so its tokenizer) defaulting to the command's `model`."""
    if args.model is None:
        if model is None:
            raise ValueError("--engine.model is required (no command model to default to)")
        args = dataclasses.replace(args, model=model)
    return args


def build_engine(args: EngineArgs, model: str | None = None) -> RolloutEngine:
    """Starts the engine `args.kind` names (vllm is imported only when asked for); `model` is the default model."""
    args = resolve_engine_args(args, model)
    if args.kind == "vllm":
        from astro_pl.rollout.vllm import VLLMEngine

        return VLLMEngine(args)
    if args.kind == "hf":
        from astro_pl.rollout.hf import HFEngine

        return HFEngine(args)
    raise ValueError(f"--engine.kind must be 'vllm' or 'hf', got {args.kind!r}")
