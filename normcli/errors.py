"""The errors normcli reports to people, and the exit code each one ends with."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1  # a data or file problem
    USAGE = 2  # options that contradict each other or the data
    INTERRUPTED = 130  # SIGINT, as a shell reports it (128 + 2)
    TERMINATED = 143  # SIGTERM (128 + 15)


class NormcliError(Exception):
    """A problem with the data or the files: one line for the user, exit 1."""

    exit_code = ExitCode.ERROR

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.message = message
        self.path = path
        self.errno: int | None = None  # the OSError's, when it came from one (from_os_error)

    def __str__(self) -> str:
        return one_line(f"{self.message} ({self.path})" if self.path else self.message)


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


class BadOption(UsageMismatch):
    """One option's value that does not fit the others or the data: a usage error naming the option."""

    def __init__(self, message: str, option: str):
        super().__init__(message)
        self.option = option


class NormcliWarning(UserWarning):
    """Something the user should know that does not stop the run (printed as `warning: ...`)."""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every cleanup runs as for Ctrl-C (not an Exception:
    nothing may swallow it)."""


def warning_line(message, category: type[Warning], encoding: str | None = None) -> str:
    """A warning as normcli shows it, wherever it was raised: `warning: ...` for its own, with the
    category for any other (numpy's RuntimeWarning)."""
    text = one_line(str(message), encoding)
    return f"warning: {text}" if issubclass(category, NormcliWarning) else f"warning: {category.__name__}: {text}"


def one_line(text: str, encoding: str | None = None) -> str:
    """`text` as a terminal can show it, on one line (errors and reports use this one helper): a file
    name's bytes that are not UTF-8 (which Python keeps as surrogates, '\\udcff') as '\\xff', control
    characters (a newline in a name) escaped, and what `encoding` cannot print as the '\\x' escapes of
    its UTF-8 bytes ('é' in ASCII: '\\xc3\\xa9', the bytes the name holds on disk)."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no byte made
        raw = text.encode("utf-8", "backslashreplace")
    shown = []
    for c in raw.decode("utf-8", "backslashreplace"):
        if not c.isprintable():
            shown.append(repr(c)[1:-1])
        elif encoding is not None and not _encodes(c, encoding):
            shown.append("".join(f"\\x{byte:02x}" for byte in c.encode("utf-8")))
        else:
            shown.append(c)
    return "".join(shown)


def _encodes(char: str, encoding: str) -> bool:
    try:
        char.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def from_os_error(error: OSError, path: str, kind: type[NormcliError] = NormcliError) -> NormcliError:
    """What the system said (full disk, read-only folder, name too long), about the file the user named
    (its errno kept: a file a Dask worker could not find is told apart from one missing everywhere)."""
    made = kind(error.strerror or str(error), "stdout" if path == "-" else path)
    made.errno = error.errno
    return made
