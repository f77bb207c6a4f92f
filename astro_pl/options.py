"""Typed options from flags and a `--config` YAML: a dataclass is the schema (jsonargparse), as in `astro eval`."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def parse_dataclass(cls: type[T], prog: str, description: str, argv: list[str] | None,
                    subclasses: dict[str, type] | None = None) -> T:
    """`cls` from `argv`; its field docstrings are the --help text. A flag error (argparse.ArgumentError) or a
    ValueError of its `__post_init__` propagates, and the `astro` dispatch prints it as one line, exit code 2.

    Args:
        subclasses: Fields given as `class_path` + `init_args` of a subclass of the named base (e.g.
            {"task": Task}), parsed as their own group so a file named in a config resolves beside that config.
    """
    from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with the options below")
    parser.add_class_arguments(cls, as_group=False, skip=set(subclasses or ()))
    for name, base in (subclasses or {}).items():
        parser.add_subclass_arguments(base, name, required=False, help=f"--{name}: class_path + init_args")
    config = parser.instantiate(parser.parse_args(argv)).as_dict()
    config.pop("config", None)
    return cls(**config)
