"""Cheap, pure-Python normalisation of final answers: LaTeX clean-up, exact numbers, and the quick verdicts.

Everything here is string and `fractions.Fraction` work: no sympy, no subprocess, bounded by the input length.
It decides most answer pairs (same text after clean-up, two plain numbers, two words); only pairs it cannot decide
(`fast_equal` returns None) go on to the symbolic check in `symbolic.py`.
"""

from __future__ import annotations

import re
from fractions import Fraction

MAX_NUMBER_DIGITS = 400
"""Longer digit strings (or exponents past this) are not turned into exact numbers: keeps `1e999999999` cheap."""

_SURROGATES = re.compile("[\ud800-\udfff]")
_WRAPPERS = (("$$", "$$"), ("$", "$"), ("\\[", "\\]"), ("\\(", "\\)"))
_SPACING = re.compile(r"(?<!\\)\\[,;:! ]|\\q?quad\b|~|\\displaystyle\b|\\textstyle\b")
_SIZING = re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big|biggl|biggr|bigg|Bigg)\b\s*(\.(?![0-9]))?")
_DEGREES = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°|\\degree\b|\^\s*\{\s*\}")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mathit|mbox|operatorname)\s*\{([^{}]*)\}")
_UNIT_AFTER_NUMBER = re.compile(
    r"(?<=[0-9}.])\s*\\(?:text|mbox|mathrm)\s*\{(?!\s*(?:and|or)\s*\})\s*[a-zA-Z][a-zA-Z .]*\}"
    r"(?:\s*\^\s*\{?\s*[23]\s*\}?)?"
)
_FRAC_SHORT = re.compile(r"\\frac\s*(\d)\s*(\d)")
_FRAC_SHORT_NUM = re.compile(r"\\frac\s*(\d)\s*(?=\{)")
_FRAC_SHORT_DEN = re.compile(r"\\frac\s*(\{[^{}]*\})\s*(\d)")
_SQRT_SHORT = re.compile(r"\\sqrt\s*(\d|[a-zA-Z](?![a-zA-Z]))")
_MIXED = re.compile(r"(?<![\w^_}.\\])(-?)(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}")
_LEAD_VAR = re.compile(r"^\s*(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?\w+\}?)?(?:\s*\(\s*[a-zA-Z]\s*\))?\s*(?:=|\\in\b)\s*")
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
_FRAC_NUMBER = re.compile(r"^([+-]?)\\frac\{([+-]?[\d.]+)\}\{([+-]?[\d.]+)\}$")
_SLASH_NUMBER = re.compile(r"^([+-]?[\d.]+)/([+-]?[\d.]+)$")
_MIXED_NUMBER = re.compile(r"^(-?)\((\d+)\+\\frac\{(\d+)\}\{(\d+)\}\)$")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_CHOICE = re.compile(r"^\(\s*([A-Ea-e])\s*\)\s*(.*)$")
_WORDS = re.compile(r"^[A-Za-z][A-Za-z '\-]*$")
_NOT_UNITS = frozenset("pi sqrt and or ln log sin cos tan sec csc cot exp i e x y z n k".split())
_BASE_SUBSCRIPT = re.compile(r"_\{?\d+\}?$")
_RELATION = re.compile(r"(\\(?:leqslant|geqslant|leq|geq|le|ge|lt|gt)(?![a-zA-Z])|<=|>=|≤|≥|<|>)")
_LESS = {
    "<=": "<=",
    ">=": ">=",
    "≤": "<=",
    "≥": ">=",
    "<": "<",
    "\\lt": "<",
    "\\le": "<=",
    "\\leq": "<=",
    "\\leqslant": "<=",
    ">": ">",
    "\\gt": ">",
    "\\ge": ">=",
    "\\geq": ">=",
    "\\geqslant": ">=",
}
_VARIABLE = re.compile(r"^(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?\w+\}?)?$")
_ALIASES = (
    ("−", "-"),
    ("\\mathbb{R}", "(-\\infty,\\infty)"),
    ("\\mathbb R", "(-\\infty,\\infty)"),
    ("\\varnothing", "\\emptyset"),
    ("\\{\\}", "\\emptyset"),
    ("\\{ \\}", "\\emptyset"),
    ("∞", "\\infty"),
)


