"""The arithmetic of every transform, as plain numpy on (samples, positions, channels) views.

Min-max, z-score, batch norm and their inverses are all one per-key affine map,
y = (x - shift) * scale + offset, computed in float64 and stored in the output array.
What differs is where (shift, scale, offset) come from: the whole dataset's moments
(normalize, standardize), each mini-batch's (batchnorm) or each sample's groups of
channels (groupnorm).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np

from normcli.errors import NormcliWarning
from normcli.layout import Layout
from normcli.moments import Moments, measure_block, whole_numbers
from normcli.scopes import SAMPLE, Scope, scope as as_scope
from normcli.scratch import scratch, slice_rows


@dataclass
class Affine:
    """y = (x - shift) * scale + offset, each a per-key float64 array. For integer data `whole`
    (Python ints per key, or None) is the shift's exact integer part, the shift being
    whole + shift: x - whole is then taken in exact integers before anything is rounded, so that
    no span or mean of wide integers wraps or rounds away (int64's 2**63 - 2 is not a float64)."""

    shift: np.ndarray
    scale: np.ndarray
    offset: np.ndarray
    whole: np.ndarray | None = None

    def apply(self, x: np.ndarray, out: np.ndarray, scope: Scope | str, clip: tuple[float, float] | None = None):
        """Write the map of the (samples, positions, channels) view `x` into `out` (same shape)."""
        whole, shift = self.split(x.dtype)
        keyed = (shift, self.scale, self.offset) + (() if whole is None else (whole,))
        for (values, into), (key_shift, scale, offset, *key_whole) in as_scope(scope).pieces((x, out), keyed):
            apply_broadcast(values, key_shift, scale, offset, into, clip, *key_whole)
        return out

    def split(self, dtype) -> tuple[np.ndarray | None, np.ndarray]:
        """(whole, shift) for data of `dtype` (see split_whole)."""
        return split_whole(self.whole, self.shift, dtype)

    def map_keys(self, values: np.ndarray) -> np.ndarray:
        """The map of one value per key (each key's min or max, say), integers taken exactly."""
        values = np.asarray(values)
        if values.dtype == object:  # integers of several dtypes (merged statistics files)
            if self.whole is None:
                return (values.astype(np.float64) - self.shift) * self.scale + self.offset
            differences = np.array([float(int(v) - int(w)) for v, w in zip(values, self.whole)])
            return (differences - self.shift) * self.scale + self.offset
        whole, shift = self.split(values.dtype)
        with np.errstate(invalid="ignore"):
            return deviations(values, shift, whole) * self.scale + self.offset

    def rows(self, start: int, count: int) -> "Affine":
        """The keys start..start+count (the sample scope's keys are the samples)."""
        return Affine(*(None if a is None else a[start:start + count]
                        for a in (self.shift, self.scale, self.offset, self.whole)))

    def bounds(self, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where each key's [low, high] lands (the map is monotone per key)."""
        with np.errstate(invalid="ignore"):
            a, b = self.map_keys(low), self.map_keys(high)
        return np.fmin(a, b), np.fmax(a, b)

    def inverse(self) -> "Affine":
        """The map back: x = (y - offset) / scale + shift (keys with scale 0 stay constant)."""
        with np.errstate(divide="ignore"):
            scale = np.where(self.scale != 0, 1.0 / np.where(self.scale != 0, self.scale, 1.0), 0.0)
        _, shift = self.split(np.float64)
        return Affine(self.offset, scale, shift)


def split_whole(whole, shift: np.ndarray, dtype) -> tuple[np.ndarray | None, np.ndarray]:
    """A shift of whole + shift (per key) for data of `dtype`: `whole` in that integer dtype (clipped
    into its range, the excess moved into `shift`), or None and the whole shift in float64 for
    any other data (or no `whole`)."""
    if whole is None:
        return None, shift
    dtype = np.dtype(dtype)
    if dtype.kind not in "iu":
        return None, shift + whole.astype(np.float64)
    info = np.iinfo(dtype)
    fitted = [min(max(int(w), info.min), info.max) for w in whole]
    return np.array(fitted, dtype), shift + np.array([float(int(w) - f) for w, f in zip(whole, fitted)])


def deviations(x: np.ndarray, shift, whole=None, out: np.ndarray | None = None) -> np.ndarray:
    """x - (whole + shift) in float64, arrays shaped to broadcast against `x`; with `whole` (in
    x's integer dtype) x - whole is exact, then rounded once, whatever the integers' width.
    Without `whole`, into `out` (float64, x's shape) if given."""
    if whole is None:
        if out is None:
            return np.subtract(x, shift, dtype=np.float64)
        np.copyto(out, x)  # a plain cast, then a float64 subtraction: faster than both in one call
        out -= shift
        return out
    if x.dtype.itemsize < 8:  # the difference of two 32-bit integers is exact in int64 and in float64
        y = np.subtract(x, whole, dtype=np.int64).astype(np.float64)
    else:  # 64-bit: |x - whole| < 2**64 is exact in uint64, taken in the direction that is >= 0
        flip = np.uint64(1 << 63) if x.dtype.kind == "i" else np.uint64(0)
        ux, uw = x.view(np.uint64) ^ flip, np.asarray(whole).view(np.uint64) ^ flip  # order-preserving
        y = np.where(ux >= uw, (ux - uw).astype(np.float64), -(uw - ux).astype(np.float64))
    y -= shift
    return y


def _degenerate(mask: np.ndarray, what: str, result: str) -> None:
    if mask.any():
        warnings.warn(NormcliWarning(
            f"{int(mask.sum())} of {mask.size} keys have {what}; their output is {result}"))


def minmax(moments: Moments, out_range: tuple[float, float] = (0.0, 1.0)) -> Affine:
    """Min-max scaling of each key's [min, max] onto `out_range` (as MinMaxScaler); integer minima
    are the shift's exact whole part, and spans are taken in exact integers."""
    keys = len(moments)
    if moments.min.dtype.kind in "iuO":
        to_min = Affine(np.zeros(keys), np.ones(keys), np.zeros(keys), whole_numbers(moments.min))
    else:
        to_min = Affine(np.where(np.isfinite(moments.min), moments.min, 0.0), np.ones(keys), np.zeros(keys))
    with np.errstate(invalid="ignore"):
        span = to_min.map_keys(moments.max)
    return _onto(to_min, span, out_range, "max == min")


def _onto(to_low: Affine, span: np.ndarray, out_range: tuple[float, float], flat_means: str) -> Affine:
    """`to_low` (x - low per key) followed by the map of [0, span] onto `out_range`; a key whose span
    is not positive goes to the range's low end."""
    low, high = out_range
    flat = ~(span > 0)
    _degenerate(flat, flat_means, f"the range's low end ({low:g})")
    scale = np.where(flat, 0.0, (high - low) / np.where(flat, 1.0, span))
    return replace(to_low, scale=scale, offset=np.full(len(span), float(low)))


def _float_quantiles(values) -> np.ndarray:
    """Percentiles per key (keys, q) as float64 where they are integers (floats keep their dtype)."""
    values = np.asarray(values)
    return values if values.dtype.kind == "f" else values.astype(np.float64)


def stretch(percentiles, out_range: tuple[float, float] = (0.0, 1.0)) -> Affine:
    """Each key's [p_lo, p_hi] (the columns of `percentiles`, (keys, 2)) onto `out_range`:
    (x - p_lo) / (p_hi - p_lo), as CSBDeep's normalize(x, pmin, pmax) and ImageMagick's stretch."""
    values = _float_quantiles(percentiles).astype(np.float64)
    keys = len(values)
    with np.errstate(invalid="ignore"):
        span = values[:, 1] - values[:, 0]
    return _onto(Affine(values[:, 0], np.ones(keys), np.zeros(keys)), span, out_range, "equal low and high percentiles")


def robust(percentiles) -> Affine:
    """(x - median) / (q_hi - q_lo) per key from percentiles (keys, 3) at (q_lo, 50, q_hi), as
    scikit-learn's RobustScaler: the range taken in the percentiles' dtype, and a range below ten
    times its epsilon (zero) scales by 1."""
    values = _float_quantiles(percentiles)
    with np.errstate(invalid="ignore"):
        spread = values[:, 2] - values[:, 0]
        flat = spread < 10 * np.finfo(spread.dtype).eps
    spread = np.where(flat, 1.0, spread.astype(np.float64))
    keys = len(values)
    return Affine(values[:, 1].astype(np.float64), 1.0 / spread, np.zeros(keys))


def zscore(moments: Moments, *, ddof: int = 0, eps: float = 0.0) -> Affine:
    """(x - mean) / sqrt(var + eps) per key (as StandardScaler with eps = 0)."""
    var = moments.var(ddof) + eps
    flat = ~(var > 0)
    _degenerate(flat, "zero variance", "0")
    scale = np.where(flat, 0.0, 1.0 / np.sqrt(np.where(flat, 1.0, var)))
    shift, whole = moments.centre()
    return Affine(shift, scale, np.zeros(len(moments)), whole)


def per_key(value, keys: int, name: str) -> np.ndarray:
    """A --gamma/--beta value: one number for every key, or exactly one per key."""
    values = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if values.size == 1:
        return np.full(keys, values[0])
    if values.size != keys:
        raise ValueError(f"{name} has {values.size} values; give one, or one per channel ({keys})")
    return values


def batchnorm(mean: np.ndarray, var: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float,
              whole: np.ndarray | None = None) -> Affine:
    """Batch norm: gamma * (x - mean) / sqrt(var + eps) + beta (the mean whole + mean with `whole`).

    Training mode passes the batch's mean (Moments.centre) and biased (population) variance, as PyTorch
    normalizes with; inference mode (--eval) the saved running statistics.
    """
    return Affine(mean, gamma / np.sqrt(var + eps), beta, whole)



@dataclass
class RunningStats:
    """PyTorch's running_mean / running_var: start at 0 and 1, updated once per batch."""

    mean: np.ndarray
    var: np.ndarray
    momentum: float | None  # None: cumulative moving average
    batches: int = 0

    @classmethod
    def start(cls, keys: int, momentum: float | None) -> "RunningStats":
        return cls(np.zeros(keys), np.ones(keys), momentum)

    def update(self, batch: Moments) -> None:
        """Blend in one batch: its mean and its unbiased variance, as PyTorch does."""
        self.batches += 1
        factor = 1.0 / self.batches if self.momentum is None else self.momentum
        self.mean = (1 - factor) * self.mean + factor * batch.mean
        self.var = (1 - factor) * self.var + factor * batch.var(1)


def groupnorm_affine(x: np.ndarray, groups: int, gamma: np.ndarray, beta: np.ndarray, eps: float,
                     ignore_nan: bool = False):
    """Group norm of a (samples, positions, channels) view: statistics per sample and group of
    consecutive channels (as torch.nn.GroupNorm), then gamma/beta per channel. With `ignore_nan`
    the statistics are over each group's finite values.

    Returns (shift, scale, offset, whole) shaped to broadcast against `x` (`whole`: each group
    mean's exact integer part in x's dtype for integer data, else None; see Affine).
    """
    n, positions, channels = x.shape
    per_group = channels // groups
    # Each (sample, group) as one row of an (n * groups, values) array: the per-sample moments,
    # shifted and exact, of every other command.
    rows = x.reshape(n, positions, groups, per_group).transpose(0, 2, 1, 3).reshape(n * groups, -1)
    stats = measure_block(rows, SAMPLE, Layout("NC"), ignore_nan=ignore_nan)
    whole = None
    if stats.moments is None:  # NaN or inf, not ignored: the input's own check reports it after pass 1
        mean = var = np.full((n, 1, groups, 1), np.nan)
    else:
        moments = stats.aggregate()
        mean, whole = moments.centre()
        whole, mean = split_whole(whole, np.where(moments.count > 0, mean, np.nan), x.dtype)
        with np.errstate(invalid="ignore", divide="ignore"):  # a group with no finite value: NaN, passed through
            var = moments.var(0).reshape(n, 1, groups, 1)
    inv_std = 1.0 / np.sqrt(var + eps)

    def per_channel(group_values):
        return np.broadcast_to(group_values.reshape(n, 1, groups, 1), (n, 1, groups, per_group)).reshape(n, 1, channels)

    scale = per_channel(inv_std) * gamma.reshape(1, 1, channels)
    return (per_channel(np.asarray(mean)), scale, beta.reshape(1, 1, channels),
            None if whole is None else per_channel(whole))


def apply_broadcast(x: np.ndarray, shift, scale, offset, out: np.ndarray,
                    clip: tuple[float, float] | None = None, whole=None) -> np.ndarray:
    """y = (x - shift) * scale + offset in float64 (x - whole - shift with `whole`: see deviations),
    with arrays already shaped to broadcast against `x`, rounded once into `out`. At most about
    scratch.SLICE_VALUES values (whole samples or rows) at a time, through this thread's float64
    scratch, which bounds the temporary for large blocks; each value's arithmetic is the same."""
    step = slice_rows(x.shape)
    for start in range(0, len(x), step):
        rows = slice(start, start + step)
        part_shift, part_scale, part_offset, part_whole = (_rows_of(p, x, rows) for p in (shift, scale, offset, whole))
        values = x[rows]
        y = deviations(values, part_shift, part_whole,
                       out=None if part_whole is not None else scratch("affine", values.shape, np.float64))
        with np.errstate(invalid="ignore"):  # inf * 0 (--ignore-nan, a flat key): non-finite input is put back after
            y *= part_scale
        y += part_offset
        if clip is not None:
            np.clip(y, clip[0], clip[1], out=y)
        out[rows] = y
    return out


def _rows_of(values, x: np.ndarray, rows: slice):
    """The rows of per-row values (shaped (len(x), ...) against x) that go with x[rows]; values
    broadcast along x's first axis (or None) as they are."""
    if values is None or np.ndim(values) != x.ndim or np.shape(values)[0] == 1:
        return values
    return values[rows]
