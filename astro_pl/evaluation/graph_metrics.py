"""Whether a response to a path-finding problem really searches: pure functions over its text (`tasks/graph.py`).

Read off the moves "a>b" a response writes, independent of the trace's reflection phrases:
- first move: the node of the first move is the gold path's second node (needs look-ahead; chance is 1/arms);
- dead-end calls: a move saying "dead" is grounded when it follows a prompt edge to a node without outgoing edge;
- first attempt: the moves before the first one that does not continue from the last node (a jump back is a
  backtrack); it is wrong unless it walks from the start to the goal along prompt edges;
- recovery: the first attempt is wrong and the final answer is a valid path;
- false "yes": a final answer is claimed (in `\\boxed{}`) but is not a valid path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

from astro_pl.rewards.math import extract_final_answer
from astro_pl.tasks.graph import DEAD, Graph, gold_path, parse_path, valid_path

_MOVE = re.compile(rf"(\d+)>(\d+)( {DEAD}\b)?")


class Move(NamedTuple):
    source: int
    target: int
    dead: bool
    """Whether the move says the node it reaches is a dead end."""


def moves(text: str) -> list[Move]:
    """The moves "a>b" (and "a>b dead") of a response, in order."""
    return [Move(int(a), int(b), bool(dead)) for a, b, dead in _MOVE.findall(text)]


def first_move_correct(graph: Graph, text: str) -> bool:
    """Whether the first move goes from the start to the gold path's second node."""
    found = moves(text)
    return bool(found) and (found[0].source, found[0].target) == gold_path(graph)[:2]


def dead_end_calls(graph: Graph, text: str) -> list[bool]:
    """One entry per "dead" the response says: True (grounded) when its move is a prompt edge and the node it
    reaches has no outgoing edge (a made-up move or node is no evidence of a check)."""
    edges = set(graph.edges)
    return [(m.source, m.target) in edges and not graph.successors(m.target) for m in moves(text) if m.dead]


def first_attempt(graph: Graph, text: str) -> list[int]:
    """The path of the first attempt: the start, then the moves while each continues from the last node."""
    path = [graph.start]
    for m in moves(text):
        if m.source != path[-1]:
            break
        path.append(m.target)
    return path


def final_path(text: str) -> tuple[int, ...] | None:
    """The path claimed in the last `\\boxed{}`, or None (no claim, or not a list of node ids)."""
    answer = extract_final_answer(text)
    return None if answer is None else parse_path(answer)


class GraphVerdict(NamedTuple):
    """What one response did (see the module docstring)."""

    first_move_correct: bool
    dead_calls: int
    grounded_dead_calls: int
    first_attempt_wrong: bool
    recovered: bool
    solved: bool
    false_yes: bool


def judge_response(graph: Graph, text: str) -> GraphVerdict:
    """The verdict on one response to `graph`."""
    calls = dead_end_calls(graph, text)
    claimed = final_path(text)
    solved = claimed is not None and valid_path(graph.edges, graph.start, graph.goal, claimed)
    first_wrong = not valid_path(graph.edges, graph.start, graph.goal, first_attempt(graph, text))
    return GraphVerdict(first_move_correct(graph, text), len(calls), sum(calls), first_wrong, first_wrong and solved,
                        solved, claimed is not None and not solved)


def summarize(verdicts: Sequence[GraphVerdict]) -> dict[str, float | int | None]:
    """Rates over responses; a rate whose denominator is 0 is None.

    Returns:
        responses; accuracy (valid final path); first_move_accuracy; dead_calls (per response); grounded_dead_calls
        (share of "dead" calls at real dead ends); first_attempt_wrong (share); recovery (share of wrong first
        attempts that end at a valid path); false_yes (share of responses claiming an invalid path).
    """
    n = len(verdicts)
    calls = sum(v.dead_calls for v in verdicts)
    wrong_first = sum(v.first_attempt_wrong for v in verdicts)

    def rate(count: int, total: int) -> float | None:
        return count / total if total else None

    return {
        "responses": n,
        "accuracy": rate(sum(v.solved for v in verdicts), n),
        "first_move_accuracy": rate(sum(v.first_move_correct for v in verdicts), n),
        "dead_calls": rate(calls, n),
        "grounded_dead_calls": rate(sum(v.grounded_dead_calls for v in verdicts), calls),
        "first_attempt_wrong": rate(wrong_first, n),
        "recovery": rate(sum(v.recovered for v in verdicts), wrong_first),
        "false_yes": rate(sum(v.false_yes for v in verdicts), n),
    }
