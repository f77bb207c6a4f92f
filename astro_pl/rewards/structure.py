"""The shape of an answer: scalar, tuple or interval (ordered, brackets matter), set or solution list (unordered),
union of intervals, matrix/vector. Pure string work; scalars are compared by a callback.

`1,000` is ambiguous (a number with a thousands separator, or the list 1, 000): it parses to both readings and
either may match. A bare list `1, 2` is a solution list (unordered), except against a tuple, where order counts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from astro_pl.rewards.normalize import inequality_interval, is_thousands, strip_lead_var, strip_units

MAX_ITEMS = 64
"""Groups with more items are compared as text only (keeps the all-pairs table of unordered matching small)."""
MAX_DEPTH = 12

_OPEN = {"(": ")", "[": "]", "{": "}"}
_MATRIX = re.compile(r"^\\begin\{([pbvBV]?matrix|array|smallmatrix)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}$", re.S)
_LIST_SEPS = (",", ";", " and ", " or ", "\\text{and}", "\\text{or}")
UNORDERED = frozenset({"list", "set", "union"})


@dataclass(frozen=True)
class Group:
    """A compound answer. kind: `list`, `set`, `union`, `alt` (alternative readings), `matrix` (items are rows),
    `row`, or the bracket pair of a tuple/interval such as `()`, `[)`."""

    kind: str
    items: tuple[Node, ...]


Node = str | Group
ScalarEq = Callable[[str, str], bool]


def _closers(s: str) -> list[int]:
    """For each position, the bracket depth change (+1 opener, -1 closer, 0 otherwise); `\\{`/`\\}` count too."""
    out = [0] * len(s)
    for i, ch in enumerate(s):
        if ch in "([{" or s.startswith("\\langle", i):
            out[i] = 1
        elif ch in ")]}" or s.startswith("\\rangle", i):
            out[i] = -1
    return out


def split_top(s: str, seps: tuple[str, ...]) -> list[str]:
    """Split at separators that sit outside every bracket; unbalanced text is returned whole."""
    delta, parts, depth, start, i = _closers(s), [], 0, 0, 0
    while i < len(s):
        depth += delta[i]
        if depth < 0:
            return [s]
        if depth == 0:
            for sep in seps:
                if s.startswith(sep, i):
                    parts.append(s[start:i])
                    i += len(sep)
                    start = i
                    break
            else:
                i += 1
            continue
        i += 1
    if depth != 0:
        return [s]
    parts.append(s[start:])
    return [p.strip() for p in parts]


def _wrapped(s: str) -> tuple[str, str, str] | None:
    """`(inner)`, `[inner)`, `\\{inner\\}`, `\\langle inner\\rangle`: (open, close, inner) if one pair encloses all."""
    for open_, close in (("\\{", "\\}"), ("\\langle", "\\rangle")):
        if s.startswith(open_) and s.endswith(close):
            inner = s[len(open_) : -len(close)]
            if len(split_top(inner, ())) == 1 and _balanced(inner):
                return open_, close, inner
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]":
        inner = s[1:-1]
        if _balanced(inner):
            return s[0], s[-1], inner
    return None


def _balanced(s: str) -> bool:
    depth = 0
    for d in _closers(s):
        depth += d
        if depth < 0:
            return False
    return depth == 0


def _expand_pm(s: str) -> Node:
    parts = split_top(s, ("\\pm", "\\mp"))
    if len(parts) != 2:
        return s
    left, right = parts
    return Group("list", (f"{left}+{right}".strip(), f"{left}-{right}".strip()))


def parse(s: str, depth: int = 0, strip_var: bool = True) -> Node:
    """Parse one cleaned answer into its structure (see the module docstring).

    Args:
        s: A cleaned answer (`normalize.clean`).
        depth: Recursion depth (deeper nesting stays text).
        strip_var: Drop a leading `x =` (one variable name); off to compare two general equations.
    """
    s = strip_lead_var(s.strip()) if strip_var else s.strip()
    if depth > MAX_DEPTH:
        return s
    s = inequality_interval(s) or s
    m = _MATRIX.match(s)
    if m:
        rows = [r for r in split_top(m.group(2).strip(), ("\\\\",)) if r.strip()]
        return Group(
            "matrix",
            tuple(Group("row", tuple(parse(c, depth + 1, strip_var) for c in split_top(r, ("&",)))) for r in rows),
        )
    parts = split_top(s, ("\\cup",))
    if len(parts) > 1:
        return Group("union", tuple(parse(p, depth + 1, strip_var) for p in parts))
    parts = [re.sub(r"^(?:and|or)\s+", "", p) for p in split_top(s, _LIST_SEPS)]
    if len(parts) > 1:
        as_list = Group("list", tuple(parse(p, depth + 1, strip_var) for p in parts if p))
        if is_thousands(s):
            return Group("alt", (s.replace(",", "").replace(" ", ""), as_list))
        return as_list
    w = _wrapped(s)
    if w:
        open_, close, inner = w
        items = split_top(inner, (",", ";")) if inner.strip() else []
        if open_ == "\\{":
            return Group("set", tuple(parse(p, depth + 1, strip_var) for p in items))
        if len(items) > 1:
            kind = "()" if open_ == "\\langle" else open_ + close
            return Group(kind, tuple(parse(p, depth + 1, strip_var) for p in items))
        if open_ + close == "()" and items:
            return parse(inner, depth + 1, strip_var)
    pm = _expand_pm(s)
    return pm if isinstance(pm, Group) else strip_units(s)


def _is_interval(node: Node) -> bool:
    return isinstance(node, Group) and len(node.kind) == 2 and len(node.items) == 2


def _flat_vector(node: Node) -> tuple[Node, ...] | None:
    """A one-row or one-column matrix as its entries; None for anything else."""
    if not isinstance(node, Group) or node.kind != "matrix":
        return None
    rows = node.items
    if len(rows) == 1:
        return rows[0].items
    if all(isinstance(r, Group) and len(r.items) == 1 for r in rows):
        return tuple(r.items[0] for r in rows)
    return None


def _ordered(a: tuple[Node, ...], b: tuple[Node, ...], eq: ScalarEq) -> bool:
    if len(a) != len(b):
        return False
    results = [match(x, y, eq) for x, y in zip(a, b, strict=True)]  # no short-circuit: see `match`
    return all(results)


def _unordered(a: tuple[Node, ...], b: tuple[Node, ...], eq: ScalarEq) -> bool:
    if len(a) != len(b):
        return False
    table = [[match(x, y, eq) for y in b] for x in a]
    owner: list[int | None] = [None] * len(b)

    def augment(i: int, seen: set[int]) -> bool:  # Kuhn's bipartite matching
        for j, ok in enumerate(table[i]):
            if ok and j not in seen:
                seen.add(j)
                if owner[j] is None or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    return all(augment(i, set()) for i in range(len(a)))


def match(a: Node, b: Node, eq: ScalarEq) -> bool:
    """Structural equality with `eq` deciding scalars.

    Every scalar pair that could matter is passed to `eq` (no short-circuit), so a first pass with a recording
    `eq` collects all pairs the symbolic checker must decide before the second pass.
    """
    if isinstance(a, Group) and a.kind == "alt":
        return any([match(x, b, eq) for x in a.items])
    if isinstance(b, Group) and b.kind == "alt":
        return any([match(a, y, eq) for y in b.items])
    if isinstance(a, str) and isinstance(b, str):
        return eq(a, b)
    if isinstance(a, str) or isinstance(b, str):
        group, scalar = (b, a) if isinstance(a, str) else (a, b)
        return group.kind in ("list", "set") and len(group.items) == 1 and match(group.items[0], scalar, eq)
    if max(len(a.items), len(b.items)) > MAX_ITEMS:
        return a == b
    if a.kind in UNORDERED and b.kind in UNORDERED:
        if (a.kind == "union") != (b.kind == "union") and not all(map(_is_interval, a.items + b.items)):
            return False
        return _unordered(a.items, b.items, eq)
    if {a.kind, b.kind} == {"()", "list"}:
        return _ordered(a.items, b.items, eq)
    if a.kind == "matrix" and b.kind == "matrix":
        return len(a.items) == len(b.items) and _ordered(a.items, b.items, eq)
    if a.kind == b.kind:
        return _ordered(a.items, b.items, eq)
    vec_a, vec_b = _flat_vector(a), _flat_vector(b)
    if (vec_a is not None) != (vec_b is not None) and {a.kind, b.kind} & {"()", "[]"}:
        return _ordered(vec_a if vec_a is not None else a.items, vec_b if vec_b is not None else b.items, eq)
    return False
