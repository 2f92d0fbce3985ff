"""Streaming, mergeable statistics: count, mean, M2, min, max per scope key, and histograms.

Float data: each chunk is measured in float64 as deviations from a fixed shift (a value
of the data), two-pass within the chunk, and chunks are merged with Chan et al.'s
pairwise update of (count, mean, M2). Working on deviations keeps a large offset
(1e9 + noise) from cancelling away the variance.

Small integers (uint8, uint16, int8, int16): exact. Every scope keeps 64-bit integer sums
of values and of squares; mean and M2 are then one rounding away from the truth.

Each accumulator has a pure `measure(chunk)` (safe to run on several threads) and an
`add(partial)` that merges the results in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from normcli.errors import InputError, NonFiniteError
from normcli.layout import Layout

SCOPES = ("global", "channel", "sample", "pixel")
# Axes of the (samples, positions, channels) view that each scope reduces.
_REDUCE = {"global": (0, 1, 2), "channel": (0, 1), "sample": (1, 2), "pixel": (0,)}
EXACT_DTYPES = (np.uint8, np.uint16, np.int8, np.int16)


@dataclass
class Moments:
    """Per-key statistics, each a float64 array over the scope's keys (count: int64)."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray
    # Integer inputs: each key's exact (sum, sum of squares) as Python ints, so var() is rounded once.
    exact_sums: tuple | None = field(default=None, repr=False, compare=False)

    def var(self, ddof: int = 0) -> np.ndarray:
        if self.exact_sums is not None:
            return np.array([(b * c - a * a) / (c * (c - ddof)) if c > ddof else np.nan
                             for a, b, c in zip(*self.exact_sums, (int(c) for c in self.count))], np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.count > ddof, self.m2 / np.maximum(self.count - ddof, 1), np.nan)

    def std(self, ddof: int = 0) -> np.ndarray:
        return np.sqrt(self.var(ddof))

    def __len__(self) -> int:
        return len(self.count)

    @classmethod
    def empty(cls, keys: int) -> "Moments":
        return cls(np.zeros(keys, np.int64), np.zeros(keys), np.zeros(keys),
                   np.full(keys, np.inf), np.full(keys, -np.inf))

    def merge(self, other: "Moments") -> "Moments":
        """Both sets of statistics as one (Chan et al.); exact counts, min and max."""
        count, mean, m2 = chan_merge(self.count, self.mean, self.m2, other.count, other.mean, other.m2)
        return Moments(count, mean, m2, np.fmin(self.min, other.min), np.fmax(self.max, other.max))


