"""`--shard I/N`: the one convention `astro search` and `astro eval` split problems by and merge results with.

A shard is the contiguous block I of N near-equal blocks of the problem list; its files carry "I-of-N" in their
names, and a merge takes exactly the N files of one run.
"""

from __future__ import annotations

import re
from pathlib import Path


def parse_shard(text: str) -> tuple[int, int]:
    """ "I/N" -> (I, N) with 0 <= I < N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not int(match.group(1)) < int(match.group(2)):
        raise ValueError(f"--shard must be I/N with 0 <= I < N, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def shard_range(num_items: int, index: int, count: int) -> range:
    """Contiguous block `index` of `count` near-equal blocks of range(num_items)."""
    return range(index * num_items // count, (index + 1) * num_items // count)


def complete_shards(folder: Path, name: str, rerun_hint: str = "") -> list[Path]:
    """The entries of `folder` named `name` with I and N filled in, for I = 0..N-1 of one N, in order.

    Args:
        folder: Where the shards were written.
        name: The entry name with "{i}" and "{n}" in place of I and N, e.g. "shard-{i}-of-{n}".
        rerun_hint: Appended to the error that lists missing shards (how to produce them).
    """
    pattern = re.compile(re.escape(name).replace(r"\{i\}", r"(\d+)").replace(r"\{n\}", r"(\d+)"))
    found = {(int(m[1]), int(m[2])): path for path in (sorted(folder.iterdir()) if folder.is_dir() else ())
             if (m := pattern.fullmatch(path.name))}
    counts = {n for _, n in found}
    if len(counts) != 1:
        raise ValueError(f"{folder}: expected the shards of one run ({name.format(i='I', n='N')}), found "
                         f"{sorted(p.name for p in found.values()) or 'none'}")
    (count,) = counts
    missing = [i for i in range(count) if (i, count) not in found]
    if missing:
        raise ValueError(f"{folder}: shards {missing} of {count} are missing{rerun_hint}")
    return [found[i, count] for i in range(count)]
