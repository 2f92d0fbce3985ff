"""Option values that several layers share, free of numpy so that the CLI's --help stays quick:
the choices of --engine, --per, --layout and --mode, and -o's options."""

from __future__ import annotations

from dataclasses import dataclass

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

    @property
    def to_stdout(self) -> bool:
        return self.target == "-"