def chan_merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Pairwise merge of (count, mean, M2); keys with no values keep the other side."""
    n = n_a + n_b
    with np.errstate(invalid="ignore", divide="ignore"):
        weight_b = np.where(n > 0, n_b / np.maximum(n, 1), 0.0)
        delta = np.where(n_b > 0, mean_b - mean_a, 0.0)
        delta = np.where(n_a > 0, delta, 0.0)
        mean = np.where(n_a > 0, mean_a + delta * weight_b, mean_b)
        m2 = m2_a + m2_b + delta * delta * n_a * weight_b
    return n, mean, m2


@dataclass
class NonFinite:
    """Where NaN and infinite values were seen (global sample index of the first)."""

    nan: int = 0
    posinf: int = 0
    neginf: int = 0
    first: int | None = None

    def add(self, other: "NonFinite") -> None:
        self.nan += other.nan
        self.posinf += other.posinf
        self.neginf += other.neginf
        if self.first is None:
            self.first = other.first

    @property
    def total(self) -> int:
        return self.nan + self.posinf + self.neginf


def scope_keys(scope: str, layout: Layout, sample_shape, n_samples: int) -> int:
    """How many keys (rows) a scope has."""
    if scope == "global":
        return 1
    if scope == "channel":
        return layout.channels(sample_shape)
    if scope == "sample":
        return n_samples
    positions = layout.npc(np.empty((1, *sample_shape), np.uint8)).shape
    return positions[1] * positions[2]


def broadcast_keys(values: np.ndarray, scope: str, npc_shape) -> np.ndarray:
    """Per-key values shaped to broadcast against a (samples, positions, channels) view."""
    if scope == "global":
        return values.reshape(1, 1, 1)
    if scope == "channel":
        return values.reshape(1, 1, -1)
    if scope == "sample":
        return values.reshape(-1, 1, 1)
    return values.reshape(1, *npc_shape[1:])


def keyed_reduce(ufunc, a: np.ndarray, scope: str, dtype=None) -> np.ndarray:
    """ufunc.reduce of a (samples, positions, channels) array over the scope's axes, one value per key.

    numpy reduces the leading axes of an (M, 3) array one short row at a time (slowly: about
    0.1-0.3 GB/s); viewed as (M / L, L * 3) rows of a few thousand values the same reduction
    runs at memory speed, and the L partial results fold into 3 at the end.
    """
    if scope == "global":
        return np.atleast_1d(ufunc.reduce(a.reshape(-1) if a.flags.c_contiguous else a, axis=None, dtype=dtype))
    if scope == "channel" and a.flags.c_contiguous and a.shape[2] < 256:
        channels = a.shape[2]
        rows = a.reshape(-1, channels)
        per_row = max(1, 4096 // channels)
        whole = len(rows) // per_row * per_row
        if whole == 0:
            return ufunc.reduce(rows, axis=0, dtype=dtype)
        folded = ufunc.reduce(rows[:whole].reshape(-1, per_row * channels), axis=0, dtype=dtype)
        result = ufunc.reduce(folded.reshape(per_row, channels), axis=0)
        if whole < len(rows):
            result = ufunc(result, ufunc.reduce(rows[whole:], axis=0, dtype=dtype))
        return result
    return ufunc.reduce(a, axis=_REDUCE[scope], dtype=dtype).reshape(-1)


def _key_count(v: np.ndarray, scope: str) -> int:
    """How many values each key has in a (samples, positions, channels) chunk."""
    return int(np.prod([v.shape[a] for a in _REDUCE[scope]]))


def counts_values(dtype, scope: str) -> bool:
    """Whether a scope counts every value: small integers at global and channel scope, which
    gives exact moments and exact histograms of any binning from one pass."""
    return np.dtype(dtype).type in EXACT_DTYPES and scope in ("global", "channel")


class MomentAccumulator:
    """count/mean/M2/min/max for every key of one scope, over chunks of samples."""

    def __init__(self, scope: str, layout: Layout, dtype, sample_shape, *, ignore_nan: bool = False):
        self.scope = scope
        self.layout = layout
        self.dtype = np.dtype(dtype)
        self.sample_shape = sample_shape
        self.ignore_nan = ignore_nan
        self.exact = self.dtype.type in EXACT_DTYPES
        self.by_value = counts_values(self.dtype, scope)
        self.nonfinite = NonFinite()
        self.shift: np.ndarray | None = None
        self._parts: list = []  # sample scope: per-chunk results, in order
        self._state = None

    def _shift_from(self, v: np.ndarray) -> np.ndarray:
        """Each key's mean over `v` (any value near the data works; a mean is always near)."""
        axes = _REDUCE[self.scope]
        finite = np.isfinite(v)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            total = np.where(finite, v, 0).sum(axis=axes, dtype=np.float64)
            shift = total / np.maximum(finite.sum(axis=axes), 1)
        return np.where(np.isfinite(shift), shift, 0.0).reshape(-1)

    def measure(self, chunk: np.ndarray, start: int = 0):
        """The statistics of one chunk (pure; safe on several threads once the first chunk is in)."""
        v = self.layout.npc(chunk)
        if self.by_value:
            return _value_counts(v, self.scope, self.dtype), NonFinite()
        if self.exact:
            return _integer_sums(v, self.scope, self.dtype), NonFinite()
        return self._measure_float(v, start)

    def _measure_float(self, v: np.ndarray, start: int):
        scope = self.scope
        count = _key_count(v, scope)
        if scope == "sample":
            # Each sample is whole in its chunk: shift it by its own rough mean.
            with np.errstate(invalid="ignore", over="ignore"):  # +inf and -inf in one sample
                rough = np.add.reduce(v, axis=(1, 2), dtype=np.float64) / count
            shift = np.nan_to_num(rough, nan=0.0, posinf=0.0, neginf=0.0)
        else:
            if self.shift is None:  # the first chunk, measured alone before the others start
                self.shift = self._shift_from(v)
            shift = self.shift
        shift_b = broadcast_keys(shift, scope, v.shape)
        y = np.subtract(v, shift_b, dtype=np.float64)
        with np.errstate(invalid="ignore", over="ignore"):  # +inf and -inf in one key sum to NaN: counted below
            total = keyed_reduce(np.add, y, scope)
        if not np.isfinite(total).all():
            finite = np.isfinite(v)
            nonfinite = _count_nonfinite(v, finite, start)
            if not nonfinite.total:
                raise InputError("values too large to add up in float64 (magnitudes near 1.8e308); "
                                 "scale the data down first")
            if not self.ignore_nan:
                return None, nonfinite
            return self._measure_masked(v, y, finite, shift, shift_b), nonfinite
        if scope == "global" and y.flags.c_contiguous:
            flat = y.reshape(-1)
            squares = np.atleast_1d(np.einsum("i,i->", flat, flat))
        else:
            squares = keyed_reduce(np.add, np.square(y, out=y), scope)
        mean_dev = total / count
        m2 = squares - total * mean_dev
        # Sums of squares about the shift cancel when the shift is far from this chunk's values
        # (drifting or sorted data): then measure the deviations from the chunk's own mean.
        if (total * mean_dev > 0.5 * squares).any():
            y = np.subtract(v, shift_b, dtype=np.float64)
            y -= broadcast_keys(mean_dev, scope, v.shape)
            m2 = keyed_reduce(np.add, np.square(y, out=y), scope)
        result = (np.full(len(total), count, np.int64), mean_dev + shift if scope == "sample" else mean_dev, m2,
                  keyed_reduce(np.minimum, v, scope).astype(np.float64),
                  keyed_reduce(np.maximum, v, scope).astype(np.float64))
        return result, NonFinite()

    def _measure_masked(self, v, y, finite, shift, shift_b):
        """--ignore-nan on a chunk that has NaN or inf: every statistic over the finite values only."""
        axes = _REDUCE[self.scope]
        count = finite.sum(axis=axes, keepdims=True).astype(np.int64)
        y[~finite] = 0.0
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_dev = np.where(count > 0, y.sum(axis=axes, keepdims=True) / np.maximum(count, 1), 0.0)
        y -= mean_dev
        y[~finite] = 0.0
        np.square(y, out=y)
        m2 = y.sum(axis=axes)
        low = np.where(finite, v, np.inf).min(axis=axes).astype(np.float64)
        high = np.where(finite, v, -np.inf).max(axis=axes).astype(np.float64)
        mean = mean_dev.reshape(-1) + shift if self.scope == "sample" else mean_dev.reshape(-1)
        return count.reshape(-1), mean, m2.reshape(-1), low.reshape(-1), high.reshape(-1)

    def add(self, partial) -> None:
        """Merge one chunk's statistics (in chunk order)."""
        result, nonfinite = partial
        if nonfinite.total:
            self.nonfinite.add(nonfinite)
        if result is None:
            return
        if self.scope == "sample":
            self._parts.append(result)
        elif self._state is None:
            self._state = result
        elif self.by_value:
            self._state = self._state + result
        elif self.exact:
            count, s1, s2, low, high = self._state
            # Python-int sums across chunks: 64-bit sums of uint16 squares wrap after ~4e9 values
            self._state = (count + result[0], s1 + result[1].astype(object), s2 + result[2].astype(object),
                           np.minimum(low, result[3]), np.maximum(high, result[4]))
        else:
            n_a, m_a, s_a, lo_a, hi_a = self._state
            n_b, m_b, s_b, lo_b, hi_b = result
            n, m, s = chan_merge(n_a, m_a, s_a, n_b, m_b, s_b)
            self._state = (n, m, s, np.fmin(lo_a, lo_b), np.fmax(hi_a, hi_b))

    @property
    def value_counts(self) -> np.ndarray | None:
        """Counts of every value per key, shaped (keys, values), where this scope keeps them."""
        return self._state if self.by_value else None

    def check_finite(self, locate) -> None:
        """Raise the one-line NaN/inf error, naming the first offending sample via `locate(index)`."""
        if self.nonfinite.total and not self.ignore_nan:
            raise nonfinite_error(self.nonfinite, locate)

    def result(self) -> Moments:
        if self.scope == "sample":
            if not self._parts:
                return Moments.empty(0)
            columns = [np.concatenate(cols) for cols in zip(*self._parts)]
        elif self._state is None:
            return Moments.empty(scope_keys(self.scope, self.layout, self.sample_shape, 0))
        elif self.by_value:
            return _moments_from_counts(self._state, self.dtype)
        else:
            columns = self._state
        if self.exact:
            return _moments_from_sums(*columns)
        count, mean, m2, low, high = columns
        with np.errstate(invalid="ignore"):  # a key with no (finite) values has no mean, as in np.nanmean
            mean = np.where(count > 0, mean if self.scope == "sample" else mean + self.shift, np.nan)
        return Moments(count, mean, m2, low, high)


