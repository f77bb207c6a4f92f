"""Former home of the JSONL record helpers, kept so existing imports work: they live in `astro_pl.runfiles`."""

from astro_pl.runfiles import append_jsonl, drop_torn_tail, read_jsonl

__all__ = ["append_jsonl", "drop_torn_tail", "read_jsonl"]
