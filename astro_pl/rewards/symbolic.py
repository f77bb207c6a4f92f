"""Symbolic equivalence of two scalar LaTeX answers with sympy; runs inside a checker worker process (`pool.py`).

Parsing goes through latex2sympy2_extended's ANTLR grammar (a LaTeX tree, unevaluated powers), never through
`eval`, `sympify` or `parse_expr` of the text. Before any evaluation the tree is screened for numbers too large to
build (power towers such as `9^{9^{9^{9}}}`, huge exponents, factorials, integers); such answers are judged by text
only. Numbers compare within 1e-9 relative when a decimal was written, else exactly (to 1e-30 at a precision
covering every digit); expressions with variables by their values at a few fixed sample points (including
negative ones, so `\\sqrt{x^2}` does not equal `x`), and where those do not evaluate, by `expand` or `simplify`.
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import sys

import sympy
from latex2sympy2_extended import latex2sympy

from astro_pl.rewards.normalize import numbers_close

MAX_SYMBOLIC_CHARS = 600
MAX_NESTING = 30
MAX_RESULT_DIGITS = 2000
"""Reject a numeric power or factorial whose value would need more decimal digits than this."""
WORKER_MEMORY_BYTES = 4 << 30
"""Address-space cap of a worker process: a runaway computation fails with MemoryError instead of swapping."""
_SAMPLES = (sympy.Rational(37, 100), sympy.Rational(173, 100), sympy.Rational(-61, 100), sympy.Rational(29, 10))


_I = sympy.Symbol("i")


class CheckTimeout(Exception):
    """Raised by the worker's interval timer when one batch of checks runs out of time."""


def text_is_safe(s: str) -> bool:
    """Cheap screen before parsing: bounded length and bracket nesting."""
    if len(s) > MAX_SYMBOLIC_CHARS:
        return False
    depth = 0
    for ch in s:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth > MAX_NESTING:
            return False
    return True


def _log10_size(expr: sympy.Basic) -> float:
    """Upper estimate of log10 |value| for numeric subtrees; inf when it cannot be bounded cheaply."""
    if isinstance(expr, sympy.Integer):
        return abs(int(expr)).bit_length() * math.log10(2)
    if isinstance(expr, sympy.Rational):
        return max(_log10_size(sympy.Integer(expr.p)), _log10_size(sympy.Integer(expr.q)))
    if isinstance(expr, sympy.Float):
        return abs(float(sympy.log(abs(expr) + 1, 10))) if expr.is_finite else math.inf
    return 0.0


def tree_is_safe(expr: object) -> bool:
    """No numeric power, factorial or integer whose exact value would be astronomically large."""
    if isinstance(expr, sympy.MatrixBase):
        return all(tree_is_safe(x) for x in expr)
    if isinstance(expr, (list, tuple)):
        return all(tree_is_safe(x) for x in expr)
    if not isinstance(expr, sympy.Basic):
        return True
    for node in sympy.preorder_traversal(expr):
        if isinstance(node, sympy.Integer) and _log10_size(node) > MAX_RESULT_DIGITS:
            return False
        if isinstance(node, sympy.Pow) and not node.exp.free_symbols:
            if node.exp.has(sympy.Pow, sympy.factorial) and not node.base.free_symbols:
                return False
            if node.exp.is_Number and abs(float(node.exp)) > 1:
                base = _log10_size(node.base) if node.base.is_Number else 3.0
                if abs(float(node.exp)) * max(base, 1e-3) > MAX_RESULT_DIGITS:
                    return False
            elif not node.exp.is_Number and not node.base.free_symbols:
                return False
        if isinstance(node, (sympy.factorial, sympy.binomial)) and any(
            a.is_Number and abs(float(a)) > 500 for a in node.args
        ):
            return False
    return True


def to_sympy(s: str) -> object | None:
    """LaTeX -> sympy via the ANTLR grammar, or None when it does not parse or is unsafe to evaluate."""
    s = s.replace("%", "").strip()
    if not s or not text_is_safe(s):
        return None
    try:
        expr = latex2sympy(s, normalization_config=None)
    except CheckTimeout:
        raise
    except Exception:
        return None
    if not tree_is_safe(expr):
        return None
    return expr.subs(_I, sympy.I) if isinstance(expr, sympy.Expr) else expr  # a lone `i` is the imaginary unit


