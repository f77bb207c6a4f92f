"""Grounded backtracks: does each go-back target quote text that the response really wrote before it?"""

from __future__ import annotations

from astro_pl.evaluation.backtracks import count_backtracks, grounded_backtracks
from astro_pl.search.verbalize import Phrases, quote_step

DOUBT = "But wait, are we solving the problem correctly so far? Hmm... I'm not sure if we're solving the problem " \
        "correctly so far."
STEP_1 = "First, compute 4 * 5 = 20, which is the product of the last two numbers in the expression."
STEP_2 = "Then 3 + 20 = 24. \\boxed{24}"


def go_back(step: str) -> str:
    """The verbaliser's own backtrack sentence, quoting (and shortening) `step` exactly as traces do."""
    return f"{DOUBT} {Phrases().backtrack.format(step=quote_step(step, 60))}"


def test_verbalised_go_back_to_a_written_step_is_grounded():
    # the quote is shortened to "First, compute 4 * 5 = 20, which is the product of the..." ; without the
    # trailing "..." it is a prefix of STEP_1, which the response wrote before going back
    assert quote_step(STEP_1, 60).endswith("...")
    text = "\n\n".join([STEP_1, STEP_2, go_back(STEP_1), "Then 3 + 20 = 23. \\boxed{23}"])
    assert grounded_backtracks(text) == (1, 1)


def test_go_back_to_a_step_never_written_is_not_grounded():
    text = "\n\n".join([STEP_1, STEP_2, go_back("Compute 7 - 2 = 5 first."), "So 23. \\boxed{23}"])
    assert grounded_backtracks(text) == (0, 1)


def test_quote_written_only_after_the_backtrack_is_not_grounded():
    text = "\n\n".join([STEP_2, go_back(STEP_1), STEP_1])
    assert grounded_backtracks(text) == (0, 1)


def test_restart_is_grounded_and_a_go_back_without_a_quote_is_not():
    restart = f"{DOUBT} Let's restart our solution from the beginning."
    vague = f"{DOUBT} Let's go back to where we set up the equation."
    text = "\n\n".join([STEP_2, restart, STEP_1, vague, STEP_2])
    assert grounded_backtracks(text) == (1, 2)


def test_repeating_an_earlier_go_back_quote_does_not_ground_it():
    # both backtracks quote a step that was never written; the second finds the quote only inside the first
    # backtrack sentence, which does not count as written text
    text = "\n\n".join([STEP_2, go_back("Compute 7 - 2 = 5."), STEP_2, go_back("Compute 7 - 2 = 5."), STEP_2])
    assert grounded_backtracks(text) == (0, 2)


def test_folding_and_totals_agree_with_count_backtracks():
    # whitespace inside the written step (a line break) and curly quotes and apostrophes in the model's output
    text = ("Compute 4 * 5\n= 20 first.\n\nThen 3 + 20 = 24.\n\n"
            "LET\u2019S GO BACK TO where we wrote \u201ccompute 4 * 5 = 20\u201d and try again.\n\nAnd 3 + 20 = 23."
            "\n\nLet's go back to where we wrote \"\" then.\n\nLet's go back to where we wrote \"...\" then.")
    assert grounded_backtracks(text) == (1, 3)
    assert count_backtracks(text) == 3
    assert grounded_backtracks("no backtracking here. \\boxed{1}") == (0, 0)


def test_configured_phrases():
    text = "Step A: 2 + 2 = 4.\n\nNo. Return to 'x'. Return to \"Step A\" now.\n\nStart over."
    # "Return to" quotes with double quotes only: the first has no quote (ungrounded), the second is grounded;
    # "Start over." is a whole sentence, a restart
    assert grounded_backtracks(text, ["Return to", "Start over."]) == (2, 3)
