"""The errors normcli reports to people, and the exit code each one ends with."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1  # a data or file problem
    USAGE = 2  # options that contradict each other or the data
    INTERRUPTED = 130


class NormcliError(Exception):
    """A problem with the data or the files: one line for the user, exit 1."""

    exit_code = ExitCode.ERROR

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        return f"{self.message} ({self.path})" if self.path else self.message


class InputError(NormcliError):
    """An input that cannot be read or does not fit the others."""


class NonFiniteError(InputError):
    """NaN or infinite values in the input, without --ignore-nan."""


class OutputError(NormcliError):
    """An output that cannot be written, or values its format cannot hold."""


class StatsFileError(NormcliError):
    """A saved-statistics file that is malformed or does not fit the data."""


class UsageMismatch(NormcliError):
    """Options that contradict each other or the data: a usage error, exit 2."""

    exit_code = ExitCode.USAGE


class NormcliWarning(UserWarning):
    """Something the user should know that does not stop the run (printed as `warning: ...`)."""
