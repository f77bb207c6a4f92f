"""Phrases and text assembly on the hand-built tree of hand_trees.py."""

from __future__ import annotations

import pytest
from hand_trees import sample_tree

from astro_pl.rewards.math import extract_final_answer
from astro_pl.search.linearize import Event, merge_paths
from astro_pl.search.verbalize import (
    Phrases,
    Segment,
    join_segments,
    needs_self_check,
    quote_step,
    verbalize,
)

REFLECT = (
    "But wait, are we solving the problem correctly so far? Hmm... I'm not sure if we're solving the problem "
    "correctly so far."
)
CONFIRM = "But wait, are we solving the problem correctly so far? Hmm... Our solution seems to be correct so far."


def test_paper_phrases_in_order():
    tree = sample_tree()
    segments = verbalize(tree, merge_paths(tree, [8, 6, 3]), Phrases(), self_check_q=0.9)
    assert segments == [
        Segment("Compute 2 + 3 = 5.", "step", 2),  # Q = 0.1: no self-check
        Segment("Then 5 * 4 = 20. \\boxed{20}", "step", 8),
        Segment(f"{REFLECT} Let's restart our solution from the beginning.", "restart"),
        Segment("Compute 3 * 4 = 12.", "step", 1),
        Segment(CONFIRM, "check", 1),  # Q = 0.95 >= 0.9
        Segment("Then 2 + 12 = 13.", "step", 4),
        Segment("So \\boxed{13}", "step", 6),
        Segment(
            f'{REFLECT} Let\'s go back to where we wrote "Compute 3 * 4 = 12." and try a different step from there.',
            "backtrack", 1,
        ),
        Segment("Then 2 + 12 = 14. \\boxed{14}", "step", 3),
        Segment(CONFIRM, "check", 3),  # after the final step
        Segment("Therefore, the final answer is $\\boxed{14}$.", "conclusion"),
    ]
    text = join_segments(segments)
    assert text.split("\n\n") == [s.text for s in segments]
    assert extract_final_answer(text) == "14"


def test_self_check_threshold():
    tree = sample_tree()
    assert needs_self_check(tree, 1, 0.9) and not needs_self_check(tree, 1, 0.96)
    assert not needs_self_check(tree, 1, None)
    assert needs_self_check(tree, 3, None)  # correct terminal: always
    assert not needs_self_check(tree, 6, 0.0)  # incorrect terminal: never
    tree.nodes[4].visits, tree.nodes[4].value = 0, 1.0
    assert not needs_self_check(tree, 4, 0.5)  # never visited: Q means nothing yet
    kinds = [s.kind for s in verbalize(tree, merge_paths(tree, [3]), Phrases(), None)]
    assert kinds == ["step", "step", "check", "conclusion"]


def test_custom_phrases():
    tree = sample_tree()
    phrases = Phrases(
        question="", doubt="Hmm, wrong.", confirm="", backtrack="Back to <{step}>.", conclusion="", quote_chars=10
    )
    text = join_segments(verbalize(tree, merge_paths(tree, [6, 3]), phrases, 0.5))
    assert text == (
        "Compute 3 * 4 = 12.\n\nThen 2 + 12 = 13.\n\nSo \\boxed{13}\n\nHmm, wrong. Back to <Compute...>."
        "\n\nThen 2 + 12 = 14. \\boxed{14}"
    )


def test_phrase_validation():
    with pytest.raises(ValueError, match="backtrack"):
        Phrases(backtrack="Let's go back.")
    with pytest.raises(ValueError, match="conclusion"):
        Phrases(conclusion="The end.")


def test_quote_step():
    assert quote_step("Short step.", 60) == "Short step."
    assert quote_step("Compute the\n\nsum of   all terms of the series first", 24) == "Compute the sum of..."
    assert quote_step("Compute the sum of all terms", 25) == "Compute the sum of all..."
    assert len(quote_step("x" * 100, 20)) == 20


def test_trace_must_end_at_correct_terminal():
    tree = sample_tree()
    with pytest.raises(ValueError, match="correct terminal"):
        verbalize(tree, merge_paths(tree, [3, 6]), Phrases(), 0.9)
    with pytest.raises(ValueError, match="unknown event"):
        verbalize(tree, [Event("jump", 1), Event("step", 3)], Phrases(), 0.9)
