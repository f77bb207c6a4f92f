"""Counting backtracks and reflections in a response: the phrases of ASTRO's search traces.

A backtrack is a sentence that returns to an earlier step or restarts ("Let's go back to ...", "Let's restart
our solution from the beginning."). A reflection is the self-check question ("But wait, are we solving the
problem correctly so far?"), which in our traces opens every backtrack and also every positive self-check, so it
is counted apart: counting it as a backtrack would count each backtrack twice and each confirmation once.
Matching ignores case and curly apostrophes, since a trained model's wording drifts slightly.
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_BACKTRACK_PHRASES: tuple[str, ...] = (
    "Let's go back to",
    "Let's restart our solution from the beginning.",
)
DEFAULT_REFLECTION_PHRASES: tuple[str, ...] = ("But wait, are we solving the problem correctly so far?",)


def _normalise(text: str) -> str:
    return text.replace("\u2019", "'").replace("\u2018", "'").lower()


def count_phrases(text: str, phrases: Sequence[str]) -> int:
    """Non-overlapping occurrences of each phrase in `text`, summed over the phrases."""
    folded = _normalise(text)
    return sum(folded.count(_normalise(phrase)) for phrase in phrases if phrase)


def count_backtracks(text: str, phrases: Sequence[str] = DEFAULT_BACKTRACK_PHRASES) -> int:
    """Number of backtracks (go back / restart sentences) in a response."""
    return count_phrases(text, phrases)


def count_reflections(text: str, phrases: Sequence[str] = DEFAULT_REFLECTION_PHRASES) -> int:
    """Number of self-check questions in a response."""
    return count_phrases(text, phrases)


_OPEN_QUOTES, _CLOSE_QUOTES = "\"\u201c", "\"\u201d"


def _quoted(span: str) -> str | None:
    """The text between the first opening and the last closing quote of `span`, or None when nothing is quoted."""
    start = min((i for i in (span.find(q) for q in _OPEN_QUOTES) if i >= 0), default=-1)
    end = max(span.rfind(q) for q in _CLOSE_QUOTES)
    return span[start + 1:end] if 0 <= start < end else None


def _fold(text: str) -> str:
    """Case, apostrophes and whitespace folded, as the verbaliser quotes a step on one line."""
    return " ".join(_normalise(text).split())


def grounded_backtracks(text: str, phrases: Sequence[str] = DEFAULT_BACKTRACK_PHRASES) -> tuple[int, int]:
    """(grounded, total) backtracks of a response: does each go-back target exist earlier in the same response?

    A phrase that is a whole sentence ("Let's restart our solution from the beginning.") returns to the problem,
    which always exists: grounded. Any other phrase ("Let's go back to") must name its target by quoting it, as
    `verbalize` writes `Let's go back to where we wrote "<start of the step>" ...`: the backtrack is grounded when
    the quote (a trailing "..." of a shortened quote dropped) occurs in the response before the phrase, outside
    earlier backtrack sentences (a quote repeated from an earlier go-back proves nothing). The quote is read from
    the rest of the phrase's line, up to the next backtrack phrase. `total` equals `count_backtracks(text, phrases)`.
    """
    folded = _normalise(text)
    found: list[tuple[int, int, bool]] = []  # (start, end of phrase, is a whole sentence), as count_phrases counts
    for phrase in filter(None, phrases):
        key, at = _normalise(phrase), 0
        while (at := folded.find(key, at)) >= 0:
            found.append((at, at + len(key), phrase.rstrip()[-1] in ".!?"))
            at += len(key)
    found.sort()
    grounded, before, kept_from = 0, [], 0  # `before`: text outside backtrack sentences, up to the current phrase
    for i, (start, end, whole_sentence) in enumerate(found):
        before.append(text[kept_from:start])
        stop = min([j for j in (text.find("\n", end), found[i + 1][0] if i + 1 < len(found) else -1) if j >= 0],
                   default=len(text))
        kept_from = stop
        if whole_sentence:
            grounded += 1
            continue
        quote = _quoted(text[end:stop])
        target = _fold(quote.strip().removesuffix("...").removesuffix("\u2026")) if quote else ""
        grounded += bool(target) and target in _fold("".join(before))
    return grounded, len(found)
