#!/usr/bin/env bash
# GPU check for a lent H100/H200 (issues 5 and 8): NCCL collectives of the RL step, the chunked log-probs per chunk
# size, a real RL loop (transformers engine, float32 master weights, bf16 compute; unsharded and FSDP2; then vLLM
# asleep through each update, where vllm is installed), the RL update of a Llama-3.2-1B-shaped model at 8K-token
# responses under three micro-batchings, and SFT MFU on packed 8192-token rows. Prints ONE JSON line on stdout
# (progress goes to stderr); --out FILE gets the result after every section; stops itself after 7.5 minutes.
#   bench/gpu_check.sh --out $OUT/gpu_check.json
#   bench/gpu_check.sh --sections sft --batch_size 1 --gradient_checkpointing      # one section, less memory
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