def nonfinite_error(found: NonFinite, locate) -> NonFiniteError:
    kinds = [f"{n} {label}" for n, label in ((found.nan, "NaN"), (found.posinf, "+inf"), (found.neginf, "-inf"))
             if n]
    source, name = locate(found.first)
    where = f"first in sample {found.first}" + (f" ({name})" if isinstance(name, str) else "")
    noun = "value" if found.total == 1 else "values"
    return NonFiniteError(
        f"the input holds {' and '.join(kinds)} {noun}, {where}; use --ignore-nan to leave them out", source)


def _count_nonfinite(v: np.ndarray, finite: np.ndarray, start: int) -> NonFinite:
    bad_samples = np.flatnonzero(~finite.reshape(len(v), -1).all(axis=1))
    nan = int(np.isnan(v).sum())
    posinf = int(np.isposinf(v).sum())
    neginf = int(np.isneginf(v).sum())
    return NonFinite(nan, posinf, neginf, start + int(bad_samples[0]) if len(bad_samples) else None)


# -- exact integer path -----------------------------------------------------
def _values(dtype: np.dtype) -> np.ndarray:
    """Every value of a small integer type, in order (the columns of a value count)."""
    info = np.iinfo(dtype)
    return np.arange(info.min, info.max + 1)


def _value_counts(v: np.ndarray, scope: str, dtype: np.dtype) -> np.ndarray:
    """How often each value occurs, per key: shaped (keys, values).

    One bincount per channel of a strided view measured fastest (numpy's bincount holds the
    GIL; combined channel codes cost an extra widening pass).
    """
    n_values = 1 << (8 * dtype.itemsize)
    columns = [v.reshape(-1)] if scope == "global" else [v[:, :, c].reshape(-1) for c in range(v.shape[2])]
    return np.stack([np.bincount(_from_zero(c), minlength=n_values) for c in columns])


