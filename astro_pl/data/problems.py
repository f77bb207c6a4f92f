"""Problem records and where they come from: named benchmarks, files and Hugging Face datasets.

Every loader returns `list[Problem]`. Files are JSONL, a JSON array or Parquet, read through a `FieldMap` that
names which column holds what. A named benchmark (MATH-500, MATH train, AIME 2024, AMC 2023, GSM8K) loads from an
offline folder of its files when `ASTRO_DATA_DIR` (or `data_dir`) is set, else from its public Hugging Face dataset.
A bad row raises `ProblemFileError` naming the file, the line (row for Parquet and datasets) and the field.
Numeric gold answers become canonical strings (AMC's `27.0` -> "27"), GSM8K's gold is the text after `####`
without thousands commas. `ProblemSource` is the one problem spec that tasks (and so search, RL and evaluation)
are configured with.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    """One math problem with its gold answer."""

    id: str
    problem: str
    answer: str
    solution: str | None = None
    subject: str | None = None
    level: int | None = None


PROBLEM_FIELDS = ("id", "problem", "answer", "solution", "subject", "level")
"""`Problem`'s fields: the columns a reward function is passed (as TRL passes dataset columns)."""


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
AMC_FIELDS = FieldMap(problem="question", id="id")
GSM8K_FIELDS = FieldMap(problem="question", answer_marker="####")


@dataclass(frozen=True)
class Benchmark:
    """A named problem set: its file in an offline data folder and the public Hugging Face dataset it comes from.

    One field map serves both: the offline files are copies of the hub datasets' rows.
    """

    file: str
    fields: FieldMap
    hub_id: str
    hub_split: str
    hub_config: str | None = None


# The names every task config uses.
BENCHMARKS: dict[str, Benchmark] = {
    "math500": Benchmark("math500.jsonl", MATH_FIELDS, "HuggingFaceH4/MATH-500", "test"),
    "math_train": Benchmark("math_train.jsonl", MATH_FIELDS, "zzy1123/MATH_train_test_split", "train"),
    "aime24": Benchmark("aime24.jsonl", AIME_FIELDS, "HuggingFaceH4/aime_2024", "train"),
    "amc23": Benchmark("amc23.jsonl", AMC_FIELDS, "math-ai/amc23", "test"),
    "gsm8k": Benchmark("gsm8k_test.jsonl", GSM8K_FIELDS, "openai/gsm8k", "test", hub_config="main"),
}


def data_dir_from_env() -> Path | None:
    """$ASTRO_DATA_DIR: an offline folder holding the named benchmarks' files (tests and CI point it at
    ../shared/data); None when unset, and named benchmarks then come from the Hugging Face hub."""
    env = os.environ.get("ASTRO_DATA_DIR")
    return Path(env) if env else None


def load_named(name: str, data_dir: str | Path | None = None) -> list[Problem]:
    """A named benchmark from `data_dir` (default $ASTRO_DATA_DIR) when one is set, else from the hub (cached by
    `datasets`); a missing one names itself and both ways to get it."""
    bench = BENCHMARKS[name]
    folder = Path(data_dir) if data_dir else data_dir_from_env()
    if folder is not None:
        path = folder / bench.file
        if not path.is_file():
            raise ProblemFileError(path, None, None, f"benchmark {name!r} is not in this data folder; put "
                                   f"{bench.file} there, or unset ASTRO_DATA_DIR / data_dir to load "
                                   f"{bench.hub_id} from the Hugging Face hub")
        problems = load_problems(path, bench.fields)
    else:
        try:
            problems = load_hf_dataset(bench.hub_id, split=bench.hub_split, fields=bench.fields,
                                       name=bench.hub_config)
        except ProblemFileError:
            raise
        except Exception as e:  # datasets raises many types for an unreachable hub or a missing dataset
            raise ProblemFileError(bench.hub_id, None, None, f"benchmark {name!r} could not be loaded from the "
                                   f"Hugging Face hub ({type(e).__name__}: {str(e)[:200]}); set ASTRO_DATA_DIR (or "
                                   f"data_dir) to a folder holding {bench.file}, or go online once to cache "
                                   "it") from None
    if bench.fields.id is None:  # numbered rows: the same ids whichever copy they came from
        problems = [dataclasses.replace(p, id=f"{name}-{i}") for i, p in enumerate(problems)]
    return problems


@dataclass
class ProblemSource:
    """Where problems come from: the one spec search, RL prompts and evaluation share.

    Args:
        source: A named benchmark (math500, math_train, aime24, amc23, gsm8k), a .jsonl/.json/.parquet file, or
            "hf:NAME[:SPLIT]" (split "test" by default).
        name: Name in reports; default the benchmark name or the file's stem.
        limit: Keep only the first `limit` problems.
        fields: Which column holds what, for files and hub datasets (named benchmarks bring their own).
        data_dir: Offline folder of the named benchmarks' files; default $ASTRO_DATA_DIR, else the hub.
    """

    source: str
    name: str | None = None
    limit: int | None = None
    fields: FieldMap | None = None
    data_dir: str | None = None

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit of {self.source!r} must be >= 0, got {self.limit}")
        named, hub = self.source in BENCHMARKS, self.source.startswith("hf:")
        if not named and not hub and Path(self.source).suffix not in READERS:
            raise ValueError(f"unknown problem source {self.source!r}: use one of {', '.join(BENCHMARKS)}, a "
                             ".jsonl/.json/.parquet file, or hf:NAME[:SPLIT]")

    @property
    def label(self) -> str:
        return self.name or (self.source if self.source in BENCHMARKS else Path(self.source.removeprefix("hf:")).stem)

    def load(self) -> list[Problem]:
        if self.source in BENCHMARKS:
            problems = load_named(self.source, self.data_dir)
        elif self.source.startswith("hf:"):
            dataset, _, split = self.source[3:].partition(":")
            problems = load_hf_dataset(dataset, split=split or "test", fields=self.fields or FieldMap())
        else:
            problems = load_problems(self.source, self.fields or FieldMap())
        return problems[: self.limit] if self.limit is not None else problems


def as_source(spec: str | ProblemSource) -> ProblemSource:
    """YAML may name a source by its string alone."""
    return spec if isinstance(spec, ProblemSource) else ProblemSource(spec)


def check_unique_ids(problems: list[Problem], where: str) -> None:
    """Duplicate ids would silently merge problems in resumable outputs; refuse them."""
    seen, duplicates = set(), []
    for p in problems:
        if p.id in seen:
            duplicates.append(p.id)
        seen.add(p.id)
    if duplicates:
        raise ValueError(f"{where}: duplicate problem ids {duplicates[:5]}")


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
