"""Helpers shared by the command modules."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any, Callable, Iterator

import typer

INTERRUPTED_EXIT = 130  # what a shell reports for a command ended by SIGINT (128 + 2)
TERMINATED_EXIT = 143  # ... and by SIGTERM (128 + 15)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or container's stop), raised where Ctrl-C raises KeyboardInterrupt, so that the
    same clean-up runs (locks released, trackers closed as KILLED)."""


@contextlib.contextmanager
def resume_hint_on_interrupt(hint: Callable[[], str]) -> Iterator[None]:
    """Ctrl-C or SIGTERM ends the command with one line saying how to continue (`hint()`), exit 130 (143 for
    SIGTERM), no traceback.

    The library keeps raising KeyboardInterrupt (a notebook user expects it); only the CLI turns it into a line.
    """
    with _sigterm_as_interrupt():
        try:
            yield
        except KeyboardInterrupt as err:
            terminated = isinstance(err, Terminated)
            typer.echo(f"{'terminated' if terminated else 'interrupted'}: {hint()}", err=True)
            raise typer.Exit(TERMINATED_EXIT if terminated else INTERRUPTED_EXIT) from None


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises `Terminated` in this process; forked children (data-loader and decoding
    workers) keep SIGTERM's default, since their parent ends them with it."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    owner = os.getpid()

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != owner:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
