"""One way to derive the seed of every random stream in a run from the run's seed.

`derive_seed(seed, "rollout", step, draw, engine)` hashes its parts, so streams that differ in any part are
independent and no two formulas can collide (the old `seed * 1_000_003 + step * 10_007 + ...` could), and the
same parts give the same seed in every process and on every resume.
"""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, *parts: int | str) -> int:
    """A 31-bit seed for the stream named by `parts` within a run seeded `seed` (fits every RNG's seed type)."""
    text = "\x1f".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") >> 1
