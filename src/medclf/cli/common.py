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
