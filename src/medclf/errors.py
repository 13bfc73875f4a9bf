"""Errors a user can fix. The CLI prints them on one line and exits 2, without a traceback."""

from __future__ import annotations

from typing import Iterable


class MedclfError(Exception):
    """A problem with the user's input (a file, a flag, a config); the message says what and where."""


class ConfigError(MedclfError):
    """An unknown config key, a wrong type or an invalid value."""


class DataError(MedclfError):
    """A file that cannot be read or a dataset that does not check out."""


def closest(given: str, valid: Iterable[str]) -> str | None:
    """The one of `valid` closest to a mistyped `given` (difflib, as Python's own NameError hints), or None
    when none is close."""
    import difflib

    close = difflib.get_close_matches(given, list(valid), n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(given: str, valid: Iterable[str]) -> str:
    """'; did you mean X?' for the closest of `valid` (`closest`), or ''."""
    match = closest(given, valid)
    return f"; did you mean {match}?" if match else ""