def _from_zero(values: np.ndarray) -> np.ndarray:
    """Small-integer values as indices counted from the type's minimum (0 for unsigned types)."""
    offset = -int(np.iinfo(values.dtype).min)
    return values if offset == 0 else values.astype(np.int32) + offset


def _moments_from_counts(counts: np.ndarray, dtype: np.dtype) -> Moments:
    values = _values(dtype).astype(object)
    exact = counts.astype(object)
    s1 = (exact * values).sum(axis=1)
    s2 = (exact * (values * values)).sum(axis=1)
    seen = counts > 0
    low = [values[np.flatnonzero(row)[0]] if row.any() else 0 for row in seen]
    high = [values[np.flatnonzero(row)[-1]] if row.any() else 0 for row in seen]
    return _moments_from_sums(counts.sum(axis=1), s1, s2, low, high)


def histograms_from_counts(value_counts: np.ndarray, dtype: np.dtype, edges: np.ndarray) -> Histograms:
    """Exact histograms (numpy's binning) of integer data from its value counts."""
    bins = edges.shape[1] - 1
    counts = [np.bincount(_integer_bins(dtype, row_edges), weights=row, minlength=bins + 1)[:bins]
              for row, row_edges in zip(value_counts, edges)]
    return Histograms(np.rint(counts).astype(np.int64).reshape(len(edges), bins), edges)