def clean(text: str) -> str:
    """Strip the presentation-only parts of one answer (math delimiters, spacing, `\\dfrac`, `\\left`, degrees,
    dollars, unit text after a number, `\\text{}` wrappers, shorthand `\\frac12`/`\\sqrt2`, mixed numbers).

    Percent signs are kept (`%`), so callers can tell `10\\%` from `10`.
    """
    s = _SURROGATES.sub("", text).strip()
    s = s.replace("\\%", "%").replace("\\$", "").replace("\\{,\\}", "").replace("{,}", "").replace("\\!", "")
    changed = True
    while changed:
        changed = False
        for left, right in _WRAPPERS:
            if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s, changed = s[len(left) : -len(right)].strip(), True
    s = s.replace("$", "")
    s = _SPACING.sub(" ", s)
    s = _SIZING.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\cfrac", "\\frac")
    s = _DEGREES.sub("", s)
    s = _UNIT_AFTER_NUMBER.sub("", s)
    for _ in range(3):  # nested text commands, e.g. \textbf{\text{(C)}}
        s = _TEXT_CMD.sub(lambda m: m.group(1), s)
    s = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_SHORT_NUM.sub(r"\\frac{\1}", s)
    s = _FRAC_SHORT_DEN.sub(r"\\frac\1{\2}", s)
    s = _SQRT_SHORT.sub(r"\\sqrt{\1}", s)
    s = _MIXED.sub(lambda m: f"{m.group(1)}({m.group(2)}+\\frac{{{m.group(3)}}}{{{m.group(4)}}})", s)
    for old, new in _ALIASES:
        s = s.replace(old, new)
    s = re.sub(r"\s+", " ", s).strip()
    return s.rstrip(".").rstrip() if not _NUMBER.match(s) else s


def strip_units(s: str) -> str:
    """`5 cm`, `12 square feet`, `18 eggs` -> `5`, `12`, `18`: words after a plain number (not `2 pi`)."""
    head, _, tail = s.partition(" ")
    if (
        tail
        and (_NUMBER.match(head) or _FRAC_NUMBER.match(head))
        and all(
            w.isalpha() and w.isascii() and len(w) > 1 and w.lower() not in _NOT_UNITS for w in tail.rstrip(".").split()
        )
    ):
        return head
    return s


def strip_lead_var(s: str) -> str:
    """`x = 5`, `k=3`, `f(x) = x^2`, `x \\in [1, 2]` -> the right-hand side, when the left is one variable name."""
    m = _LEAD_VAR.match(s)
    if m and "=" not in s[m.end() :] and m.end() < len(s):
        return s[m.end() :].strip()
    return s


def inequality_interval(s: str) -> str | None:
    """`x > 3` -> `(3,\\infty)`, `-1 \\le x < 2` -> `[-1,2)`: one variable bounded on one or both sides."""
    parts = [p.strip() for p in _RELATION.split(s)]
    if len(parts) == 3:
        left, op, right = parts[0], _LESS[parts[1]], parts[2]
        if _VARIABLE.match(right) and not _VARIABLE.match(left):  # 3 < x  ==  x > 3
            left, right, op = right, left, {"<": ">", "<=": ">=", ">": "<", ">=": "<="}[op]
        if not _VARIABLE.match(left) or not right:
            return None
        if op in ("<", "<="):
            return f"(-\\infty,{right}" + (")" if op == "<" else "]")
        return ("(" if op == ">" else "[") + f"{right},\\infty)"
    if len(parts) == 5 and _VARIABLE.match(parts[2]) and parts[0] and parts[4]:
        op1, op2 = _LESS[parts[1]], _LESS[parts[3]]
        if op1[0] == op2[0] == "<":
            low, high, closed_low, closed_high = parts[0], parts[4], op1 == "<=", op2 == "<="
        elif op1[0] == op2[0] == ">":
            low, high, closed_low, closed_high = parts[4], parts[0], op2 == ">=", op1 == ">="
        else:
            return None
        return ("[" if closed_low else "(") + f"{low},{high}" + ("]" if closed_high else ")")
    return None


