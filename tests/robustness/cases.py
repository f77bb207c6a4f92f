"""Case tables of issue 20: each case is one `astro` invocation a hostile but realistic user makes, the exit code
it must give, the one stderr line it must print, and the files whose bytes it must leave alone.

`kind` records what the case did before the fixes (issue 20's count): "traceback", "silent-wrong", "data-loss",
"hang", or "clean" (already a clean error); every case must now end cleanly.
"""

from __future__ import annotations

import hashlib
import re
import resource
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from astro_pl.cli import main as astro

KINDS = ("clean", "traceback", "silent-wrong", "data-loss", "hang")
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Case:
    """One row of a table.

    Attributes:
        id: Short name (the pytest id).
        argv: Arguments after `astro`; "{tmp}" and the keys of the fixture's `paths` are substituted.
        code: Expected exit code.
        message: Regex the single stderr line must match after "astro <command>: error: " (empty: no error).
        unchanged: Files (same substitution) whose bytes the command must not change.
        kind: What the case did before the fixes (see KINDS).
    """

    id: str
    argv: list[str]
    code: int = 2
    message: str = ""
    unchanged: list[str] = field(default_factory=list)
    kind: str = "traceback"

    def __post_init__(self) -> None:
        assert self.kind in KINDS, self.kind


def fill(text: str, paths: dict[str, Path | str]) -> str:
    for key, value in paths.items():
        text = text.replace("{" + key + "}", str(value))
    return text


def digests(files: list[str]) -> dict[str, str | None]:
    return {f: hashlib.sha256(Path(f).read_bytes()).hexdigest() if Path(f).exists() else None for f in files}


def check_case(case: Case, paths: dict[str, Path | str], capsys, timeout: float = 0,
               env: dict[str, str] | None = None, preexec_fn=None) -> None:
    """Runs the case through the `astro` dispatch (in process, or as a subprocess with `timeout` to catch hangs)
    and checks its exit code, its one error line, and the files it must not touch."""
    argv = [fill(a, paths) for a in case.argv]
    unchanged = [fill(f, paths) for f in case.unchanged]
    before = digests(unchanged)
    if timeout:
        proc = subprocess.run([sys.executable, "-m", "astro_pl.cli", *argv], cwd=REPO, capture_output=True,
                              text=True, timeout=timeout, env=env, preexec_fn=preexec_fn)
        code, err = proc.returncode, proc.stderr
    else:
        capsys.readouterr()
        code = astro(argv)
        err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    assert code == case.code, (code, err[-2000:])
    if case.message:
        lines = [line for line in err.splitlines() if line.startswith("astro ")]
        assert len(lines) == 1, err[-2000:]
        prefix = f"astro {argv[0]}: error: "
        assert lines[0].startswith(prefix) and re.search(fill(case.message, paths), lines[0][len(prefix):]), lines[0]
    assert digests(unchanged) == before, f"{case.id} changed {unchanged}"


def limit_file_size(limit: int):
    """A child's `preexec_fn`: writes past `limit` bytes fail with EFBIG, as writes to a full disk fail."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply
