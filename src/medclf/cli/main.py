"""The `medclf` command. Each sub-command lives in its own module and only parses, validates and calls the library."""

from __future__ import annotations

import importlib
import os
import sys

import typer

from medclf.errors import MedclfError

app = typer.Typer(
    help="Prepare, train, evaluate, explain and serve medical image classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# module under medclf.cli -> it defines `register(app)`; kept as a list so a command's heavy imports load lazily
COMMAND_MODULES = [
    "prepare", "train", "evaluate", "predict", "report", "demo", "serve", "attack", "ood",
    "export", "ensemble", "compare", "study", "profile", "explain",
]

for _name in COMMAND_MODULES:
    importlib.import_module(f"medclf.cli.{_name}").register(app)


def main() -> None:
    """Console entry point: user errors print one line and exit 2, never a traceback.

    Click's standalone mode handles usage errors (exit 2) and Ctrl-C itself; our own errors pass through it.
    An OSError that reaches here (a file that cannot be read or written: permission denied, a full disk, a
    file where a folder should be) is also the user's to fix: one line naming the path, exit 2.
    """
    try:
        app()
    except MedclfError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        print(f"error: {os_error_line(err)}", file=sys.stderr)
        sys.exit(2)


def os_error_line(err: OSError) -> str:
    """`PATH: reason` (the destination of a rename, where there is one: that is the path the user named)."""
    from medclf.io import os_reason

    path = err.filename2 if err.filename2 is not None else err.filename
    if not isinstance(path, (str, bytes, os.PathLike)):  # None, or a file descriptor
        return os_reason(err, ".")
    path = os.fsdecode(path)
    return f"{path}: {os_reason(err, path)}"


if __name__ == "__main__":
    main()
