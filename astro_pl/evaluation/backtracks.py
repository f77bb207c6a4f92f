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
