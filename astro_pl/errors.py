"""Errors a user can act on: the one type commands raise for known bad input, and the message for each known
library failure. `astro_pl.cli` prints either as one line `astro <command>: error: ...` with exit code 2 (the
traceback only with `--debug` or ASTRO_DEBUG=1); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import pickle
import zipfile
from pathlib import Path

# Files a Hugging Face tokenizer can be loaded from: one of them must be in a local model folder.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
# OS errors a user causes (full or read-only disk, permissions, a missing path), named by the path they hit.
USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.EFBIG,
               errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOTEMPTY}


class UsageError(ValueError):
    """A known bad input; the message names the flag, or the file, line and field (a ValueError, so the
    jsonargparse and dataclass checks that raise ValueError take the same road)."""


MAX_MESSAGE_CHARS = 400


def one_line(text: str) -> str:
    """A message on one line (jsonargparse's are indented blocks), cut to MAX_MESSAGE_CHARS."""
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


def user_message(err: BaseException) -> str | None:
    """The one line to show for a failure the user caused, or None for a bug (which keeps its traceback)."""
    if isinstance(err, argparse.ArgumentError):
        return one_line(str(err))
    if isinstance(err, OSError) and err.errno in USER_ERRNOS:
        where = err.filename if err.filename is not None else ""
        return f"{where}: {err.strerror}" if where else str(err.strerror or err)
    if isinstance(err, (pickle.UnpicklingError, zipfile.BadZipFile, EOFError)):
        return f"corrupt checkpoint or data file ({err})"
    if isinstance(err, RecursionError):
        return None
    if isinstance(err, ValueError):
        return one_line(str(err)) or type(err).__name__
    return None


def check_model_path(model: str, flag: str) -> None:
    """Refuses, before any engine starts, a local model folder that does not exist or lacks tokenizer files
    (transformers would say "Repo id must be in the form ..." or "need sentencepiece or tiktoken installed")."""
    path = Path(model).expanduser()
    looks_local = path.exists() or model.startswith(("/", ".", "~")) or model.count("/") > 1
    if not looks_local:
        return  # a hub name such as meta-llama/Llama-3.1-8B
    if not path.is_dir():
        raise UsageError(f"{flag} {model}: no such model folder")
    if not any((path / name).exists() for name in TOKENIZER_FILES):
        raise UsageError(f"{flag} {model}: no tokenizer files in the folder (expected one of "
                         f"{', '.join(TOKENIZER_FILES)})")
