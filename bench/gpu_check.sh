#!/usr/bin/env bash
# GPU check for a lent H100/H200 (issue 8): SFT step MFU and tokens/s of a Llama-3.2-1B-shaped model (random init,
# bf16 compute, FSDP2 on 1 GPU via ModelParallelStrategy, packed 8192-token rows), the RL update time on synthetic
# rollouts, and peak memory. Prints ONE JSON line on stdout (progress goes to stderr); stops itself after 7.5 minutes.
#   bench/gpu_check.sh                     # defaults: 2 rows x 8192 tokens, 3 warm-up + 10 timed steps
#   bench/gpu_check.sh --batch_size 1 --gradient_checkpointing      # if memory is short
# PYTHON picks the interpreter (default: .venv/bin/python if present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2
fi
"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu_check: torch sees no CUDA device")'
export WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout --signal=KILL 450 "$PYTHON" bench/gpu_check.py "$@" 2> >(tail -n 40 >&2)