def choice_letter(s: str) -> tuple[str, str] | None:
    """`(C)`, `(C) 5`, `\\textbf{(C) } 5` (already unwrapped) -> (`C`, rest). A bare letter gives (`C`, ``)."""
    m = _CHOICE.match(s)
    if m:
        return m.group(1).upper(), m.group(2).strip()
    if len(s) == 1 and s in "ABCDE":
        return s, ""
    return None


def _decimal(text: str) -> Fraction | None:
    if not _NUMBER.match(text):
        return None
    mantissa, _, exponent = text.lower().partition("e")
    if len(mantissa) > MAX_NUMBER_DIGITS or (exponent and abs(int(exponent)) > MAX_NUMBER_DIGITS):
        return None
    return Fraction(text)


def exact_number(s: str) -> tuple[Fraction, bool, bool] | None:
    """Parse a plain number: `25`, `025`, `-2.50`, `1e3`, `\\frac{1}{2}`, `1/2`, `(2+\\frac{1}{2})`, `10%`.

    Returns:
        (value, had_percent, is_exact) or None when `s` is not a plain number. `is_exact`: written without a
        decimal point or exponent (integers, fractions), so it is compared exactly, not within a tolerance.
    """
    s = s.replace(" ", "")
    percent = s.endswith("%")
    if percent:
        s = s[:-1]
    if s.startswith("{") and s.endswith("}") and s.count("{") == 1:
        s = s[1:-1]
    value = _decimal(s)
    if value is None and (m := _FRAC_NUMBER.match(s) or _SLASH_NUMBER.match(s)):
        sign, num, den = m.groups() if len(m.groups()) == 3 else ("", *m.groups())
        num_v, den_v = _decimal(num), _decimal(den)
        if num_v is None or den_v is None or den_v == 0:
            return None
        value = num_v / den_v * (-1 if sign == "-" else 1)
    if value is None and (m := _MIXED_NUMBER.match(s)):
        sign, whole, num, den = m.groups()
        if int(den) == 0:
            return None
        value = (int(whole) + Fraction(int(num), int(den))) * (-1 if sign else 1)
    return None if value is None else (value, percent, not any(c in s for c in ".eE"))


def numbers_close(a: Fraction | float | complex, b: Fraction | float | complex, rel_tol: float = 1e-9) -> bool:
    """Relative tolerance 1e-9 (never looser than 6 significant digits); exact zero only equals zero."""
    if a == b:
        return True
    return abs(a - b) <= rel_tol * max(abs(a), abs(b))


def canonical(s: str) -> str:
    """The form two answers are compared in as strings: no spaces, no redundant braces around single tokens."""
    s = s.replace(" ", "")
    s = re.sub(r"\^\{(\w)\}", r"^\1", s)
    s = re.sub(r"_\{(\w)\}", r"_\1", s)
    s = s.replace("\\infty", "∞").replace("infinity", "∞").replace("\\inf", "∞")
    return s


def fast_equal(a: str, b: str) -> bool | None:
    """Decide two cleaned scalar answers without sympy, or return None when only a symbolic check can tell."""
    ca, cb = canonical(a), canonical(b)
    if ca == cb:
        return True
    na, nb = exact_number(strip_units(a)), exact_number(strip_units(b))
    if na is not None and nb is not None:
        (va, pa, xa), (vb, pb, xb) = na, nb
        close = (lambda x, y: x == y) if xa and xb else numbers_close
        if close(va, vb):
            return True
        return (pa != pb) and (close(va / 100, vb) if pa else close(va, vb / 100))
    wa, wb = bool(_WORDS.match(a)) and len(a) > 1, bool(_WORDS.match(b)) and len(b) > 1
    if wa and wb:
        return a.casefold() == b.casefold()
    if (wa and nb is not None) or (wb and na is not None):
        return False
    sa, sb = _BASE_SUBSCRIPT.sub("", ca), _BASE_SUBSCRIPT.sub("", cb)
    if (sa != ca or sb != cb) and sa == sb:
        return True
    return None


def is_thousands(s: str) -> bool:
    """`1,000` or `12,345,678.5`: could be one number with separators, or a list (the caller tries both)."""
    return bool(_THOUSANDS.match(s.replace(" ", ""))) and ", " not in s
