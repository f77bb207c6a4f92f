"""Final-answer extraction and answer equivalence for math problems: the ground truth of every reward and score.

`extract_final_answer` takes the LAST complete `\\boxed{}`/`\\fbox{}` (ASTRO traces box wrong intermediate answers,
backtrack, and box the final one; math-verify takes the first). `answers_match` decides in three stages, cheapest
first: (1) clean-up and exact text, plain numbers as exact fractions, words (`normalize.py`) over the answer's
structure (`structure.py`); (2) only pairs those cannot decide go to sympy in a worker process (`symbolic.py`,
`pool.py`) with a hard time limit that holds in any thread or process; (3) on timeout, parse failure or any error:
not equal. Verdicts are cached (bounded LRU) per (pred, gold) pair.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from astro_pl.rewards.normalize import choice_letter, clean, fast_equal
from astro_pl.rewards.pool import WorkerPool
from astro_pl.rewards.structure import Node, match, parse

MAX_ANSWER_CHARS = 2000
"""Longer answers are compared as exact text only (no model writes a 2,000-character final answer)."""
MAX_SYMBOLIC_PAIRS = 64
"""At most this many undecided scalar pairs of one answer pair go to sympy (the rest count as unequal)."""
MAX_SCALAR_COMPARISONS = 10_000
"""Bound on scalar comparisons per answer pair: nested unordered groups would otherwise grow as a product."""
CACHE_SIZE = 1 << 16

_BOX = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_BARE_BOX_END = re.compile(r"[\s$]")
_POOL = WorkerPool()
_cache: OrderedDict[tuple[str, str], bool] = OrderedDict()
_cache_lock = threading.Lock()


def _brace_partners(text: str) -> dict[int, int]:
    """Position of each `{` -> its matching `}` (escaped `\\{`/`\\}` skipped): one pass, so scanning many boxes
    of a 200,000-character response stays linear."""
    partners, stack, i = {}, [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2 if text[i + 1 : i + 2] in ("{", "}") else 1
            continue
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            partners[stack.pop()] = i
        i += 1
    return partners


def extract_final_answer(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}` or `\\fbox{...}` (also the bare `\\boxed 5`), or None.

    A box that opens but never closes (a truncated response) is skipped, so the last complete one counts. Boxes
    nested inside a box are part of its content; a box whose whole content is another box is unwrapped. One brace
    pass and one scan: linear time and no recursion, however deeply the boxes nest.
    """
    if not isinstance(text, str):
        return None
    partners, span, pos = None, None, 0
    while (m := _BOX.search(text, pos)) is not None:
        i = _skip_spaces(text, m.end())
        if i < len(text) and text[i] == "{":
            partners = _brace_partners(text) if partners is None else partners
            end = partners.get(i)
            if end is None:
                pos = m.end()
                continue
            span, pos = (i + 1, end), end + 1
        elif i < len(text) and text[i] not in "\n\r\t$}":
            end = _BARE_BOX_END.search(text, i)
            end = len(text) if end is None else end.start()
            span, pos = (i, i + len(text[i:end].rstrip(".,;"))), end
        else:
            pos = m.end()
    if span is None:
        return None
    start, end = span
    while partners is not None and (inner := _whole_box(text, start, end, partners)) is not None:
        start, end = inner
    return text[start:end].strip()


def _skip_spaces(text: str, i: int) -> int:
    while i < len(text) and text[i] == " ":
        i += 1
    return i


