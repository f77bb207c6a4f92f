"""Problem loaders on the real benchmark files, field maps on JSON/JSONL/Parquet, errors, synthetic arithmetic."""

from __future__ import annotations

import dataclasses
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from astro_pl.data.problems import (
    BENCHMARKS,
    FieldMap,
    Problem,
    ProblemFileError,
    ProblemSource,
    load_hf_dataset,
    load_problems,
)

ROW_COUNTS = {"math500": 500, "math_train": 12000, "aime24": 30, "amc23": 40, "gsm8k": 1319}


@pytest.mark.parametrize("name", sorted(ROW_COUNTS))
def test_every_benchmark_loads_with_its_row_count(name, shared_data):
    problems = ProblemSource(name, data_dir=str(shared_data)).load()
    assert len(problems) == ROW_COUNTS[name]
    assert all(isinstance(p, Problem) and p.problem.strip() for p in problems)
    assert len({p.id for p in problems}) == len(problems) or name == "gsm8k"


def test_registry_covers_every_data_file(shared_data):
    files = {path.name for path in shared_data.glob("*.jsonl")}
    assert files == {bench.file for bench in BENCHMARKS.values()}


def test_data_dir_env_selects_the_offline_folder(shared_data, monkeypatch, tmp_path):
    monkeypatch.setenv("ASTRO_DATA_DIR", str(shared_data))
    assert len(ProblemSource("aime24").load()) == 30
    monkeypatch.setenv("ASTRO_DATA_DIR", str(tmp_path))
    with pytest.raises(ProblemFileError, match=r"aime24\.jsonl.*unset ASTRO_DATA_DIR.*HuggingFaceH4/aime_2024"):
        ProblemSource("aime24").load()


