"""The `medclf` command. Each sub-command lives in its own module and only parses, validates and calls the library."""

from __future__ import annotations

import importlib
import os
import sys

import typer
from typer.core import TyperGroup

from medclf.cli.common import examples
from medclf.errors import MedclfError

# the order `medclf --help` lists the commands in: a project's path from data to a served model, then the tools
COMMAND_ORDER = [
    "prepare", "train", "evaluate", "recalibrate", "report", "predict", "explain", "ensemble", "compare", "study",
    "attack", "ood", "export", "profile", "demo", "serve",
]


class WorkflowOrderGroup(TyperGroup):
    """Lists the commands in COMMAND_ORDER rather than in the order they were registered."""

    def list_commands(self, ctx: typer.Context) -> list[str]:
        rank = {name: i for i, name in enumerate(COMMAND_ORDER)}
        return sorted(super().list_commands(ctx), key=lambda name: rank.get(name, len(rank)))


app = typer.Typer(
    cls=WorkflowOrderGroup,
    help="Prepare, train, evaluate, explain and serve medical image classifiers.",
    epilog=examples("medclf demo --out /tmp/medclf-demo",
                    "medclf train --data ~/medclf/cache/pmnist --out ~/medclf/runs/pmnist --config pneumoniamnist_cpu"),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # click's plain help: flags read as flags (no `<bool>`), and text in brackets such as "[default: all cores]"
    # is printed as written instead of being taken for Rich markup and dropped
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},  # inherited by every sub-command
)


def _print_version(value: bool) -> None:
    if value:
        from medclf import __version__

        typer.echo(f"medclf {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print medclf's version and exit."),
) -> None:
    """Prepare, train, evaluate, explain and serve medical image classifiers."""


for _name in COMMAND_ORDER:
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
