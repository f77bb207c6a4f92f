"""Rollout engines behind one interface (`RolloutEngine`): vLLM in-process, or transformers as the fallback."""

from __future__ import annotations

from typing import Literal

from astro_pl.rollout.base import Completion, EngineArgs, RolloutEngine, SamplingArgs

__all__ = ["Completion", "EngineArgs", "RolloutEngine", "SamplingArgs", "build_engine"]


def build_engine(kind: Literal["vllm", "hf"], args: EngineArgs) -> RolloutEngine:
    """Starts the engine named by `kind`; vllm is imported only when asked for."""
    if kind == "vllm":
        from astro_pl.rollout.vllm import VLLMEngine

        return VLLMEngine(args)
    if kind == "hf":
        from astro_pl.rollout.hf import HFEngine

        return HFEngine(args)
    raise ValueError(f"engine kind must be 'vllm' or 'hf', got {kind!r}")
