"""The `astro` dispatch's error convention (issue 19 item 4): a known bad input is one line and exit code 2; `--debug`
or ASTRO_DEBUG=1 keeps the traceback; an unknown failure (a bug) is never hidden."""

from __future__ import annotations

import errno

import pytest

from astro_pl import cli
from astro_pl.errors import UsageError, user_message


def test_one_line_and_exit_2(tmp_path, capsys):
    assert cli.main(["view-tree", str(tmp_path / "none.jsonl")]) == 2
    assert capsys.readouterr().err == f"astro view-tree: error: {tmp_path / 'none.jsonl'}: no such file\n"


def test_debug_flag_or_env_keeps_the_traceback(tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="no such file"):
        cli.main(["view-tree", str(tmp_path / "none.jsonl"), "--debug"])
    monkeypatch.setenv("ASTRO_DEBUG", "1")
    with pytest.raises(UsageError, match="no such file"):
        cli.main(["view-tree", str(tmp_path / "none.jsonl")])


def test_known_failures_map_to_one_line_and_bugs_do_not():
    assert user_message(OSError(errno.ENOSPC, "No space left on device", "/runs/x.jsonl")) == \
        "/runs/x.jsonl: No space left on device"
    assert user_message(ValueError("--limit must be >= 1\n  more")) == "--limit must be >= 1 more"
    assert user_message(ValueError("x" * 1000)).endswith("...") and len(user_message(ValueError("x" * 1000))) == 400
    for bug in (KeyError("k"), TypeError("t"), AttributeError("a"), RecursionError(), OSError(errno.EBADF, "fd")):
        assert user_message(bug) is None, bug
