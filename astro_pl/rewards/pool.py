"""A small pool of persistent sympy worker processes with a hard time limit per request.

Why processes, and why `subprocess` rather than `multiprocessing`: a Python thread cannot be stopped, and
`signal.alarm` only works in the main thread of the main interpreter, but a reward is computed in trainer threads,
thread pools and DataLoader workers. DataLoader workers are daemonic, and daemonic processes may not start
`multiprocessing` children; plain `subprocess.Popen` works everywhere. A worker that misses its deadline is
killed and a fresh one is started on the next request, so one bad answer cannot stall later checks.

The time limit covers waiting for a free worker and the check itself, not the one-off start of a worker (about a
second to import sympy and the LaTeX grammar), which has its own, longer limit.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
INNER_TIMER_FRACTION = 0.8
"""The worker stops itself at this fraction of the limit; the parent kills it at the full limit."""


class _Worker:
    """One `python -m astro_pl.rewards.symbolic` process speaking JSON lines over pipes."""

    def __init__(self, start_timeout: float) -> None:
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join(p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "astro_pl.rewards.symbolic"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            close_fds=True,
        )
        self._buffer = b""
        started = time.monotonic()
        ready = self._read_line(time.monotonic() + start_timeout)
        if ready is None or json.loads(ready) != {"ready": True}:
            self.kill()
            raise RuntimeError("answer-checker worker did not start")
        self.start_seconds = time.monotonic() - started
        self.fresh = True

    def _read_line(self, deadline: float) -> bytes | None:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def request(self, pairs: list[tuple[str, str]], deadline: float) -> list[bool] | None:
        """Results for `pairs`, or None if the worker died or missed the deadline (then it must be killed)."""
        left = deadline - time.monotonic()
        message = json.dumps({"pairs": pairs, "timeout": max(left * INNER_TIMER_FRACTION, 1e-3)}) + "\n"
        try:
            self.proc.stdin.write(message.encode("ascii"))
            self.proc.stdin.flush()
        except OSError:
            return None
        line = self._read_line(deadline)
        if line is None:
            return None
        results = json.loads(line)["results"]
        return [bool(r) for r in results] if len(results) == len(pairs) else None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass


class WorkerPool:
    """Thread-safe, fork-aware pool; workers start lazily, at most `max_workers` per process.

    Args:
        max_workers: Most worker processes this process starts; callers beyond wait (within their time limit).
        start_timeout: Seconds a worker may take to start (import sympy, load the LaTeX grammar).
    """

    def __init__(self, max_workers: int = 8, start_timeout: float = 60.0) -> None:
        self.max_workers = max_workers
        self.start_timeout = start_timeout
        self._reset()
        atexit.register(self.close)

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._count = 0
        self.restarts = 0

    def _acquire(self, deadline: float) -> _Worker | None:
        with self._cond:
            if self._pid != os.getpid():  # forked (DataLoader worker): the parent's workers are not ours
                self._reset()
            while not self._idle and self._count >= self.max_workers:
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    return None
            if self._idle:
                return self._idle.pop()
            self._count += 1
        try:
            return _Worker(self.start_timeout)
        except (OSError, RuntimeError):
            self._release(None)
            return None

    def _release(self, worker: _Worker | None) -> None:
        with self._cond:
            if worker is None:
                self._count -= 1
            else:
                self._idle.append(worker)
            self._cond.notify()

    def check(self, pairs: list[tuple[str, str]], deadline: float) -> list[bool]:
        """Symbolic verdicts for `pairs` by `deadline` (a `time.monotonic()` value; a worker start, if none is
        running, comes on top); False for every pair that was not decided in time."""
        if not pairs:
            return []
        worker = self._acquire(deadline)
        if worker is None:
            return [False] * len(pairs)
        deadline += self._start_seconds(worker)
        results = worker.request(pairs, deadline)
        if results is None:
            worker.kill()
            self.restarts += 1
            self._release(None)
            return [False] * len(pairs)
        self._release(worker)
        return results

    @staticmethod
    def _start_seconds(worker: _Worker) -> float:
        """Seconds of a worker start that happened inside this call (excluded from its time limit)."""
        if not worker.fresh:
            return 0.0
        worker.fresh = False
        return worker.start_seconds

    def warm_up(self, num_workers: int = 1) -> None:
        """Start workers now, so the first checks do not wait for a worker to start."""
        workers = [self._acquire(time.monotonic() + self.start_timeout) for _ in range(num_workers)]
        for worker in workers:
            if worker is not None:
                worker.fresh = False
                self._release(worker)

    def close(self) -> None:
        """Stop this process's idle workers (busy ones stop when their pipe closes)."""
        with self._cond:
            if self._pid != os.getpid():
                return
            idle, self._idle = self._idle, []
            self._count -= len(idle)
        for worker in idle:
            worker.kill()
