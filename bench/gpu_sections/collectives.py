"""Section `collectives`: which tensors a one-process default group on NCCL (Lightning's backend on GPUs) reduces:
a CPU tensor, and one on `astro_pl.modules.collectives.collective_device()`, which the RL step's all-reduces use.

The probe runs as this file in a fresh process (`python bench/gpu_sections/collectives.py` prints one JSON line),
since the sections before it may have left a process group behind.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import torch
import torch.distributed as dist

from astro_pl.modules.collectives import collective_device


def collectives_probe() -> dict:
    """One-process default group on the backend Lightning picks (NCCL on GPUs): which tensors can be reduced."""
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(0)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    result = {"backend": backend}
    for name, device in (("cpu_tensor", torch.device("cpu")), ("collective_device", collective_device())):
        try:
            value = torch.ones(1, dtype=torch.float64, device=device)
            dist.all_reduce(value)
            result[name] = "ok"
        except Exception as error:  # noqa: BLE001 - the error is the finding
            result[name] = repr(error)[:300]
    dist.destroy_process_group()
    return result


def collectives_check() -> dict:
    """`collectives_probe` in a fresh process."""
    out = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=120)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"probe printed no result (exit {out.returncode}): {out.stderr[-500:]}")
    return json.loads(lines[-1])


if __name__ == "__main__":
    print(json.dumps(collectives_probe()))
