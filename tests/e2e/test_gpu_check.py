"""bench/gpu_check: the FLOP arithmetic (bench/gpu_sections/common.py), and a `--smoke` run on CPU through the real
SFT and RL modules."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import pytest
from scale_helpers import REPO, run, run_env


@pytest.fixture(scope="module")
def common():
    spec = importlib.util.spec_from_file_location("gpu_check_common", REPO / "bench" / "gpu_sections" / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flops_and_peak_detection(common):
    # Llama-3.2-1B shape at 4096 attended tokens: 6 * 1.236e9 + 12 * 16 * 2048 * 4096 = 7.416e9 + 1.611e9
    assert common.flops_per_token(1_235_814_400, 16, 2048, 4096) == 6 * 1_235_814_400 + 12 * 16 * 2048 * 4096
    assert common.peak_flops("NVIDIA H100 80GB HBM3", None) == 989e12
    assert common.peak_flops("NVIDIA H100 PCIe", None) == 756e12
    assert common.peak_flops("NVIDIA H200", None) == 989e12
    assert common.peak_flops("cpu", None) is None and common.peak_flops("cpu", 1.5) == 1.5e12


def test_smoke_run_prints_one_json_line_from_real_training_steps(tmp_path):
    saved = tmp_path / "result.json"
    out = run([sys.executable, "bench/gpu_check.py", "--smoke", "--out", str(saved)],
              env=run_env(OMP_NUM_THREADS="2"), timeout=240)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, out.stdout
    result = json.loads(lines[0])
    assert json.loads(saved.read_text()) == result  # --out holds the same, written section by section
    assert not [name for name, part in result.items() if isinstance(part, dict) and "error" in part], result
    assert result["device"] == "cpu" and result["params"] == 106_816 and result["seq_len"] == 256

    sft = result["sft"]
    assert sft["mfu"] is None  # no peak FLOP/s for a CPU
    assert sft["tokens_per_s"] > 0 and sft["step_s"] > 0 and sft["peak_mem_gib"] > 0
    assert 0 <= sft["padding_fraction"] < 0.5 and 32 <= sft["attended_tokens"] <= 256
    # a random init predicts about uniformly over the 512-token vocabulary: loss near ln 512 = 6.24
    assert abs(sft["loss_last"] - math.log(512)) < 0.3

    updates = [result[f"rl_update_{name}"] for name in ("seqs2", "seqs8", "seqs8_tokens17408")]
    assert [u["sequences"] for u in updates] == [8, 8, 8]
    assert all(u["prompt_tokens_mean"] == 16 for u in updates)  # the bench task's prompts: --rl_prompt_len tokens
    assert updates[0]["passes"] == 4 and updates[1]["passes"] == 1 and 1 < updates[2]["passes"] < 8
    # micro-batching changes how the batch is cut, not the gradient: the second step's loss agrees
    losses = [u["loss_last"] for u in updates]
    assert all(math.isfinite(x) for x in losses) and max(losses) - min(losses) < 1e-4 * max(1.0, abs(losses[0]))

    for name in ("rl_fit_unsharded", "rl_fit_fsdp2", "rl_fit_vllm_sleep"):
        fit = result[name]
        assert fit["master_dtypes"] == ["torch.float32"] and fit["proj_weights_moved_frac"] > 0.9, fit
        assert fit["engine_logp_gap"] < 1e-3 and fit["generate_s"] > 0
    assert result["rl_fit_vllm_sleep"]["sleep_freed_gib"] == 0.0  # sleep mode is GPU-only: nothing to free here

    assert result["collectives"]["backend"] == "gloo" and result["collectives"]["collective_device"] == "ok"
    logprobs = result["logprobs"]
    chunks = [k for k in logprobs if k.startswith("chunk_")]
    assert len(chunks) == 4 and all(logprobs[k]["ms"] > 0 for k in [*chunks, "direct"])


def test_shell_script_refuses_without_a_gpu():
    out = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=REPO, env=run_env(PYTHON=sys.executable),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "torch sees no CUDA device" in out.stderr