def _integer_sums(v: np.ndarray, scope: str, dtype: np.dtype):
    """Exact (count, sum, sum of squares, min, max) per key, in 64-bit integers."""
    signed = dtype.kind == "i"
    wide = np.int64 if signed else np.uint64
    # Squares fit in twice the input's width: 255**2 < 2**16, 65535**2 < 2**32, 32768**2 < 2**31.
    square_type = {1: np.int16 if signed else np.uint16, 2: np.int32 if signed else np.uint32}[dtype.itemsize]
    squares = v.astype(square_type)
    squares *= squares
    s1 = keyed_reduce(np.add, v, scope, dtype=wide)
    s2 = keyed_reduce(np.add, squares, scope, dtype=wide)
    count = np.full(len(s1), _key_count(v, scope), np.int64)
    return count, s1, s2, keyed_reduce(np.minimum, v, scope), keyed_reduce(np.maximum, v, scope)


def _moments_from_sums(count, s1, s2, low, high) -> Moments:
    """Mean and M2 from exact integer sums, each rounded once (Python integers, no overflow)."""
    n = [int(c) for c in count]
    s1 = [int(x) for x in s1]
    s2 = [int(x) for x in s2]
    mean = np.array([a / c if c else np.nan for a, c in zip(s1, n)])
    m2 = np.array([(b * c - a * a) / c if c else 0.0 for a, b, c in zip(s1, s2, n)])
    return Moments(np.asarray(count, np.int64), mean, m2, np.asarray(low, np.float64),
                   np.asarray(high, np.float64), exact_sums=(s1, s2))


# -- histograms -------------------------------------------------------------
@dataclass
class Histograms:
    """Per-key histograms: counts (keys, bins) and edges (keys, bins + 1)."""

    counts: np.ndarray
    edges: np.ndarray


def histogram_edges(low, high, bins: int) -> np.ndarray:
    """numpy's edges for each key's range; a single value gets (v - 0.5, v + 0.5) as in numpy, and
    so does a range too narrow to hold `bins` distinct float64 edges (where numpy gives up)."""
    edges = np.empty((len(low), bins + 1))
    for k, (lo, hi) in enumerate(zip(low, high)):
        lo, hi = (float(lo), float(hi)) if np.isfinite(lo) and np.isfinite(hi) else (0.0, 1.0)
        try:
            edges[k] = np.histogram_bin_edges([], bins, range=(lo, hi) if lo < hi else (lo - 0.5, hi + 0.5))
        except ValueError:  # "Too many bins for data range"
            edges[k] = np.histogram_bin_edges([], bins, range=(lo - 0.5, hi + 0.5))
    return edges


