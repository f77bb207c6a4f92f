"""Answer checker vs math-verify on MATH-500: agreement, false matches and checks/second, as one JSON line.

True pairs: each problem's `answer` against the last boxed answer of its own `solution` (goal: 100% match).
Shuffled pairs: each `answer` against another problem's answer (fixed seed; goal: 0 matches). Shuffled pairs whose
two answers are the same text after clean-up are counted apart (`shuffled_equal_text`), not as false matches.
Both checkers see the same extracted answer, so this compares equivalence checking, not extraction. Each checker
runs every pair once, cold (ours: empty cache, workers started before timing).

Usage: python bench/verify.py [--data PATH] [--seed 0] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/math500.jsonl"


def load_pairs(path: Path, seed: int, limit: int | None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    from astro_pl.rewards import extract_final_answer

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][:limit]
    true_pairs = [(extract_final_answer(r["solution"]) or "", r["answer"]) for r in rows]
    order = list(range(len(rows)))
    rng = random.Random(seed)
    rng.shuffle(order)
    shift = {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}  # a derangement
    shuffled = [(rows[shift[i]]["answer"], rows[i]["answer"]) for i in range(len(rows))]
    return true_pairs, shuffled


def run_ours(pairs: list[tuple[str, str]]) -> tuple[list[bool], float]:
    from astro_pl.rewards import answers_match

    start = time.perf_counter()
    verdicts = [answers_match(pred, gold) for pred, gold in pairs]
    return verdicts, time.perf_counter() - start


def run_math_verify(pairs: list[tuple[str, str]]) -> tuple[list[bool], float]:
    from math_verify import parse, verify

    start = time.perf_counter()
    verdicts = [bool(verify(parse(f"\\boxed{{{gold}}}"), parse(f"\\boxed{{{pred}}}"))) for pred, gold in pairs]
    return verdicts, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--show-failures", action="store_true", help="list disagreements on stderr")
    args = parser.parse_args(argv)

    from astro_pl.rewards import warm_up
    from astro_pl.rewards.normalize import canonical, clean

    true_pairs, shuffled = load_pairs(args.data, args.seed, args.limit)
    warm_up()
    pairs = true_pairs + shuffled
    ours, ours_s = run_ours(pairs)
    theirs, theirs_s = run_math_verify(pairs)
    n = len(true_pairs)
    same_text = [canonical(clean(a)) == canonical(clean(b)) for a, b in shuffled]
    if args.show_failures:
        for (pred, gold), o, t in zip(true_pairs, ours[:n], theirs[:n], strict=True):
            if not (o and t):
                print(f"TRUE ours={o} mv={t}: {pred!r} vs {gold!r}", file=sys.stderr)
        for (pred, gold), o, t, s in zip(shuffled, ours[n:], theirs[n:], same_text, strict=True):
            if (o or t) and not s:
                print(f"SHUFFLED ours={o} mv={t}: {pred!r} vs {gold!r}", file=sys.stderr)
    result = {
        "data": str(args.data),
        "true_pairs": n,
        "ours_true_agree": round(sum(ours[:n]) / n, 4),
        "math_verify_true_agree": round(sum(theirs[:n]) / n, 4),
        "shuffled_pairs": len(shuffled),
        "shuffled_equal_text": sum(same_text),
        "ours_false_matches": sum(o and not s for o, s in zip(ours[n:], same_text, strict=True)),
        "math_verify_false_matches": sum(t and not s for t, s in zip(theirs[n:], same_text, strict=True)),
        "ours_checks_per_s": round(len(pairs) / ours_s, 1),
        "math_verify_checks_per_s": round(len(pairs) / theirs_s, 1),
        "speedup": round(theirs_s / ours_s, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
