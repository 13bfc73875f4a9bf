"""Helpers shared by the command modules."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import typer

INTERRUPTED_EXIT = 130  # what a shell reports for a command ended by SIGINT (128 + 2)


@contextlib.contextmanager
def resume_hint_on_interrupt(hint: Callable[[], str]) -> Iterator[None]:
    """Ctrl-C ends the command with one line saying how to continue (`hint()`), exit 130, no traceback.

    The library keeps raising KeyboardInterrupt (a notebook user expects it); only the CLI turns it into a line.
    """
    try:
        yield
    except KeyboardInterrupt:
        typer.echo(f"interrupted: {hint()}", err=True)
        raise typer.Exit(INTERRUPTED_EXIT) from None


def examples(*commands: str) -> str:
    """A command's epilog: 'Examples:' and the command lines, printed last in its help, as written.

    Click rewraps help paragraphs; a paragraph that starts with a \\b line is printed verbatim."""
    return "Examples:\n\n\b\n" + "\n".join(f"  {line}" for line in commands)


def preset_help(what: str = "YAML preset") -> str:
    """Help of a --config option, naming the presets shipped in configs/ (found as load_config finds them)."""
    from medclf.config import list_presets

    return f"{what}: a YAML file, or one of {', '.join(list_presets())}."


MLFLOW_HELP = ("Also log to MLflow at URI (sqlite:///FILE or http://HOST:PORT); the same as the overrides "
               "track.mlflow=true track.mlflow_uri=URI.")


def mlflow_overrides(uri: str | None) -> list[str]:
    """The config overrides `--mlflow URI` stands for."""
    return [] if uri is None else ["track.mlflow=true", f"track.mlflow_uri={uri}"]


FORCE_OUT_HELP = "Replace an existing --out file (a symbolic link is refused either way)."


def echo_skipped(path: str, error: str) -> None:
    """'skipped PATH: REASON' on stderr. The readers' errors already start with 'PATH: ', which is not repeated."""
    reason = error if error.startswith(f"{path}: ") else f"{path}: {error}"
    typer.echo(f"skipped {reason}", err=True)
