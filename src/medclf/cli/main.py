"""The `medclf` command. Each sub-command lives in its own module and only parses, validates and calls the library."""

from __future__ import annotations

import importlib
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
    """
    try:
        app()
    except MedclfError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