def _close(a: sympy.Expr, b: sympy.Expr, exact: bool) -> bool | None:
    """Compare two numeric values: within 1e-9 relative if a float was written; otherwise to 1e-30 absolute (or
    relative, below 1) at a precision that covers every digit (`2^{200}` differs from `2^{200}+1`).
    None if either is not a finite number."""
    va, vb = sympy.N(a, 20), sympy.N(b, 20)
    if not (va.is_number and vb.is_number) or va.has(sympy.nan, sympy.zoo) or vb.has(sympy.nan, sympy.zoo):
        return None
    if va.has(sympy.oo, -sympy.oo) or vb.has(sympy.oo, -sympy.oo):
        return va == vb
    if not exact:
        return numbers_close(complex(va), complex(vb))
    scale = float(max(abs(va), abs(vb)))
    digits = int(max(math.log10(scale), 0.0)) + 45 if scale > 0 else 45
    diff = sympy.N(a - b, digits)
    if not diff.is_number:
        return None
    return bool(diff == 0 or abs(complex(diff)) <= 1e-30 * min(scale, 1.0))


def _sampled_equal(a: sympy.Expr, b: sympy.Expr, exact: bool) -> bool | None:
    """Compare at fixed sample points: any disagreement is a proof of inequality; agreement at three or more
    points is taken as equality; None when too few points evaluate to finite numbers."""
    symbols = sorted(a.free_symbols | b.free_symbols, key=str)
    checked = 0
    for k in range(len(_SAMPLES)):
        point = {s: _SAMPLES[(k + i) % len(_SAMPLES)] for i, s in enumerate(symbols)}
        verdict = _close(a.subs(point), b.subs(point), exact)
        if verdict is False:
            return False
        checked += verdict is True
    return True if checked >= 3 else None


def expr_equal(a: object, b: object) -> bool:
    """Equality of two parsed answers (expressions, equations, matrices, sets, tuples)."""
    if isinstance(a, sympy.Eq) and isinstance(b, sympy.Eq):
        da, db = a.lhs - a.rhs, b.lhs - b.rhs
        if da == 0 or db == 0:
            return da == db
        ratio = sympy.simplify(da / db)
        return bool(ratio.is_number and ratio != 0 and not ratio.has(sympy.zoo, sympy.nan))
    if isinstance(a, sympy.Eq) or isinstance(b, sympy.Eq):
        eq, other = (a, b) if isinstance(a, sympy.Eq) else (b, a)
        return isinstance(eq.lhs, sympy.Symbol) and expr_equal(eq.rhs, other)
    if isinstance(a, sympy.MatrixBase) or isinstance(b, sympy.MatrixBase):
        if not (isinstance(a, sympy.MatrixBase) and isinstance(b, sympy.MatrixBase)) or a.shape != b.shape:
            return False
        return all(expr_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (tuple, list, sympy.Tuple)) or isinstance(b, (tuple, list, sympy.Tuple)):
        if type(a) is not type(b) or len(a) != len(b):
            return False
        return all(expr_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, sympy.Set) or isinstance(b, sympy.Set):
        return isinstance(a, sympy.Set) and isinstance(b, sympy.Set) and bool(a == b)
    if not (isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr)):
        return False
    if a == b:
        return True
    exact = not (a.has(sympy.Float) or b.has(sympy.Float))
    if not a.free_symbols and not b.free_symbols:
        verdict = _close(a, b, exact)
        if verdict is not None:
            return verdict
    verdict = _sampled_equal(a, b, exact)
    if verdict is not None:
        return verdict
    return sympy.expand(a - b) == 0 or sympy.simplify(a - b) == 0


def symbolic_equal(a: str, b: str) -> bool:
    """Whether two cleaned scalar answers are mathematically equal; False when either does not parse."""
    try:
        ea, eb = to_sympy(a), to_sympy(b)
        return ea is not None and eb is not None and bool(expr_equal(ea, eb))
    except CheckTimeout:
        raise
    except Exception:
        return False


def _on_alarm(signum: int, frame: object) -> None:
    raise CheckTimeout


def serve(stdin_fd: int = 0, stdout_fd: int = 1) -> None:
    """Worker loop: one JSON request per line `{"pairs": [[a, b], ...], "timeout": s}` -> `{"results": [...]}`.

    The interval timer stops a slow batch from inside (pairs not reached are False); the parent kills the process
    if even that does not answer in time (e.g. a long computation inside C code).
    """
    out = os.fdopen(os.dup(stdout_fd), "w", encoding="utf-8")
    sys.stdout = sys.stderr  # anything sympy prints must not corrupt the protocol
    signal.signal(signal.SIGALRM, _on_alarm)
    sys.setrecursionlimit(3000)
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in os.fdopen(stdin_fd, encoding="utf-8", errors="replace"):
        request = json.loads(line)
        pairs = request["pairs"]
        results = [False] * len(pairs)
        signal.setitimer(signal.ITIMER_REAL, max(float(request["timeout"]), 1e-3))
        try:
            for i, (a, b) in enumerate(pairs):
                results[i] = symbolic_equal(a, b)
        except (CheckTimeout, RecursionError, MemoryError):
            pass  # this pair and the rest stay False
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        out.write(json.dumps({"results": results}) + "\n")
        out.flush()


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    symbolic_equal("\\frac{1}{2}", "0.5")  # load the ANTLR grammar before the first real request
    serve()