def _integer_bins(dtype: np.dtype, edges: np.ndarray) -> np.ndarray:
    """For every value of a small integer type, its bin under numpy's rule (e_i <= v < e_i+1, the
    last bin closed), or `bins` for values outside: histograms become one lookup and one bincount."""
    values = _values(dtype).astype(np.float64)
    bins = len(edges) - 1
    index = np.searchsorted(edges, values, side="right") - 1
    index[values == edges[-1]] = bins - 1
    index[(values < edges[0]) | (values > edges[-1])] = bins
    return index.astype(np.intp)


# Fast float histograms. np.histogram(values, bins, range=(low, high)) runs at ~0.6-0.8 GB/s on
# float32: it casts every value to float64, filters the range, and corrects every index against
# the edges. The kernel below computes f = (v - low) * (bins / (high - low)) in float32 for
# float16/float32 data (float64 when float32 is not accurate enough, and for float64 data), takes
# idx = trunc(f), and accepts idx for every value whose fractional part f - idx lies at least
# `margin` away from 0 and from 1. The values it rejects (near an edge, outside the range, NaN,
# inf) go to np.histogram itself; numpy bins each value on its own, so the two parts add up to
# exactly np.histogram(values, bins, range=(low, high)).
#
# Why numpy puts an accepted value in bin idx too. Let t = (v - low) * bins / (high - low) be the
# exact (real) position of v in bin units: ideal edge i is at t = i. Errors are in bin units;
# u is the unit roundoff of the compute type, U = 2**-53 (float64's), first order in u and U.
#  * kernel: f = (v - L) * s, L = low and s = bins / (high - low) rounded to the compute type.
#    Roundings: high - low and the quotient (float64), s to the compute type, the subtraction and
#    the product: f = (t + c) (1 + eta), |eta| <= 3u + 2U, |c| = |low - L| * bins / (high - low)
#    (0 when low is exact in the compute type). For f <= bins: |f - t| <= e_fast = 1.01 (bins eta + |c|).
#  * numpy's float index, fl(fl(fl(v - low) / fl(high - low)) * bins) in float64, is t (1 + theta)
#    with |theta| <= 4U: within e_np = 4.01 U bins of t for the values it keeps (0 <= t <= bins).
#  * numpy's edges, linspace: edge i = fl(fl(i * fl(fl(high - low) / bins)) + low), off the ideal
#    by <= 3.01 U (high - low) + 1.01 U max(|low|, |high|), i.e. by
#    e_edge = bins (3.01 U + 1.01 U max(|low|, |high|) / (high - low)).
# An accepted value has idx + margin <= f <= idx + 1 - margin with 0 <= idx < bins (f - trunc(f) is
# exact by Sterbenz's lemma, and f was capped at bins, where it would be rejected), so t lies in
# [idx + margin - e_fast, idx + 1 - margin + e_fast]. With margin > e_fast + max(e_np, e_edge):
# 0 < t < bins, so low < v < high and numpy keeps v; numpy's float index is strictly inside
# (idx, idx + 1), so its trunc is idx; edge idx is below v and edge idx + 1 above it, so neither of
# numpy's +-1 corrections fires (idx is also searchsorted(edges, v, "right") - 1). The margin used,
# 2 (e_fast + e_np + e_edge), leaves a factor 2. It grows with bins and with max(|low|, |high|) /
# (high - low) (a large offset with a narrow range); past _HIST_MAX_MARGIN np.histogram does it all.
_HIST_BLOCK = 1 << 18  # values per block: few enough numpy calls that threads rarely wait on the GIL
_HIST_MAX_MARGIN = 0.05  # wider margins reject too many values for the kernel to pay
_HIST_GIVE_UP = 0.25  # a first block with more rejected than this (data on the edges): np.histogram
_HIST_PROBE = 1 << 13  # the first block's size: giving up costs little
_HIST_MIN_SIZE = 4096  # fewer values: np.histogram is as fast
_HIST_PAIRS = 1 << 15  # (bins + 1) ** 2 up to this: count pairs of indices (half as many in bincount)
_HIST_U = 2.0 ** -53
_hist_plans: dict = {}


