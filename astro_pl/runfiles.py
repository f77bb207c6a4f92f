"""Run folders: the one place that reads and writes what a command leaves on disk.

JSONL is read whole with a bad line named by file and line, and appended one record per line with an fsync, so a
kill loses at most the line being written; `drop_torn_tail` cuts that line before the next append. JSON and text
files are replaced atomically (a temporary file, then `os.replace`), so a reader sees the old file or the new one,
never half of one. `claim` locks a folder for the whole run (an `fcntl.flock` on `<folder>/.lock`, released by the
kernel when the process dies), so a second writer fails at once instead of interleaving its lines.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from astro_pl.errors import UsageError

LOCK_NAME = ".lock"


def to_line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def read_jsonl(path: str | Path, missing_ok: bool = True, torn_tail_ok: bool = False) -> list[dict]:
    """Records of a JSONL file ([] for a missing one when `missing_ok`); a bad line raises naming file and line."""
    return [record for _, record in numbered_records(path, missing_ok, torn_tail_ok)]


def numbered_records(path: str | Path, missing_ok: bool = True, torn_tail_ok: bool = False) -> list[tuple[int, dict]]:
    """(line number, record) of each non-blank line, so a caller checking fields can name the line. With
    `torn_tail_ok`, a last line without its newline that does not parse (a writer killed mid-line, or a training
    run's metrics file read while it runs) is skipped instead of raising."""
    path = Path(path)
    if missing_ok and not path.exists():
        return []
    # split at "\n" only: str.splitlines also splits at U+2028, U+0085..., which json.dumps(ensure_ascii=False)
    # leaves raw inside a string (model output can hold them)
    lines = path.read_text(encoding="utf-8").split("\n")
    lines = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    records = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if torn_tail_ok and lineno == len(lines) and not line.endswith("\n"):
                break
            raise UsageError(f"{path}:{lineno}: not a JSON record ({err.msg})") from err
        if not isinstance(record, dict):
            raise UsageError(f"{path}:{lineno}: not a JSON object")
        records.append((lineno, record))
    return records


def drop_torn_tail(path: str | Path) -> None:
    """Cuts a last line that a killed writer left without its newline, so later appends start on a fresh line."""
    path = Path(path)
    if not path.exists():
        return
    with path.open("r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # scan back for the last newline in blocks, so a large file is not read whole
        pos, block = size, 1 << 16
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                f.truncate(start + cut + 1)
                return
            pos = start
        f.truncate(0)


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """Gives an OSError raised by a write (full disk: no file name) the path it was writing."""
    try:
        yield
    except OSError as err:
        if err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def append_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    """Appends records, one line each, and fsyncs them: a finished record survives a kill or power loss."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with naming(path), path.open("a", encoding="utf-8") as f:
        f.writelines(to_line(r) for r in records)
        f.flush()
        os.fsync(f.fileno())


def write_text(path: str | Path, text: str) -> None:
    """Replaces `path` atomically: a temporary file beside it, fsynced, then renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with naming(path), tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, record: dict) -> None:
    write_text(path, json.dumps(record, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    """Replaces a JSONL file atomically with `records`."""
    write_text(path, "".join(to_line(r) for r in records))


def read_json(path: str | Path, missing_ok: bool = False) -> dict | None:
    """A JSON object file; a torn or non-object file raises naming it (None for a missing one when allowed)."""
    path = Path(path)
    if missing_ok and not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}: not a JSON file ({err.msg} at line {err.lineno})") from err
    if not isinstance(record, dict):
        raise UsageError(f"{path}: not a JSON object")
    return record


@contextmanager
def claim(folder: str | Path, flag: str = "--out_dir", part: str = "") -> Iterator[Path]:
    """Holds `folder` (or one `part` of it, e.g. a shard's files) for one writer while the block runs; a second
    writer fails at once naming the holder.

    The lock is `fcntl.flock` on `<folder>/.lock[part]` (holding the owner's pid): the kernel drops it when the
    owner exits or is killed, so a stale lock file never blocks a rerun.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f"{LOCK_NAME}{part}", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UsageError(f"{flag} {folder}: in use by another run (pid {holder}); wait for it to finish or "
                             "write elsewhere") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield folder
    finally:
        os.close(fd)  # closing the descriptor releases the flock
