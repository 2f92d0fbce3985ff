"""How an output stores its values, and the guards that run before anything is written: the
8/16-bit encoding of a predicted range (choose_encoding), the float range an output holds, the
precision a float32 output keeps, the integers of an encoding and the values it clips, and the
lookup table of an 8-bit input into an integer output.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from normcli.errors import NormcliWarning, OutputError, StatsFileError

if TYPE_CHECKING:
    from normcli.sinks import OutputSpec

INTEGER_DTYPES = ("uint8", "uint16")
# Values this close outside the encoding's range (as a fraction of it) are rounding, not data:
# clamped silently for integer outputs.
TOLERANCE = 1e-6


def guard_range(spec: "OutputSpec", low: np.ndarray, high: np.ndarray, clip: bool, slack: float = 0.0) -> None:
    """Before writing: the encoding of an output whose values span the finite part of [low, high]
    (per key), set on `spec` (its scale, and the range its values are clamped to: see
    choose_encoding); refused where the output cannot hold them, with a warning where a float32
    output holds them coarsely."""
    finite = np.concatenate([low, high])
    finite = finite[np.isfinite(finite)]
    if not finite.size:
        return
    spec.clamp = choose_encoding(spec, finite.min(), finite.max(), clip, slack)
    _check_float_range(spec, finite.min(), finite.max())
    _warn_if_too_coarse(spec.dtype, finite.min(), finite.max())


def choose_encoding(spec: "OutputSpec", low: float, high: float, clip: bool, slack: float = 0.0):
    """Decide, before writing, how an 8/16-bit output stores the predicted range [low, high]:
    values that reach 2 or more without going negative are stored as those integers (0..255,
    0..65535); any other values map [0, 1] onto the full integer range. Values outside the chosen
    encoding's range are refused, or clipped to it with --clip. (Between 1 and 2 nothing is guessed:
    as integers they would leave only the levels 0 and 1.) Values up to `slack` past the range (the
    inverse of normcli's own 8/16-bit output, off by its quantisation) are accepted: returns the
    range (0, limit) they are then clamped to, silently, or None when nothing needs clamping."""
    if spec.dtype.name not in INTEGER_DTYPES:
        return None
    top = np.iinfo(spec.dtype).max
    integers = high >= 2 and low >= -(TOLERANCE * top + slack)
    spec.scale = 1 if integers else top
    limit = _limit(spec.dtype, spec.scale)
    if clip or not _outside(np.array([low, high]), limit, slack).any():
        return (0.0, limit) if slack and not clip else None
    what = f"{spec.ext.upper()} ({spec.dtype.name})" if spec.kind == "folder" else spec.dtype.name
    floats = "--dtype float32" if spec.ext == "tiff" or spec.kind != "folder" else "--ext tiff, --ext npy or .npy"
    raise OutputError(
        f"the output spans [{low:.4g}, {high:.4g}], but {what} holds [0, 1] (mapped onto 0..{top}) or "
        f"0..{top} as integers; write floats ({floats}), or pass --clip", spec.target)


def input_scale(encoding, input_dtype: np.dtype, path: str, out_range=None) -> int | None:
    """The scale an input of `input_dtype` was written with, from a --save-stats file's `encoding`.
    Without one, 8/16-bit inputs of a normalize whose `out_range` lies within [0, 1] can only have been
    written as [0, 1] onto the full range; otherwise (and for float inputs) None: taken as they are."""
    input_dtype = np.dtype(input_dtype)
    if encoding is None and out_range is not None and input_dtype.name in INTEGER_DTYPES \
            and 0 <= min(out_range) and max(out_range) <= 1:
        return int(np.iinfo(input_dtype).max)
    if encoding is None or input_dtype.kind == "f":
        return None
    try:
        dtype, scale = np.dtype(encoding["dtype"]), encoding["scale"]
        if dtype.name not in INTEGER_DTYPES or scale not in (1, np.iinfo(dtype).max):
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise StatsFileError(f"malformed encoding {encoding!r}; expected {{\"dtype\": \"uint8\" or \"uint16\", "
                             "\"scale\": 1 or the integer maximum}", path) from None
    if dtype != input_dtype:
        raise StatsFileError(f"its outputs were written as {dtype.name}, but these inputs are {input_dtype.name}; "
                             "give the files it wrote", path)
    return scale


def to_integers(values: np.ndarray, dtype: np.dtype, clip: bool, target: str,
                scale: int | None = None) -> tuple[np.ndarray, int]:
    """round(values * scale) as `dtype` (scale: the integer maximum, [0, 1] onto the full range, by
    default; or 1); returns the integers and how many values were clipped to the encoding's range."""
    if np.isnan(values).any():
        raise OutputError(f"NaN cannot be stored as {dtype.name}; write a float output", target)
    integers, outside = encode_all(values, dtype, scale)
    clipped = int(outside.sum())
    check_clipped(clipped, clip, dtype, target, scale)
    return integers, clipped


def encode_all(values: np.ndarray, dtype: np.dtype, scale: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Finite values as integers of `dtype` (see to_integers), those outside the encoding's range
    clipped to it, and where they were."""
    limit = _limit(dtype, scale)
    return np.rint(np.clip(values, 0.0, limit) * (scale or np.iinfo(dtype).max)).astype(dtype), _outside(values, limit)


def _outside(values: np.ndarray, limit: float, slack: float = 0.0) -> np.ndarray:
    """Where values fall outside the encoding's range [0, limit] by more than rounding (and `slack`) could."""
    return (values < -(TOLERANCE * limit + slack)) | (values > limit * (1 + TOLERANCE) + slack)


def check_clipped(clipped: int, clip: bool, dtype: np.dtype, target: str, scale: int | None = None) -> None:
    """Refuse values that had to be clipped to fit an integer output, unless --clip."""
    if clipped and not clip:
        raise OutputError(f"{clipped} values fall outside [0, {_limit(dtype, scale):g}] and cannot be stored as "
                          f"{dtype.name}; write a float output or pass --clip", target)


def _limit(dtype: np.dtype, scale: int | None) -> float:
    """The encoding's range in values, [0, limit]: [0, 1], or [0, top] when scale is 1."""
    top = np.iinfo(dtype).max
    return top / (scale or top)


def _check_float_range(spec: "OutputSpec", low: float, high: float) -> None:
    """Refuse, before writing, values beyond what a float output holds (they would be inf)."""
    if spec.dtype.kind == "f" and max(abs(low), abs(high)) > float(np.finfo(spec.dtype).max):
        raise OutputError(f"the output reaches {max(abs(low), abs(high)):.3g}, beyond what {spec.dtype.name} holds; "
                          "pass --dtype float64 (or a smaller --gamma / --range)", spec.target)


def _warn_if_too_coarse(out_dtype: np.dtype, low: float, high: float) -> None:
    """Warn when a float32 output cannot hold its values to a useful precision: far from zero
    with a small spread, as the inverse of data with a large offset."""
    if out_dtype != np.float32:
        return
    spacing = float(np.spacing(np.float32(max(abs(low), abs(high)))))
    if high > low and spacing > 1e-4 * (high - low):
        warnings.warn(NormcliWarning(
            f"float32 output holds values near {max(abs(low), abs(high)):.3g} only to steps of {spacing:.3g}, "
            f"coarse for their spread of {high - low:.3g}; pass --dtype float64 to keep the input's precision"))


def alpha_factor(spec: "OutputSpec", input_dtype: np.dtype) -> float:
    """What passed-through alpha is multiplied by to come out as the same opacity: an 8/16-bit output
    stores it on its own integer range (the same values when the bit depth is kept); a float output
    holds the input's alpha values as they are."""
    if spec.dtype.kind != "u":
        return 1.0
    top = np.iinfo(spec.dtype).max
    input_top = np.iinfo(input_dtype).max if input_dtype.kind in "ui" else 1.0
    return top / (input_top * (spec.scale or top))


@dataclass(frozen=True)
class ValueTable:
    """What every value of an 8-bit input becomes in an integer output, per channel (or one column
    for all channels): a block is then one lookup a channel, which stores the same integers as
    mapping and encoding each value (see benchmarks/PROFILE.md)."""

    encoded: np.ndarray  # (256, columns) in the output's dtype
    outside: np.ndarray  # (256, columns): which values were clipped to fit

    def encode(self, v: np.ndarray, out: np.ndarray) -> int:
        """The encoded (samples, positions, channels) view `v`, into `out`; how many values clipped."""
        clipped = 0
        for c in range(v.shape[2]):
            column = c if self.encoded.shape[1] > 1 else 0
            out[..., c] = np.take(self.encoded[:, column], v[..., c])
            if self.outside[:, column].any():
                clipped += int(np.count_nonzero(np.take(self.outside[:, column], v[..., c])))
        return clipped


def value_table(mapping: Callable[[np.ndarray, np.ndarray], None], columns: int, work_dtype: np.dtype,
                dtype: np.dtype, scale: int | None, clamp=None) -> ValueTable | None:
    """The table of a fixed per-column map of 8-bit values (`mapping(values, out)` on a (1, 256,
    columns) view) into integers of `dtype` stored with `scale`, clamped to `clamp` if given; None
    where the map is not finite on every value."""
    values = np.repeat(np.arange(256, dtype=np.uint8)[:, None], columns, axis=1)[None]  # (1, 256, columns)
    mapped = np.empty(values.shape, work_dtype)
    mapping(values, mapped)
    if not np.isfinite(mapped).all():
        return None
    if clamp is not None:
        np.clip(mapped, *clamp, out=mapped)
    return ValueTable(*encode_all(mapped[0], dtype, scale))