def _whole_box(text: str, start: int, end: int, partners: dict[int, int]) -> tuple[int, int] | None:
    """The content span of the box that is all of text[start:end] (surrounding whitespace aside), or None."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    m = _BOX.match(text, start, end)
    if m is None:
        return None
    i = _skip_spaces(text, m.end())
    if i < end and text[i] == "{" and partners.get(i) == end - 1:
        return i + 1, end - 1
    return None


def _unbox(s: str) -> str:
    boxed = extract_final_answer(s) if _BOX.search(s) else None
    return s if boxed is None else boxed


def _decide(pred: str, gold: str, deadline: float) -> bool:
    a, b = clean(pred), clean(gold)
    if not a or not b:
        return False
    if a == b:
        return True
    choice_a, choice_b = choice_letter(a), choice_letter(b)
    if choice_a and choice_b:
        return choice_a[0] == choice_b[0]
    if choice_a and choice_a[1]:
        a = choice_a[1]
    if choice_b and choice_b[1]:
        b = choice_b[1]
    if _match_trees(parse(a), parse(b), deadline):
        return True
    # `x + y = 3` vs `y = 3 - x`: stripping `y =` from one side only made them incomparable
    return "=" in a and "=" in b and _match_trees(parse(a, strip_var=False), parse(b, strip_var=False), deadline)


class _OverBudget(Exception):
    """Too many scalar comparisons (nested unordered groups), or the time limit passed in the fast stage."""


def _match_trees(tree_a: Node, tree_b: Node, deadline: float) -> bool:
    """Structural match: fast verdicts first, then one batched symbolic request for the undecided scalar pairs."""
    pending: dict[tuple[str, str], None] = {}
    calls = 0

    def first_pass(x: str, y: str) -> bool:
        nonlocal calls
        calls += 1
        if calls > MAX_SCALAR_COMPARISONS or (calls % 64 == 0 and time.monotonic() > deadline):
            raise _OverBudget
        verdict = fast_equal(x, y)
        if verdict is None:
            pending[(x, y)] = None
        return bool(verdict)

    if match(tree_a, tree_b, first_pass):
        return True
    if not pending:
        return False
    pairs = list(pending)[:MAX_SYMBOLIC_PAIRS]
    verdicts = dict(zip(pairs, _POOL.check(pairs, deadline), strict=True))
    return match(tree_a, tree_b, lambda x, y: bool(fast_equal(x, y)) or verdicts.get((x, y), False))


def answers_match(pred: str, gold: str, timeout: float = 2.0) -> bool:
    """Whether a predicted final answer equals the gold one (see the module docstring for how).

    Args:
        pred: The model's answer, e.g. from `extract_final_answer` (untrusted text: it is never evaluated).
        gold: The reference answer.
        timeout: Hard limit in seconds for the symbolic stage (the fast stages are linear in the input length).

    Returns:
        True only when the answers are equivalent; False on any failure, timeout or malformed input.
    """
    if not isinstance(pred, str) or not isinstance(gold, str):
        if isinstance(gold, (int, float)) and not isinstance(gold, bool):
            gold = str(int(gold)) if float(gold).is_integer() else repr(gold)
        if not isinstance(pred, str) or not isinstance(gold, str):
            return False
    if pred.strip() == gold.strip():
        return bool(pred.strip())
    pred, gold = _unbox(pred), _unbox(gold)  # a whole response or `\\boxed{5}` passed as the answer
    if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return False
    key = (pred, gold)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    start = time.monotonic()
    try:
        verdict = _decide(pred, gold, start + timeout)
    except _OverBudget:
        return False
    except Exception:  # a checker bug must cost one reward, not a training run
        verdict = False
    if not verdict and time.monotonic() - start >= timeout:
        return False  # a timeout may be load, not the answer: do not cache it
    with _cache_lock:
        _cache[key] = verdict
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return verdict


def group_answers(answers: Sequence[str | None], match_fn: Callable[[str, str], bool]) -> list[list[int]]:
    """Indices of equivalent answers, grouped in order of first appearance; None answers are left out."""
    groups: list[list[int]] = []
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        for group in groups:
            first = answers[group[0]]
            if answer == first or match_fn(answer, first):
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


def math_reward(response: str, gold: str, correct: float = 1.0, incorrect: float = -1.0, timeout: float = 2.0) -> float:
    """ASTRO's outcome reward: `correct` if the last boxed answer of `response` matches `gold`, else `incorrect`
    (also when there is no boxed answer). `timeout` as in `answers_match`."""
    answer = extract_final_answer(response)
    return correct if answer is not None and answers_match(answer, gold, timeout) else incorrect


def warm_up(num_workers: int = 1) -> None:
    """Start the sympy worker processes now (about a second each) instead of at the first symbolic check."""
    _POOL.warm_up(num_workers)
