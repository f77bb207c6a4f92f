"""Append-only JSONL record files, the crash-safe output of `astro search` (trees, traces, rewrites) and
`astro select-prompts`.

A writer appends whole records and syncs them (`append_jsonl`); a killed writer can leave a last line without its
newline (torn). A rerun cuts that line first (`drop_torn_tail`), reads what is complete (`read_jsonl`), and appends the
rest, so no finished record is lost or written twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path


def drop_torn_tail(path: Path) -> None:
    """Cuts a last line that a killed writer left without its newline, so later appends start on a fresh line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSONL file; a bad line raises naming the file and line."""
    if not path.exists():
        return []
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{lineno}: not a JSON record ({err.msg})") from err
    return records


def append_jsonl(path: Path, records: Iterable[dict]) -> None:
    """Appends records in one write and syncs them to disk before returning."""
    with path.open("a", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        f.flush()
        os.fsync(f.fileno())
