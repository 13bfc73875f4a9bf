"""Errors a user can fix. The CLI prints them on one line and exits 2, without a traceback."""


class MedclfError(Exception):
    """A problem with the user's input (a file, a flag, a config); the message says what and where."""


class ConfigError(MedclfError):
    """An unknown config key, a wrong type or an invalid value."""


class DataError(MedclfError):
    """A file that cannot be read or a dataset that does not check out."""
