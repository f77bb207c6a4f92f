"""The `astro` entry point: every documented subcommand maps to an importable function."""

from __future__ import annotations

import importlib

from astro_pl import cli


def test_every_command_resolves_to_a_callable():
    for name, (module_name, function_name, _) in cli.COMMANDS.items():
        assert callable(getattr(importlib.import_module(module_name), function_name)), name


def test_docstring_lists_every_command():
    for name in cli.COMMANDS:
        assert f"astro {name}" in cli.__doc__ or name in {"validate", "test"}, name


def test_unknown_command_exits_2(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