def test_without_a_data_folder_named_benchmarks_come_from_the_hub(monkeypatch):
    """Offline here, so the hub load fails; the error names the dataset and both ways to get it."""
    monkeypatch.delenv("ASTRO_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ProblemFileError, match=r"HuggingFaceH4/MATH-500.*'math500'.*ASTRO_DATA_DIR.*math500\.jsonl"):
        ProblemSource("math500").load()


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_hub_field_maps_read_the_offline_copies(name, shared_data):
    """The hub datasets' columns are the offline files' columns: each field map, applied through `datasets` to the
    local copy (as `load_dataset` would read the hub rows), gives the same problems as the file loader."""
    bench = BENCHMARKS[name]
    via_datasets = load_hf_dataset("json", split="train", fields=bench.fields, data_files=str(shared_data / bench.file))
    offline = ProblemSource(name, data_dir=str(shared_data)).load()
    if bench.fields.id is None:  # numbered by the benchmark's name, whatever copy the rows came from
        assert offline[0].id == f"{name}-0"
        via_datasets = [dataclasses.replace(p, id=o.id) for p, o in zip(via_datasets, offline, strict=True)]
    assert via_datasets[:50] == offline[:50]
    assert bench.hub_id.count("/") == 1 and bench.hub_split in ("train", "test")


def test_math500_fields(shared_data):
    first = ProblemSource("math500", data_dir=str(shared_data)).load()[0]
    assert first.id == "test/precalculus/807.json"
    assert first.answer == r"\left( 3, \frac{\pi}{2} \right)"
    assert first.subject == "Precalculus" and first.level == 2 and first.solution.startswith("We have")


def test_math_train_unknown_level_and_empty_answer_are_kept(shared_data):
    problems = {p.id: p for p in ProblemSource("math_train", data_dir=str(shared_data)).load()}
    assert problems["train/geometry/377.json"].level is None
    assert problems["train/number_theory/7115.json"].answer == ""


def test_aime_answers_and_ids(shared_data):
    problems = ProblemSource("aime24", data_dir=str(shared_data)).load()
    assert problems[0].id == "60" and problems[0].answer == "204" and problems[0].solution
    assert all(p.answer.isdigit() for p in problems)


def test_amc_float_answers_become_canonical_strings(shared_data):
    answers = [p.answer for p in ProblemSource("amc23", data_dir=str(shared_data)).load()]
    assert answers[:4] == ["27", "36", "45", "3159"]
    assert "-1" in answers and not any(a.endswith(".0") for a in answers)


def test_amc_style_fractional_answer_stays(tmp_path):
    path = tmp_path / "amc.jsonl"
    path.write_text("\n".join(json.dumps({"problem": f"q{i}", "answer": a}) for i, a in enumerate([0.5, -1.0, 7])))
    assert [p.answer for p in load_problems(path)] == ["0.5", "-1", "7"]
    assert [p.id for p in load_problems(path)] == ["amc-0", "amc-1", "amc-2"]


def test_gsm8k_gold_after_marker_without_commas(shared_data):
    problems = ProblemSource("gsm8k", data_dir=str(shared_data)).load()
    assert problems[0].answer == "18" and problems[0].problem.startswith("Janet")
    assert "####" not in problems[0].solution and problems[0].solution.endswith("market.")
    assert all("," not in p.answer and "####" not in p.answer for p in problems)
    raw = [json.loads(line)["answer"] for line in (shared_data / "gsm8k_test.jsonl").open()]
    with_commas = [i for i, a in enumerate(raw) if "," in a.rpartition("####")[2]]
    assert with_commas, "the test needs a gold answer with a thousands separator"
    i = with_commas[0]
    assert problems[i].answer == raw[i].rpartition("####")[2].strip().replace(",", "")
    assert all(p.answer.lstrip("-").replace(".", "").isdigit() for p in problems)


ROWS = [
    {"question": "What is 2+2?", "final": 4.0, "key": "a", "work": "2+2=4", "topic": "Algebra",
     "difficulty": "Level 3"},
    {"question": "What is 1/2?", "final": "\\frac12", "key": "b", "work": None, "topic": "Algebra", "difficulty": 1},
]
MAPPING = FieldMap(problem="question", answer="final", id="key", solution="work", subject="topic", level="difficulty")
# Arrow columns have one type each: answers as strings, levels as "Level N" strings.
TABLE_ROWS = [{**r, "final": "4" if r["key"] == "a" else r["final"], "difficulty": str(r["difficulty"])} for r in ROWS]
EXPECTED = [
    Problem("a", "What is 2+2?", "4", "2+2=4", "Algebra", 3),
    Problem("b", "What is 1/2?", "\\frac12", None, "Algebra", 1),
]


def test_field_mapping_jsonl(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    assert load_problems(path, MAPPING) == EXPECTED
    assert ProblemSource(str(path), fields=MAPPING, limit=1).load() == EXPECTED[:1]


def test_field_mapping_json_array(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(ROWS, indent=2))
    assert load_problems(path, MAPPING) == EXPECTED


def test_field_mapping_parquet(tmp_path):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(TABLE_ROWS), path)
    assert load_problems(path, MAPPING) == EXPECTED


def test_hf_dataset_from_local_folder_and_saved_dataset(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(TABLE_ROWS), folder / "train.parquet")
    problems = load_hf_dataset(str(folder), split="train", fields=MAPPING)
    assert [p.id for p in problems] == ["a", "b"] and problems[0].answer == "4" and problems[0].level == 3
    assert ProblemSource(f"hf:{folder}:train", fields=MAPPING).load() == problems
    import datasets

    datasets.Dataset.from_list(TABLE_ROWS).save_to_disk(str(tmp_path / "saved"))
    assert load_hf_dataset(str(tmp_path / "saved"), fields=MAPPING) == problems


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"problem": "a", "answer": "1"}\n{"problem": "b", "answer": \n')
    with pytest.raises(ProblemFileError, match=r"bad\.jsonl, line 2: malformed JSON") as err:
        load_problems(path)
    assert err.value.line == 2 and err.value.path == str(path)


def test_missing_field_names_file_line_and_field(tmp_path):
    path = tmp_path / "missing.jsonl"
    path.write_text('{"problem": "a", "answer": "1"}\n\n{"problem": "b"}\n')
    with pytest.raises(ProblemFileError, match=r"missing\.jsonl, line 3, field 'answer': missing"):
        load_problems(path)


def test_wrong_type_names_field(tmp_path):
    path = tmp_path / "typed.jsonl"
    path.write_text('{"problem": "a", "answer": [1]}\n')
    with pytest.raises(ProblemFileError, match=r"line 1, field 'answer': expected a string or number"):
        load_problems(path)
    path.write_text('["a", "1"]\n')
    with pytest.raises(ProblemFileError, match=r"line 1: expected a JSON object"):
        load_problems(path)


def test_gsm8k_row_without_marker_names_field(tmp_path):
    path = tmp_path / "gsm.jsonl"
    path.write_text('{"question": "q", "answer": "no marker here"}\n')
    with pytest.raises(ProblemFileError, match=r"line 1, field 'answer': no '####'"):
        load_problems(path, BENCHMARKS["gsm8k"].fields)


def test_non_utf8_line_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"problem": "a", "answer": "1"}\n{"problem": "caf\xe9", "answer": "2"}\n')
    with pytest.raises(ProblemFileError, match=r"latin1\.jsonl, line 2: not UTF-8"):
        load_problems(path)
    path = tmp_path / "latin1.json"
    path.write_bytes(b'[\n{"problem": "a", "answer": "1"},\n{"problem": "caf\xe9", "answer": "2"}]')
    with pytest.raises(ProblemFileError, match=r"latin1\.json, line 3: not UTF-8"):
        load_problems(path)


def test_json_array_errors_name_the_line(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('[\n  {"problem": "a", "answer": "1"},\n  {"problem": "b"}\n]')
    with pytest.raises(ProblemFileError, match=r"rows\.json, line 3, field 'answer': missing"):
        load_problems(path)
    path.write_text('[\n  {"problem": "a", "answer": "1"}\n  {"problem": "b", "answer": "2"}\n]')
    with pytest.raises(ProblemFileError, match=r"rows\.json, line 3: malformed JSON"):
        load_problems(path)
    path.write_text('{"problem": "a"}')
    with pytest.raises(ProblemFileError, match="expected a JSON array"):
        load_problems(path)


def test_parquet_missing_field_names_row(tmp_path):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist([{"problem": "a", "answer": "1"}, {"problem": "b", "answer": None}]), path)
    with pytest.raises(ProblemFileError, match=r"rows\.parquet, row 2, field 'answer': missing"):
        load_problems(path)


def test_unknown_benchmark_and_file_type(tmp_path):
    with pytest.raises(ValueError, match="unknown problem source 'math5000'"):
        ProblemSource("math5000")
    with pytest.raises(ProblemFileError, match="unsupported file type"):
        load_problems(tmp_path / "x.csv")
    with pytest.raises(ProblemFileError, match="no such file"):
        load_problems(tmp_path / "x.jsonl")