def _hist_plan(low, high, bins: int, dtype: np.dtype):
    """The kernel's (compute type, L, s, lowest accepted fraction, highest) for one range, or None."""
    key = (float(low), float(high), int(bins), dtype)
    plan = _hist_plans.get(key, False)
    if plan is False:
        if len(_hist_plans) > 4096:
            _hist_plans.clear()
        plan = _hist_plans[key] = _make_hist_plan(*key)
    return plan


def _make_hist_plan(low: float, high: float, bins: int, dtype: np.dtype):
    if dtype.type not in (np.float16, np.float32, np.float64) or bins < 1:
        return None
    if not (np.isfinite(low) and np.isfinite(high) and low < high and np.isfinite(high - low)):
        return None
    width = high - low
    scale = bins / width
    e_np = 4.01 * _HIST_U * bins
    e_edge = bins * (3.01 * _HIST_U + 1.01 * _HIST_U * max(abs(low), abs(high)) / width)
    for ctype in (np.float32, np.float64) if dtype.itemsize < 8 else (np.float64,):
        info = np.finfo(ctype)
        with np.errstate(over="ignore"):
            L, s = ctype(low), ctype(scale)
        if not (np.isfinite(L) and info.tiny <= s < info.max):
            continue
        c = abs(low - float(L)) * scale
        eta = 3 * float(info.eps) / 2 + 2 * _HIST_U
        e_fast = 1.01 * (bins * eta + c)
        margin = 2 * (e_fast + e_np + e_edge)
        if margin <= _HIST_MAX_MARGIN:
            return ctype, L, s, _round_to(ctype, margin, up=True), _round_to(ctype, 1 - margin, up=False)
    return None


def _round_to(ctype, x: float, *, up: bool):
    """x in `ctype`, rounded up (or down) so that the accepted fractions only shrink."""
    r = ctype(x)
    if (float(r) < x) if up else (float(r) > x):
        r = np.nextafter(r, ctype(np.inf if up else -np.inf))
    return r


def _hist_blocks(values: np.ndarray, size: int, first: int):
    """Views that cover each value once: a first of about `first` values, then about `size` each.
    Counts do not depend on the order, so the axes are put in memory order first: most arrays then
    become one flat view."""
    x = values.transpose(np.argsort([-abs(st) for st in values.strides], kind="stable"))
    if x.flags.c_contiguous:
        x = x.reshape(-1)
    return _split_blocks(x, size, first)


def _split_blocks(x: np.ndarray, size: int, first: int):
    if x.size <= first:
        if x.size:
            yield x
        return
    if x.ndim == 1:
        yield x[:first]
        for i in range(first, len(x), size):
            yield x[i:i + size]
        return
    row = x[0].size
    if row >= first:
        yield from _split_blocks(x[0], size, first)
        x, k = x[1:], 0
    else:
        k = first // row
        yield x[:k]
    if row > size:
        for r in x[k:]:
            yield from _split_blocks(r, size, size)
    else:
        step = size // row
        for i in range(k, len(x), step):
            yield x[i:i + step]


