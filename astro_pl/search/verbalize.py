"""Turning a linearised node sequence into trace text: steps, the paper's reflection phrases, and the final answer.

`verbalize` maps the events of `linearize.merge_paths` to text segments: each visited node's step, a doubt plus a
backtrack (or restart) phrase after each incorrect terminal, a positive self-check after high-Q intermediate steps
and after the final step, and a closing sentence with the final answer in `\\boxed{}`. Segments are joined with
the step delimiter (a blank line).

Departures from the paper: the paper quotes the backtrack phrase only as "Let's go back to where we ..." and has an
LLM rewrite the prose; here the default template quotes the start of the step returned to, and the LLM rewrite of
steps and go-back sentences (`rewrite.py`, `astro search --rewrite.enabled true`) is optional and off by default.
The positive self-check reuses the paper's reflection question ("But wait, are we solving the problem correctly so
far?") before "Our solution seems to be correct so far." (ours: the paper elides that part).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from astro_pl.search.tree import SearchTree

STEP_DELIMITER = "\n\n"


class Event(NamedTuple):
    """One move of a linearised trace."""

    kind: str
    """"step" (visit `node`), "backtrack" (return to the earlier step `node`) or "restart" (return to the root)."""
    node: int


@dataclass
class Phrases:
    """The fixed sentences of a trace; defaults are the paper's phrases.

    Args:
        question: Reflection question that opens every self-check, doubtful or positive.
        doubt: Said after an incorrect terminal, before going back.
        confirm: Said after a high-Q intermediate step and after the final step. Empty: no positive self-checks.
        backtrack: Said when going back to an earlier step; `{step}` is the quoted start of that step.
        restart: Said when going back to the problem itself (the root).
        conclusion: Closes the trace; `{answer}` is the correct terminal's answer. Empty: end at the final
            self-check (the final step itself already holds the `\\boxed{}` answer).
        quote_chars: Most characters of a step quoted in `backtrack` (cut at a word boundary, then "...").
    """

    question: str = "But wait, are we solving the problem correctly so far?"
    doubt: str = "Hmm... I'm not sure if we're solving the problem correctly so far."
    confirm: str = "Hmm... Our solution seems to be correct so far."
    backtrack: str = 'Let\'s go back to where we wrote "{step}" and try a different step from there.'
    restart: str = "Let's restart our solution from the beginning."
    conclusion: str = "Therefore, the final answer is $\\boxed{{{answer}}}$."
    quote_chars: int = 60

    def __post_init__(self) -> None:
        if "{step}" not in self.backtrack:
            raise ValueError(f"--phrases.backtrack must contain '{{step}}', got {self.backtrack!r}")
        if self.conclusion and "{answer}" not in self.conclusion:
            raise ValueError(f"--phrases.conclusion must contain '{{answer}}' or be empty, got {self.conclusion!r}")
        if self.quote_chars < 8:
            raise ValueError(f"--phrases.quote_chars must be >= 8, got {self.quote_chars}")


class Segment(NamedTuple):
    """One paragraph of a trace."""

    text: str
    kind: str
    """"step" (a node's text), "check" (positive self-check), "backtrack" (doubt + going back to a step),
    "restart" (doubt + going back to the problem) or "conclusion" (closing sentence with the answer)."""
    node: int | None = None
    """The tree node of a step or check, or the step a backtrack returns to (None for the others)."""


def quote_step(text: str, max_chars: int) -> str:
    """The start of a step, on one line, cut at a word boundary to at most `max_chars` (then "...")."""
    flat = " ".join(text.split())
    if len(flat) <= max_chars:
        return flat
    cut = flat[: max_chars - 3]
    if flat[max_chars - 3] != " " and " " in cut:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:") + "..."


def needs_self_check(tree: SearchTree, node_id: int, self_check_q: float | None) -> bool:
    """A positive self-check follows a correct terminal, and an intermediate step visited with Q >= threshold."""
    node = tree.nodes[node_id]
    if node.terminal:
        return bool(node.correct)
    return self_check_q is not None and node.visits > 0 and node.value >= self_check_q


def verbalize(tree: SearchTree, events: Sequence[Event], phrases: Phrases, self_check_q: float | None) -> list[Segment]:
    """Text segments of a linearised sequence (see module docstring); the last event must be a correct terminal.

    Args:
        tree: The search tree the events index into.
        events: Output of `merge_paths`.
        phrases: The sentences to use.
        self_check_q: Q at or above which an intermediate step gets a positive self-check; None: never.
    """
    if not events or events[-1].kind != "step" or not tree.nodes[events[-1].node].correct:
        raise ValueError(f"tree {tree.problem_id}: a trace must end at a correct terminal")
    reflection = f"{phrases.question} {phrases.doubt}".strip()
    confirmation = f"{phrases.question} {phrases.confirm}".strip()
    segments: list[Segment] = []
    for event in events:
        if event.kind == "step":
            segments.append(Segment(tree.nodes[event.node].text, "step", event.node))
            if phrases.confirm and needs_self_check(tree, event.node, self_check_q):
                segments.append(Segment(confirmation, "check", event.node))
        elif event.kind == "backtrack":
            quote = quote_step(tree.nodes[event.node].text, phrases.quote_chars)
            segments.append(Segment(f"{reflection} {phrases.backtrack.format(step=quote)}", "backtrack", event.node))
        elif event.kind == "restart":
            segments.append(Segment(f"{reflection} {phrases.restart}", "restart"))
        else:
            raise ValueError(f"unknown event kind {event.kind!r}")
    answer = tree.nodes[events[-1].node].answer
    if phrases.conclusion and answer is not None:
        segments.append(Segment(phrases.conclusion.format(answer=answer), "conclusion"))
    return segments


def join_segments(segments: Sequence[Segment]) -> str:
    return STEP_DELIMITER.join(s.text.strip() for s in segments)
