"""The project's expected failures: what library code raises when the user can fix the cause.

Each message is one line naming the file, record, key or flag and saying what to do. Each class
also subclasses the builtin it refines, so `except FileNotFoundError` keeps working. The
programs' entry points (`segearth_jax.cli`) print them as one `error:` line with exit status 2;
nothing here formats or exits. The project's own error classes (ConversionError, BadInput,
RecordError, InputError, SceneError) subclass `UserError`. Imports no project module.
"""

from __future__ import annotations

import os


class UserError(Exception):
    """An expected failure the user can fix; the message is one line naming the file or flag."""


class MissingFile(UserError, FileNotFoundError):
    """A file, folder, checkpoint or dataset the command needs does not exist."""


class OutputExists(UserError, FileExistsError):
    """An output directory (`--out`) exists and is not empty."""


class BadValue(UserError, ValueError):
    """A flag or config value the program cannot use."""


def check_new_dir(path: str | os.PathLike, flag: str = "--out") -> None:
    """Raises `OutputExists` if `path` exists and is not empty (without creating anything)."""
    if os.path.isdir(path) and any(os.scandir(path)):
        raise OutputExists(f"{flag} {path} exists and is not empty; choose a new {flag}")
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputExists(f"{flag} {path} is a file; choose a new {flag}")


def check_dir(path: str | os.PathLike, flag: str, what: str) -> None:
    """Raises `MissingFile` naming `flag` if the directory `path` does not exist; `what` says
    what the flag takes."""
    if not os.path.isdir(path):
        raise MissingFile(f"{flag} {path}: no such directory; {flag} takes {what}")