def _float_histogram(values: np.ndarray, low, high, bins: int) -> np.ndarray:
    """np.histogram(values, bins, range=(low, high))[0], exactly; several times faster on float data
    (see the comment above)."""
    # numpy bins in result_type(low, high, values): float64 here (numpy >= 2, float64 range ends),
    # which the argument above assumes; anything else is left to numpy.
    plan = None
    if values.size >= _HIST_MIN_SIZE and np.result_type(low, high, values.dtype) == np.float64:
        plan = _hist_plan(low, high, bins, values.dtype)
    if plan is None:
        return np.histogram(values, bins, range=(low, high))[0]
    ctype, L, s, lo, hi = plan
    size = min(values.size, _HIST_BLOCK)
    f, whole, index = np.empty(size, ctype), np.empty(size, ctype), np.empty(size, np.intp)
    flags = index.view(bool)  # 8 bytes a value: room for two masks, used up before `index` is
    b1 = bins + 1
    counts = np.zeros(b1, np.int64)
    pairs = np.zeros(b1 * b1, np.int64) if b1 * b1 <= _HIST_PAIRS else None
    rejected = []
    first = True
    with np.errstate(over="ignore", invalid="ignore"):
        for block in _hist_blocks(values, _HIST_BLOCK, _HIST_PROBE):
            n = block.size
            fb, wb, ib, ok, inside = f[:n], whole[:n], index[:n], flags[:n], flags[n:2 * n]
            np.subtract(block, L, out=fb.reshape(block.shape))
            fb *= s
            np.minimum(fb, bins, out=fb)  # at or past the last edge: fraction 0, rejected
            np.trunc(fb, out=wb)
            fb -= wb  # the fraction, exact; <= 0 below the range, NaN for NaN and -inf
            np.greater_equal(fb, lo, out=ok)
            np.less_equal(fb, hi, out=inside)
            ok &= inside
            if not ok.all():
                bad = np.flatnonzero(np.logical_not(ok, out=inside))
                if first and len(bad) > _HIST_GIVE_UP * n:
                    return np.histogram(values, bins, range=(low, high))[0]
                rejected.append(block[np.unravel_index(bad, block.shape)] if block.ndim > 1 else block[bad])
                wb[bad] = bins  # the spare slot, dropped at the end
            first = False
            # wb holds whole numbers in [0, bins]: the casts and the pair codes below are exact.
            if pairs is None:
                np.copyto(ib, wb, casting="unsafe")
                counts += np.bincount(ib, minlength=b1)
            else:
                h = n // 2
                codes = wb[:h]
                codes *= b1
                codes += wb[h:2 * h]
                np.copyto(ib[:h], codes, casting="unsafe")
                pairs += np.bincount(ib[:h], minlength=b1 * b1)
                if n % 2:
                    counts[int(wb[n - 1])] += 1
    if pairs is not None:
        pairs = pairs.reshape(b1, b1)
        counts += pairs.sum(axis=0) + pairs.sum(axis=1)
    result = counts[:bins]
    if rejected:
        result += np.histogram(np.concatenate(rejected), bins, range=(low, high))[0]
    return result


class HistogramAccumulator:
    """Histograms per key over fixed edges, with numpy's semantics: values outside the range are
    left out, unless `clamp` puts them in the end bins (for a range predicted up to rounding)."""

    def __init__(self, scope: str, layout: Layout, edges: np.ndarray, *, clamp: bool = False):
        self.scope = scope
        self.layout = layout
        self.edges = edges
        self.clamp = clamp
        self.counts = np.zeros((edges.shape[0], edges.shape[1] - 1), np.int64)

    def measure(self, chunk: np.ndarray, start: int = 0) -> np.ndarray:
        v = self.layout.npc(chunk)
        bins = self.edges.shape[1] - 1
        if self.scope == "global" or self.scope == "pixel":
            groups = [v]
        elif self.scope == "channel":
            groups = [v[:, :, c] for c in range(v.shape[2])]
        else:
            groups = list(v)
        rows = range(start, start + len(groups)) if self.scope == "sample" else range(len(groups))
        counts = []
        for k, values in zip(rows, groups):
            low, high = self.edges[k, 0], self.edges[k, -1]
            if values.dtype.type in EXACT_DTYPES and not self.clamp:
                codes = np.take(_integer_bins(values.dtype, self.edges[k]), _from_zero(values.reshape(-1)))
                counts.append(np.bincount(codes, minlength=bins + 1)[:bins])
                continue
            if self.clamp:
                values = np.clip(values, low, high)
            counts.append(_float_histogram(values, low, high, bins))
        return np.stack(counts)

    def add(self, partial: np.ndarray, start: int = 0) -> None:
        if self.scope == "sample":
            self.counts[start:start + len(partial)] += partial
        else:
            self.counts += partial

    def result(self) -> Histograms:
        return Histograms(self.counts, self.edges)
