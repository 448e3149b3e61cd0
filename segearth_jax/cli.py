"""The command-line contract every entry point follows (train, evaluate, predict, generate, the
converters, data.builders, data.synthetic).

Expected failures -- bad input, a missing file or checkpoint, an existing output directory, a
config or flag mistake -- are `UserError`s: their message names the file or flag and says what to
do. At a command line they print one `error: <message>` line on stderr and exit with status 2
(`EXIT_USER`), the status argparse uses for a bad command line. Anything else is a bug and keeps
its traceback (status 1). `--help` exits 0.

    @cli.entry_point                      # argparse programs
    def main(argv: list[str] | None = None) -> None: ...

    @cli.entry_point                      # absl programs (flags + ml_collections config_flags)
    def main(argv: list[str]) -> None: ...
    if __name__ == "__main__":
        define_flags()
        cli.run_absl(main)

Library code raises the classes of `segearth_jax.errors` and never imports this module (only the
programs do: tests/test_package_imports.py lists them); the classes and the `check_dir` /
`check_new_dir` helpers are re-exported here for the programs. This module only formats them; it
imports nothing heavy.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from segearth_jax.errors import (
    BadValue,
    MissingFile,
    OutputExists,
    UserError,
    check_dir,
    check_new_dir,
)

__all__ = ["BadValue", "MissingFile", "OutputExists", "UserError", "check_dir", "check_new_dir",
           "entry_point", "fail", "require_flags", "run_absl"]

EXIT_USER = 2  # an expected failure: one `error:` line; 1 (Python's default) is a bug
HELP_FLAGS = ("help", "helpshort", "helpfull", "helpxml", "?")


def fail(message: Any, status: int = EXIT_USER) -> NoReturn:
    """Prints `error: message` on stderr and exits with `status`."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def _quiet_logs() -> None:
    """Hides JAX's INFO line about absent TPU/GPU backends and orbax's INFO lines (dozens per
    checkpoint; absl programs log at INFO), so that the metrics and progress lines stand out."""
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    logging.getLogger("absl").addFilter(_not_orbax_info)


def _not_orbax_info(record: logging.LogRecord) -> bool:
    return record.levelno > logging.INFO or "orbax" not in record.pathname


def _absl_flags_parsed() -> None:
    """Marks absl's global flags parsed in an argparse program (absl programs parse them before
    `main`): grain's worker processes read their `--grain_*` defaults, and would raise
    UnparsedFlagAccessError otherwise. A program's concern, so library code never does it."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def entry_point(main: Callable[..., Any]) -> Callable[..., Any]:
    """Decorates a program's `main`: a `UserError` (or absl's `UsageError`) becomes one
    `error:` line and exit status 2; other exceptions propagate with their traceback."""

    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        _quiet_logs()
        _absl_flags_parsed()
        try:
            return main(*args, **kwargs)
        except UserError as e:
            fail(e)
        except Exception as e:
            from absl.app import UsageError

            if isinstance(e, UsageError):
                fail(f"{e} (see --help)")
            raise

    return wrapped


def run_absl(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> NoReturn:
    """`absl.app.run(main)` with one-line flag and config errors (status 2) and `--help`
    exiting 0 (absl's exits 1)."""
    from absl import app, flags

    module = getattr(main, "__module__", "__main__")
    if module != "__main__":  # a console script: --help lists the flags of sys.argv[0]'s module
        for flag in flags.FLAGS.get_key_flags_for_module(module):
            flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(main, argv=None if argv is None else list(argv), flags_parser=parse_flags)
    sys.exit(0)  # app.run exits itself; never reached.


def require_flags(*names: str) -> None:
    """Marks absl flags required, and drops their `(default: 'None')` from `--help` (a required
    flag has no default)."""
    from absl import flags

    flags.mark_flags_as_required(list(names))
    for name in names:
        flags.FLAGS[name].default_as_str = None


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing for `run_absl`: a bad flag, a config file that does not load or a
    `--config.x.y=` override naming no field is one `error:` line, status 2."""
    from absl import flags

    try:
        rest = flags.FLAGS(argv)
    except SystemExit as e:  # absl's help flags print the help, then exit 1
        asked = any(a.lstrip("-").split("=")[0] in HELP_FLAGS for a in argv[1:])
        raise SystemExit(0 if asked and e.code == 1 else e.code) from None
    except flags.Error as e:
        fail(f"{e} (see --help)")
    except (AttributeError, KeyError) as e:  # an override naming no field of the config
        fail(_unknown_override(argv, e))
    except OSError as e:  # an override of a config file that did not load
        fail(_config_load_error(e))
    _check_configs_loaded()
    return rest


def _unknown_override(argv: list[str], e: Exception) -> str:
    key = str(e).strip("\"'")
    names = [a.split("=")[0] for a in argv[1:] if a.startswith("--") and "." in a]
    bad = [n for n in names if key in n.split(".")[1:]]
    flag = bad[0] if bad else f"--<config>.{key}"
    return f"{flag}: the config has no field {key!r} (see the config file for its fields)"


def _config_load_error(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"config file does not load: {lines[-1] if lines else e} (check --config)"


def _check_configs_loaded() -> None:
    """ml_collections defers a config file's load error to its first use; report it now."""
    from absl import flags

    for name in sorted(set(flags.FLAGS)):
        flag = flags.FLAGS[name]  # config flags (DEFINE_config_file) have a config_filename
        if name != flag.name or not hasattr(flag, "config_filename") or flag.value is None:
            continue
        try:
            flag.value.keys  # noqa: B018 - any attribute raises the deferred load error
        except OSError as e:
            path = str(flag.config_filename).split(":")[0]
            if not os.path.exists(path):
                fail(f"--{name} {path}: no such config file")
            fail(f"--{name} {path}: {_config_load_error(e)}")
