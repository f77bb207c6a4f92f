"""How the RL step's ranks talk: scalar all-reduces on the device the backend takes, and ranks sharing one engine.

Ranks that form one tensor-parallel vLLM engine (`external_launcher`) all submit the same requests: each gathers
its group's prompts (`generate_shared`) and keeps the completions of its own.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from astro_pl.rollout.base import EngineArgs, RolloutEngine, SamplingArgs


def collective_device() -> torch.device:
    """Where a tensor for the default process group must live: NCCL (Lightning's choice on GPUs) takes only CUDA
    tensors, gloo CPU ones."""
    if "nccl" in str(dist.get_backend()) and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_scalar(value: float, op: str = "sum") -> float:
    """`value` summed (or min/max) over all ranks; itself when not distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
    t = torch.tensor([float(value)], dtype=torch.float64, device=collective_device())
    dist.all_reduce(t, op=ops[op])
    return float(t.item())


def gather_in_group(items: list, group) -> tuple[list, int]:
    """Every rank's `items` of `group`, concatenated in rank order, and the offset where this rank's begin."""
    parts: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, items, group=group)
    offset = sum(len(part) for part in parts[: dist.get_rank(group)])
    return [item for part in parts for item in part], offset


def generate_shared(engine: RolloutEngine, prompt_ids: list[list[int]], params: SamplingArgs, group=None):
    """This rank's completions; with a `group` sharing one engine, every member submits the group's prompts."""
    if group is None:
        return engine.generate(prompt_ids, params)
    shared, offset = gather_in_group(prompt_ids, group)
    return engine.generate(shared, params)[offset: offset + len(prompt_ids)]


def ranks_per_engine(engine_args: EngineArgs) -> int:
    """How many consecutive ranks drive one engine: its TP degree under `external_launcher`, else 1 per rank."""
    if engine_args.extra.get("distributed_executor_backend") == "external_launcher":
        return engine_args.tensor_parallel_size
    return 1
