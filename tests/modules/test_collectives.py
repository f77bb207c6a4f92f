"""Rank collectives: ranks sharing one tensor-parallel engine (a real 2-process gloo group gathers prompts and splits
completions), and scalar all-reduces on the device the backend takes."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from astro_pl.modules.collectives import collective_device, generate_shared, ranks_per_engine
from astro_pl.rollout.base import Completion, EngineArgs, SamplingArgs


class EchoEngine:
    """Answers each prompt with its ids and the call's seed, and records what it was asked."""

    def __init__(self):
        self.requests: list[list[int]] = []

    def generate(self, prompts, params):
        self.requests = [list(p) for p in prompts]
        return [[Completion(f"{p}|{params.seed}|{k}", list(p), [], "stop") for k in range(params.n)] for p in prompts]


def _rank_main(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        group = dist.new_group([0, 1])
        engine = EchoEngine()
        prompts = [[rank, i] for i in range(rank + 1)]  # rank 0 has 1 prompt, rank 1 has 2
        outputs = generate_shared(engine, prompts, SamplingArgs(n=2, seed=7), group)
        record = {"requests": engine.requests, "texts": [[c.text for c in cs] for cs in outputs]}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(record, f)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ranks_of_one_engine_submit_the_same_requests_and_keep_their_own(tmp_path):
    mp.spawn(_rank_main, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    everything = [[0, 0], [1, 0], [1, 1]]
    assert ranks[0]["requests"] == ranks[1]["requests"] == everything  # identical requests, in rank order
    assert ranks[0]["texts"] == [["[0, 0]|7|0", "[0, 0]|7|1"]]
    assert ranks[1]["texts"] == [["[1, 0]|7|0", "[1, 0]|7|1"], ["[1, 1]|7|0", "[1, 1]|7|1"]]


def test_without_a_group_each_rank_generates_alone():
    engine = EchoEngine()
    outputs = generate_shared(engine, [[5]], SamplingArgs(seed=1))
    assert engine.requests == [[5]] and outputs[0][0].text == "[5]|1|0"


@pytest.mark.parametrize(("extra", "tp", "expected"), [
    ({}, 1, 1), ({}, 4, 1), ({"distributed_executor_backend": "external_launcher"}, 4, 4),
    ({"distributed_executor_backend": "mp"}, 8, 1)])
def test_ranks_per_engine_follows_the_executor(extra, tp, expected):
    assert ranks_per_engine(EngineArgs(model="m", tensor_parallel_size=tp, extra=extra)) == expected


def _reduce_on_collective_device(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=1)
    try:
        value = torch.ones(1, dtype=torch.float64, device=collective_device())
        dist.all_reduce(value)
        torch.save({"device": str(collective_device()), "value": value.item()}, out)
    finally:
        dist.destroy_process_group()


def test_collective_device_follows_the_backend(tmp_path):
    """gloo reduces CPU tensors; under NCCL (Lightning's GPU default) a CPU tensor is refused, which the GPU check
    (bench/gpu_check.py, section "collectives") showed on an H200 before the RL step's all-reduces moved to
    `collective_device()`. In a fresh process: other tests may hold this one's default group."""
    out = tmp_path / "probe.pt"
    mp.spawn(_reduce_on_collective_device, args=(str(tmp_path / "store"), str(out)), nprocs=1)
    assert torch.load(out) == {"device": "cpu", "value": 1.0}
