"""Problem sets: one record type, loaders for the benchmark files, and the built-in synthetic arithmetic set.

Every loader returns `list[Problem]`. Files are JSONL, a JSON array or Parquet, read through a `FieldMap` that
names which column holds what; `load_benchmark` knows the field maps of the files in `../shared/data`
(MATH-500, MATH train, AIME 2024, AMC 2023, GSM8K). A bad row raises `ProblemFileError` naming the file, the
line (row for Parquet and datasets) and the field. Numeric gold answers become canonical strings (AMC's
`27.0` -> "27"), GSM8K's gold is the text after `####` without thousands commas.

The synthetic arithmetic domain (problem text exactly "Evaluate {expr}.", integers joined by " + ", " - ",
" * " with normal precedence) is the CPU default for search, SFT and RL; its gold is computed exactly by
`evaluate_tokens`, never by `eval`.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import astro_pl


@dataclass(frozen=True)
class Problem:
    """One math problem with its gold answer."""

    id: str
    problem: str
    answer: str
    solution: str | None = None
    subject: str | None = None
    level: int | None = None


class ProblemFileError(ValueError):
    """A problem file that cannot be read: names the file, the line (or row) and the field."""

    def __init__(self, path: str | Path, line: int | None, field: str | None, reason: str, unit: str = "line"):
        self.path, self.line, self.field, self.reason = str(path), line, field, reason
        where = f"{path}" + (f", {unit} {line}" if line is not None else "")
        what = f", field {field!r}" if field else ""
        super().__init__(f"{where}{what}: {reason}")


@dataclass(frozen=True)
class FieldMap:
    """Which column of a row holds each `Problem` field.

    Args:
        problem: Column with the problem text (required in every row).
        answer: Column with the gold answer (required); numbers become canonical strings (27.0 -> "27").
        id: Column with a unique id; None numbers the rows "<source>-<i>" (0-based).
        solution: Column with a worked solution, or None.
        subject: Column with the subject, or None.
        level: Column with the difficulty level (int or "Level N"), or None.
        answer_marker: Gold is the text after the last occurrence of this marker (GSM8K: "####"), with
            thousands commas removed; the text before it becomes the solution when `solution` is None.
    """

    problem: str = "problem"
    answer: str = "answer"
    id: str | None = None
    solution: str | None = None
    subject: str | None = None
    level: str | None = None
    answer_marker: str | None = None


MATH_FIELDS = FieldMap(id="unique_id", solution="solution", subject="subject", level="level")
AIME_FIELDS = FieldMap(id="id", solution="solution")
AMC_FIELDS = FieldMap(id="id")
GSM8K_FIELDS = FieldMap(problem="question", answer_marker="####")

# name -> (file in the data folder, field map); the names eval, RL and search configs use.
BENCHMARKS: dict[str, tuple[str, FieldMap]] = {
    "math500": ("math500.jsonl", MATH_FIELDS),
    "math_train": ("math_train.jsonl", MATH_FIELDS),
    "aime24": ("aime24.jsonl", AIME_FIELDS),
    "amc23": ("amc23.jsonl", AMC_FIELDS),
    "gsm8k": ("gsm8k_test.jsonl", GSM8K_FIELDS),
}


def default_data_dir() -> Path:
    """$ASTRO_DATA_DIR, else the `shared/data` folder beside the repository."""
    env = os.environ.get("ASTRO_DATA_DIR")
    return Path(env) if env else Path(astro_pl.__file__).resolve().parents[2] / "shared" / "data"


def load_benchmark(name_or_path: str | Path, data_dir: str | Path | None = None, fields: FieldMap | None = None,
                   limit: int | None = None) -> list[Problem]:
    """Problems of a named benchmark (`BENCHMARKS`), a file, or a Hugging Face dataset written "hf:NAME[:SPLIT]".

    Args:
        name_or_path: A key of `BENCHMARKS`, a .jsonl/.json/.parquet path, or "hf:NAME[:SPLIT]" (split "test").
        data_dir: Folder holding the named benchmark files; default `default_data_dir()`.
        fields: Field map for a path or dataset (default `FieldMap()`); named benchmarks bring their own.
        limit: Keep only the first `limit` problems.
    """
    name = str(name_or_path)
    if name in BENCHMARKS:
        file_name, known = BENCHMARKS[name]
        problems = load_problems(Path(data_dir or default_data_dir()) / file_name, fields or known)
    elif name.startswith("hf:"):
        dataset, _, split = name[3:].partition(":")
        problems = load_hf_dataset(dataset, split=split or "test", fields=fields or FieldMap())
    elif Path(name).suffix in READERS:
        problems = load_problems(name, fields or FieldMap())
    else:
        raise ValueError(f"unknown benchmark {name!r}: use one of {', '.join(BENCHMARKS)}, a .jsonl/.json/.parquet "
                         "file, or hf:NAME[:SPLIT]")
    return problems[:limit] if limit is not None else problems


def load_problems(path: str | Path, fields: FieldMap = FieldMap()) -> list[Problem]:
    """Problems of one JSONL, JSON (array of objects) or Parquet file, read through `fields`."""
    path = Path(path)
    reader = READERS.get(path.suffix)
    if reader is None:
        raise ProblemFileError(path, None, None, f"unsupported file type {path.suffix!r} (use {', '.join(READERS)})")
    if not path.is_file():
        raise ProblemFileError(path, None, None, "no such file")
    unit = "row" if path.suffix == ".parquet" else "line"
    return [_located(path, line, unit, index, row, fields) for index, (line, row) in enumerate(reader(path))]


def load_hf_dataset(path: str, split: str = "test", fields: FieldMap = FieldMap(), name: str | None = None,
                    data_files: str | list[str] | None = None) -> list[Problem]:
    """Problems of a Hugging Face dataset: a hub name, a local dataset folder, a `save_to_disk` folder, or a
    builder ("json", "parquet") with `data_files`."""
    import datasets

    if (Path(path) / "dataset_info.json").is_file() or (Path(path) / "state.json").is_file():
        dataset = datasets.load_from_disk(path)
        dataset = dataset[split] if isinstance(dataset, datasets.DatasetDict) else dataset
    else:
        dataset = datasets.load_dataset(path, name=name, split=split, data_files=data_files)
    source = f"{path}[{split}]"
    return [_located(source, i + 1, "row", i, row, fields) for i, row in enumerate(dataset)]


def _jsonl_rows(path: Path) -> Iterator[tuple[int, object]]:
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ProblemFileError(path, line_no, None, f"not UTF-8 (byte {e.start})") from None
            if not text.strip():
                continue
            try:
                yield line_no, json.loads(text)
            except json.JSONDecodeError as e:
                raise ProblemFileError(path, line_no, None, f"malformed JSON: {e.msg} at column {e.colno}") from None


def _json_array_rows(path: Path) -> Iterator[tuple[int, object]]:
    """Rows of a JSON array, each with the line it starts on (decoded one element at a time)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProblemFileError(path, raw.count(b"\n", 0, e.start) + 1, None, f"not UTF-8 (byte {e.start})") from None
    decoder, pos = json.JSONDecoder(), _skip_space(text, 0)
    line_of = lambda at: text.count("\n", 0, at) + 1  # noqa: E731
    if not text.startswith("[", pos):
        raise ProblemFileError(path, line_of(pos), None, "expected a JSON array of objects")
    pos = _skip_space(text, pos + 1)
    while not text.startswith("]", pos):
        try:
            row, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise ProblemFileError(path, e.lineno, None, f"malformed JSON: {e.msg} at column {e.colno}") from None
        yield line_of(pos), row
        pos = _skip_space(text, end)
        if text.startswith(",", pos):
            pos = _skip_space(text, pos + 1)
        elif not text.startswith("]", pos):
            raise ProblemFileError(path, line_of(pos), None, "malformed JSON: expected ',' or ']'")
    if text[pos + 1:].strip():
        raise ProblemFileError(path, line_of(pos + 1), None, "malformed JSON: extra data after the array")


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _parquet_rows(path: Path) -> Iterator[tuple[int, object]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a broken file
        raise ProblemFileError(path, None, None, f"unreadable Parquet: {e}") from None
    for i, row in enumerate(table.to_pylist()):
        yield i + 1, row


READERS = {".jsonl": _jsonl_rows, ".json": _json_array_rows, ".parquet": _parquet_rows}


class _FieldError(ValueError):
    def __init__(self, field: str | None, reason: str):
        super().__init__(reason)
        self.field = field


def _located(source, line: int, unit: str, index: int, row: object, fields: FieldMap) -> Problem:
    try:
        return row_to_problem(row, fields, default_id=f"{Path(str(source)).stem}-{index}")
    except _FieldError as e:
        raise ProblemFileError(source, line, e.field, str(e), unit=unit) from None


def row_to_problem(row: object, fields: FieldMap, default_id: str) -> Problem:
    """One row (a dict) as a `Problem`; raises `_FieldError` naming the offending field."""
    if not isinstance(row, dict):
        raise _FieldError(None, f"expected a JSON object, got {type(row).__name__}")
    problem = _required(row, fields.problem)
    if not isinstance(problem, str) or not problem.strip():
        raise _FieldError(fields.problem, "problem text must be a non-empty string")
    answer, solution = canonical_answer(_required(row, fields.answer), fields.answer), None
    if fields.answer_marker:
        solution, marker, gold = answer.rpartition(fields.answer_marker)
        if not marker:
            raise _FieldError(fields.answer, f"no {fields.answer_marker!r} before the gold answer")
        answer, solution = gold.strip().replace(",", ""), solution.strip()
    if fields.solution:
        solution = _optional_str(row, fields.solution)
    return Problem(
        id=str(_required(row, fields.id)) if fields.id else str(row.get("id", default_id)),  # a file's own ids
        problem=problem,
        answer=answer,
        solution=solution,
        subject=_optional_str(row, fields.subject) if fields.subject else None,
        level=_level(row.get(fields.level), fields.level) if fields.level else None,
    )


def canonical_answer(value: object, field: str = "answer") -> str:
    """A gold answer as a string: 27.0 -> "27", -1.0 -> "-1", 0.5 -> "0.5"; strings are stripped."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _FieldError(field, f"expected a string or number, got {type(value).__name__}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _FieldError(field, f"not a finite number: {value}")
        if value.is_integer():
            return str(int(value))
    return repr(value)


def _required(row: dict, key: str) -> object:
    if key not in row or row[key] is None:
        raise _FieldError(key, "missing")
    return row[key]


def _optional_str(row: dict, key: str) -> str | None:
    value = row.get(key)
    if value is not None and not isinstance(value, str):
        raise _FieldError(key, f"expected a string, got {type(value).__name__}")
    return value


def _level(value: object, field: str) -> int | None:
    """MATH levels come as 5 or "Level 5"; "Level ?" and null mean unknown."""
    if value is None or isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(?:Level\s*)?(\d+|\?)\s*", value)
        if match:
            return None if match.group(1) == "?" else int(match.group(1))
    raise _FieldError(field, f"expected an integer level, got {value!r}")


# ---- synthetic arithmetic ----------------------------------------------------------------------------------

OPERATORS = ("+", "-", "*")
_ARITHMETIC = re.compile(r"Evaluate (\d+(?: [+*-] \d+)*)\.")


def synthetic_arithmetic(num_problems: int, seed: int = 0, min_operations: int = 2, max_operations: int = 3,
                         operand_min: int = 1, operand_max: int = 9, operators: str = "+-*") -> list[Problem]:
    """Seeded arithmetic problems "Evaluate 3 + 4 * 2." with exact gold; a larger `num_problems` extends a list.

    Args:
        num_problems: How many problems.
        seed: Seed; equal arguments give equal problems. Ids are "synthetic-{seed}-{i}".
        min_operations: Fewest operators per expression (difficulty).
        max_operations: Most operators per expression.
        operand_min: Smallest operand (>= 0: the text has no negative literals).
        operand_max: Largest operand.
        operators: Which of "+", "-", "*" may appear (e.g. "+-" keeps every value small, for tiny CPU models).
    """
    if num_problems < 0:
        raise ValueError(f"num_problems must be >= 0, got {num_problems}")
    if not 1 <= min_operations <= max_operations:
        raise ValueError(f"need 1 <= min_operations <= max_operations, got {min_operations}, {max_operations}")
    if not 0 <= operand_min <= operand_max:
        raise ValueError(f"need 0 <= operand_min <= operand_max, got {operand_min}, {operand_max}")
    if not operators or any(op not in OPERATORS for op in operators):
        raise ValueError(f"operators must be a non-empty string of {''.join(OPERATORS)}, got {operators!r}")
    rng, problems = random.Random(seed), []
    for i in range(num_problems):
        num_ops = rng.randint(min_operations, max_operations)
        tokens: list[int | str] = [rng.randint(operand_min, operand_max)]
        for _ in range(num_ops):
            tokens += [rng.choice(operators), rng.randint(operand_min, operand_max)]
        problems.append(Problem(
            id=f"synthetic-{seed}-{i}",
            problem=f"Evaluate {format_tokens(tokens)}.",
            answer=str(evaluate_tokens(tokens)),
            subject="arithmetic",
            level=num_ops,
        ))
    return problems


def format_tokens(tokens: list[int | str]) -> str:
    """[3, "+", 4] -> "3 + 4"."""
    return " ".join(str(t) for t in tokens)


def parse_arithmetic(text: str) -> list[int | str] | None:
    """The tokens of a synthetic problem text ("Evaluate 3 + 4 * 2." -> [3, "+", 4, "*", 2]); None otherwise."""
    match = _ARITHMETIC.fullmatch(text.strip())
    if match is None:
        return None
    return [tok if tok in OPERATORS else int(tok) for tok in match.group(1).split(" ")]


def evaluate_tokens(tokens: list[int | str]) -> int:
    """Exact value of [a, op, b, op, c, ...] with * before + and -, left to right."""
    if len(tokens) % 2 == 0 or any(not isinstance(t, int) or isinstance(t, bool) for t in tokens[::2]):
        raise ValueError(f"expected integers alternating with operators, got {tokens!r}")
    if any(op not in OPERATORS for op in tokens[1::2]):
        raise ValueError(f"operators must be among {OPERATORS}, got {tokens[1::2]!r}")
    total, sign, term = 0, 1, tokens[0]
    for op, value in zip(tokens[1::2], tokens[2::2], strict=True):
        if op == "*":
            term *= value
        else:
            total, sign, term = total + sign * term, (1 if op == "+" else -1), value
    return total + sign * term
