"""Runs one side of a benchmark in a fresh process of the same script and reads back its result.

A fresh process per side keeps engines, compiled graphs and peak-memory counters from leaking between sides.
The child prints its result as one `RESULT {json}` line; anything else it prints is ignored unless it fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PREFIX = "RESULT "


def print_result(result: dict) -> None:
    """What a child calls once, last."""
    print(PREFIX + json.dumps(result), flush=True)


def run_worker(script: str, args: list[str], label: str) -> dict:
    """Runs `python script *args` and returns the dict its child printed; exits with its output tail on failure."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith(PREFIX)), None)
    if out.returncode != 0 or line is None:
        sys.stderr.write(out.stdout[-3000:] + out.stderr[-6000:])
        raise SystemExit(f"bench/{Path(script).name}: {label} failed (exit {out.returncode})")
    return json.loads(line.removeprefix(PREFIX))
