"""Run-folder primitives: JSONL read with file:line errors, torn-tail repair, atomic writes, the folder lock."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from astro_pl.errors import UsageError
from astro_pl.runfiles import append_jsonl, claim, drop_torn_tail, read_json, read_jsonl, write_json, write_jsonl


def test_read_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n[1]\n')
    with pytest.raises(UsageError, match=r"a.jsonl:4: not a JSON object"):
        read_jsonl(path)
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(UsageError, match=r"a.jsonl:2: not a JSON record"):
        read_jsonl(path)
    assert read_jsonl(tmp_path / "none.jsonl") == []
    with pytest.raises(FileNotFoundError):
        read_jsonl(tmp_path / "none.jsonl", missing_ok=False)


def test_read_jsonl_keeps_unicode_line_separators_inside_a_record(tmp_path):
    """Model output may hold U+2028, U+2029 or U+0085, which JSON leaves raw and str.splitlines splits at."""
    records = [{"text": "a\u2028b\u2029c\x85d"}, {"text": "e"}]
    path = tmp_path / "a.jsonl"
    write_jsonl(path, records)
    assert "\u2028" in path.read_text(encoding="utf-8")
    assert read_jsonl(path) == records


@pytest.mark.parametrize("text, kept", [("", ""), ('{"a": 1}\n', '{"a": 1}\n'), ('{"a": 1}\n{"a": ', '{"a": 1}\n'),
                                        ('{"a"', ""), ("x\n" + "y" * 200_000, "x\n")])
def test_drop_torn_tail(tmp_path, text, kept):
    path = tmp_path / "a.jsonl"
    path.write_text(text)
    drop_torn_tail(path)
    assert path.read_text() == kept


def test_append_after_repair_and_atomic_replace(tmp_path):
    path = tmp_path / "sub" / "a.jsonl"
    append_jsonl(path, [{"a": 1}])
    with path.open("a") as f:
        f.write('{"a": 2')  # a killed writer
    drop_torn_tail(path)
    append_jsonl(path, [{"a": 3}])
    assert read_jsonl(path) == [{"a": 1}, {"a": 3}]
    write_jsonl(path, [{"b": 1}])
    write_json(tmp_path / "s.json", {"x": 1})
    assert read_jsonl(path) == [{"b": 1}] and read_json(tmp_path / "s.json") == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json", "sub"], "no temporary file left behind"
    (tmp_path / "t.json").write_text('{"x": ')
    with pytest.raises(UsageError, match=r"t.json: not a JSON file"):
        read_json(tmp_path / "t.json")


def test_claim_refuses_a_second_writer_and_frees_on_exit(tmp_path):
    with claim(tmp_path / "run"):
        busy = rf"--out_dir {tmp_path / 'run'}: in use by another run \(pid {os.getpid()}\)"
        with pytest.raises(UsageError, match=busy), claim(tmp_path / "run"):
            pass
        with claim(tmp_path / "run", part=".shard-0-of-2"):  # another part of the folder is free
            pass
    with claim(tmp_path / "run"):
        pass
    holder = ("import sys, time; from astro_pl.runfiles import claim\n"
              "with claim(sys.argv[1]): print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", holder, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "held\n"
        with pytest.raises(UsageError, match=rf"pid {proc.pid}\)"), claim(tmp_path / "run"):
            pass
    finally:
        proc.kill()
        proc.wait()
    with claim(tmp_path / "run"):  # the kernel dropped the killed holder's lock
        pass


def test_read_jsonl_skips_a_torn_last_line_only_when_asked(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 0}\n{"step": 1, "x"')  # a writer killed mid-line
    assert read_jsonl(path, torn_tail_ok=True) == [{"step": 0}]
    with pytest.raises(UsageError, match=r"m\.jsonl:2: not a JSON record"):
        read_jsonl(path)
    path.write_text('{"step": 0}\nnot json\n{"step": 2}\n')  # a bad line before the end is never skipped
    with pytest.raises(UsageError, match=r"m\.jsonl:2: not a JSON record"):
        read_jsonl(path, torn_tail_ok=True)
