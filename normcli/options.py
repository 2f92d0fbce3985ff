"""Option values that several layers share, free of numpy so that the CLI's --help stays quick:
the choices of --engine, --per, --layout and --mode, -o's options, and the process's streams."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import BinaryIO

from normcli.scopes import SCOPES as _SCOPES  # scopes.py imports no numpy

ENGINES = ("threads", "processes", "dask")  # engine.open_engine's
SCOPES = tuple(_SCOPES)  # the --per choices: a scope added in scopes.py is an option at once
# layout.LAYOUTS, images.MODES and quantiles.METHODS, spelled out (those modules import numpy);
# tests/test_docs.py checks that they agree.
LAYOUTS = ("NHWC", "NCHW", "NHW", "NC", "N")
MODES = ("gray", "rgb", "rgba")
QUANTILE_METHODS = ("inverted_cdf", "averaged_inverted_cdf", "closest_observation", "interpolated_inverted_cdf",
                    "hazen", "weibull", "linear", "median_unbiased", "normal_unbiased", "lower", "higher",
                    "midpoint", "nearest")


@dataclass(frozen=True)
class Output:
    """-o and how it is written."""

    target: str
    dtype: str | None = None
    ext: str | None = None
    clip: bool = False
    force: bool = False
    compressor: str | None = None  # a .zarr or .h5 output's codec [default: the store's own]
    output_key: str | None = None  # an .npz or .h5 output's array [default: the input's --key, else data]

    @property
    def to_stdout(self) -> bool:
        return self.target == "-"


@dataclass(frozen=True)
class Environment:
    """The streams a run reads and writes, handed in (as httpie's Environment) so that nothing
    below reads sys.stdin or writes sys.stdout itself; tests give their own."""

    stdin: BinaryIO | None = None  # where `-` as an input reads its .npy stream (None: none open)
    stdout: BinaryIO | None = None  # where `-o -` writes its .npy stream
    stdout_isatty: bool = False
    stderr_isatty: bool = False
    stdout_encoding: str = "utf-8"  # what the reports on stdout and stderr can print
    stderr_encoding: str = "utf-8"

    @classmethod
    def from_sys(cls) -> "Environment":
        """This process's own streams (as they are now: Click's test runner replaces them)."""
        return cls(stdin=getattr(sys.stdin, "buffer", None), stdout=sys.stdout.buffer,
                   stdout_isatty=sys.stdout.isatty(), stderr_isatty=sys.stderr.isatty(),
                   stdout_encoding=getattr(sys.stdout, "encoding", None) or "ascii",
                   stderr_encoding=getattr(sys.stderr, "encoding", None) or "ascii")

    def encoding(self, stderr: bool) -> str:
        return self.stderr_encoding if stderr else self.stdout_encoding
