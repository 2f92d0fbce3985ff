"""Streaming, mergeable statistics: count, mean, M2, min, max per scope key, and histograms.

Float data: each chunk is measured in float64 as deviations from a fixed shift (a value
of the data), two-pass within the chunk, and chunks are merged with Chan et al.'s
pairwise update of (count, mean, M2). Working on deviations keeps a large offset
(1e9 + noise) from cancelling away the variance.

Small integers (uint8, uint16, int8, int16): exact. `global` and `channel` keep a count
of every value (which also gives exact histograms); `sample` and `pixel` keep integer
sums of values and squares. Mean and M2 are then one rounding away from the truth.

Each accumulator has a pure `measure(chunk)` (safe to run on several threads) and an
`add(partial)` that merges the results in order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from normcli.errors import NonFiniteError
from normcli.layout import Layout

SCOPES = ("global", "channel", "sample", "pixel")
# Axes of the (samples, positions, channels) view that each scope reduces.
_REDUCE = {"global": (0, 1, 2), "channel": (0, 1), "sample": (1, 2), "pixel": (0,)}
EXACT_DTYPES = (np.uint8, np.uint16, np.int8, np.int16, np.bool_)


@dataclass
class Moments:
    """Per-key statistics, each a float64 array over the scope's keys (count: int64)."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray

    def var(self, ddof: int = 0) -> np.ndarray:
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


class MomentAccumulator:
    """count/mean/M2/min/max for every key of one scope, over chunks of samples."""

    def __init__(self, scope: str, layout: Layout, dtype, sample_shape, *, ignore_nan: bool = False):
        self.scope = scope
        self.layout = layout
        self.dtype = np.dtype(dtype)
        self.sample_shape = sample_shape
        self.ignore_nan = ignore_nan
        self.exact = self.dtype.type in EXACT_DTYPES
        self.by_value = self.exact and scope in ("global", "channel")
        self.nonfinite = NonFinite()
        self.shift: np.ndarray | None = None
        self._parts: list = []  # sample scope: per-chunk results, in order
        self._state = None

    # -- float path -------------------------------------------------------
    def _shift_from(self, v: np.ndarray) -> np.ndarray:
        """Each key's mean over `v` (any value near the data works; a mean is always near)."""
        axes = _REDUCE[self.scope]
        finite = np.isfinite(v)
        with np.errstate(invalid="ignore", divide="ignore"):
            total = np.where(finite, v, 0).sum(axis=axes, dtype=np.float64)
            shift = total / np.maximum(finite.sum(axis=axes), 1)
        return np.where(np.isfinite(shift), shift, 0.0).reshape(-1)

    def measure(self, chunk: np.ndarray, start: int = 0):
        """The statistics of one chunk (pure; safe on several threads)."""
        v = self.layout.npc(chunk)
        if self.by_value:
            return _value_counts(v, self.scope, self.dtype)
        if self.exact:
            return _integer_sums(v, self.scope, self.dtype)
        return self._measure_float(v, start)

    def _measure_float(self, v: np.ndarray, start: int):
        axes = _REDUCE[self.scope]
        if self.scope == "sample":
            shift = np.nan_to_num(v[:, :1, :1].astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        else:
            if self.shift is None:  # the first chunk, measured alone before the others start
                self.shift = self._shift_from(v)
            shift = broadcast_keys(self.shift, self.scope, v.shape)
        y = np.subtract(v, shift, dtype=np.float64)
        total = y.sum(axis=axes, keepdims=True)
        count = np.full(total.shape, np.prod([v.shape[a] for a in axes]), dtype=np.int64)
        nonfinite = NonFinite()
        if not np.isfinite(total).all():
            finite = np.isfinite(v)
            nonfinite = _count_nonfinite(v, finite, start)
            if not self.ignore_nan:
                return None, nonfinite
            return self._measure_masked(v, y, finite, shift, axes), nonfinite
        mean_dev = total / count
        y -= mean_dev
        np.square(y, out=y)
        m2 = y.sum(axis=axes)
        result = (count.reshape(-1), (mean_dev + shift).reshape(-1) if self.scope == "sample"
                  else mean_dev.reshape(-1), m2.reshape(-1),
                  v.min(axis=axes).reshape(-1).astype(np.float64),
                  v.max(axis=axes).reshape(-1).astype(np.float64))
        return result, nonfinite

    def _measure_masked(self, v, y, finite, shift, axes):
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
        mean = (mean_dev + shift) if self.scope == "sample" else mean_dev
        return (count.reshape(-1), mean.reshape(-1), m2.reshape(-1), low.reshape(-1), high.reshape(-1))

    # -- merging ----------------------------------------------------------
    def add(self, partial) -> None:
        """Merge one chunk's statistics (in chunk order)."""
        if self.by_value or self.exact:
            if self.scope == "sample":
                self._parts.append(partial)
            elif self._state is None:
                self._state = partial
            else:
                self._state = _add_exact(self._state, partial, self.by_value)
            return
        result, nonfinite = partial
        if nonfinite.total:
            self.nonfinite.add(nonfinite)
        if result is None:
            return
        if self.scope == "sample":
            self._parts.append(result)
        elif self._state is None:
            self._state = result
        else:
            n_a, m_a, s_a, lo_a, hi_a = self._state
            n_b, m_b, s_b, lo_b, hi_b = result
            n, m, s = chan_merge(n_a, m_a, s_a, n_b, m_b, s_b)
            self._state = (n, m, s, np.fmin(lo_a, lo_b), np.fmax(hi_a, hi_b))

    def check_finite(self, locate) -> None:
        """Raise the one-line NaN/inf error, naming the first offending sample via `locate(index)`."""
        if self.nonfinite.total and not self.ignore_nan:
            raise nonfinite_error(self.nonfinite, locate)

    def result(self) -> Moments:
        if self.exact:
            return self._exact_result()
        if self.scope == "sample":
            if not self._parts:
                return Moments.empty(0)
            return Moments(*(np.concatenate(cols) for cols in zip(*self._parts)))
        if self._state is None:
            keys = scope_keys(self.scope, self.layout, self.sample_shape, 0)
            return Moments.empty(keys)
        count, mean_dev, m2, low, high = self._state
        with np.errstate(invalid="ignore"):
            mean = np.where(count > 0, mean_dev + self.shift, np.nan)
        return Moments(count, mean, m2, low, high)

    def _exact_result(self) -> Moments:
        if self.by_value:
            return _moments_from_counts(self._state, self.dtype)
        states = self._parts if self.scope == "sample" else [self._state]
        states = [s for s in states if s is not None]
        if not states:
            return Moments.empty(0)
        columns = [np.concatenate(cols) for cols in zip(*states)] if len(states) > 1 else states[0]
        count, s1, s2, low, high = columns
        return _moments_from_sums(count, s1, s2, low, high)

    @property
    def value_counts(self) -> np.ndarray | None:
        """For exact global/channel scopes: counts of every value, shaped (keys, values)."""
        return self._state if self.by_value else None


def nonfinite_error(found: NonFinite, locate) -> NonFiniteError:
    kinds = [f"{n} {label}" for n, label in ((found.nan, "NaN"), (found.posinf, "+inf"), (found.neginf, "-inf"))
             if n]
    source, name = locate(found.first)
    where = f"first in sample {found.first}" + (f" ({name})" if isinstance(name, str) else "")
    return NonFiniteError(
        f"the input holds {' and '.join(kinds)} values, {where}; use --ignore-nan to leave them out", source)


def _count_nonfinite(v: np.ndarray, finite: np.ndarray, start: int) -> NonFinite:
    bad_samples = np.flatnonzero(~finite.reshape(len(v), -1).all(axis=1))
    nan = int(np.isnan(v).sum())
    posinf = int(np.isposinf(v).sum())
    neginf = int(np.isneginf(v).sum())
    return NonFinite(nan, posinf, neginf, start + int(bad_samples[0]) if len(bad_samples) else None)


# -- exact integer path -----------------------------------------------------
def _offset(dtype: np.dtype) -> int:
    """What to add to a value to index it from zero (signed types start at their minimum)."""
    return -int(np.iinfo(dtype).min) if dtype.kind == "i" else 0


def _n_values(dtype: np.dtype) -> int:
    return 2 if dtype == np.bool_ else 1 << (8 * dtype.itemsize)


def _value_counts(v: np.ndarray, scope: str, dtype: np.dtype) -> np.ndarray:
    """Counts of every value per key, shaped (keys, values)."""
    n_values = _n_values(dtype)
    channels = v.shape[2] if scope == "channel" else 1
    if channels == 1 and dtype.kind == "u":
        return np.bincount(v.reshape(-1), minlength=n_values).reshape(1, n_values)
    # One code per (channel, value), counted in a single bincount.
    codes = v.astype(np.int32) + (_offset(dtype) + np.arange(channels, dtype=np.int32) * n_values)
    return np.bincount(codes.reshape(-1), minlength=channels * n_values).reshape(channels, n_values)


def _integer_sums(v: np.ndarray, scope: str, dtype: np.dtype):
    """Exact (count, sum, sum of squares, min, max) per key for the sample and pixel scopes."""
    axes = _REDUCE[scope]
    wide = np.int64 if dtype.kind == "i" else np.uint64
    count = np.full(v.shape[0] if scope == "sample" else v.shape[1] * v.shape[2],
                    np.prod([v.shape[a] for a in axes]), dtype=np.int64)
    s1 = v.sum(axis=axes, dtype=wide).reshape(-1)
    # uint8 squares fit in uint16 (255**2 < 2**16); wider types square in 64 bits.
    squares = v.astype(np.uint16 if dtype in (np.uint8, np.bool_) else wide)
    squares *= squares
    s2 = squares.sum(axis=axes, dtype=np.uint64).reshape(-1)
    return count, s1, s2, v.min(axis=axes).reshape(-1), v.max(axis=axes).reshape(-1)


def _add_exact(a, b, by_value: bool):
    if by_value:
        return a + b
    count, s1, s2, low, high = a
    return (count + b[0], s1 + b[1], s2 + b[2], np.minimum(low, b[3]), np.maximum(high, b[4]))


def _moments_from_sums(count, s1, s2, low, high) -> Moments:
    """Mean and M2 from exact integer sums, each rounded once (Python integers, no overflow)."""
    n = [int(c) for c in count]
    s1 = [int(x) for x in s1]
    s2 = [int(x) for x in s2]
    mean = np.array([a / c if c else np.nan for a, c in zip(s1, n)])
    m2 = np.array([(b * c - a * a) / c if c else 0.0 for a, b, c in zip(s1, s2, n)])
    return Moments(np.asarray(count, np.int64), mean, m2, np.asarray(low, np.float64),
                   np.asarray(high, np.float64))


def _moments_from_counts(counts: np.ndarray, dtype: np.dtype) -> Moments:
    values = np.arange(counts.shape[1]) - _offset(dtype)
    n = counts.sum(axis=1)
    s1 = [sum(int(c) * int(x) for x, c in zip(values[row > 0], row[row > 0])) for row in counts]
    s2 = [sum(int(c) * int(x) * int(x) for x, c in zip(values[row > 0], row[row > 0])) for row in counts]
    low = np.array([values[np.flatnonzero(row)[0]] if row.any() else np.inf for row in counts], np.float64)
    high = np.array([values[np.flatnonzero(row)[-1]] if row.any() else -np.inf for row in counts], np.float64)
    return _moments_from_sums(n, s1, s2, low, high)


# -- histograms -------------------------------------------------------------
@dataclass
class Histograms:
    """Per-key histograms: counts (keys, bins) and edges (keys, bins + 1)."""

    counts: np.ndarray
    edges: np.ndarray


def histogram_edges(low, high, bins: int) -> np.ndarray:
    """numpy's edges for each key's range; a single value gets (v - 0.5, v + 0.5) as in numpy."""
    edges = np.empty((len(low), bins + 1))
    for k, (lo, hi) in enumerate(zip(low, high)):
        if not (np.isfinite(lo) and np.isfinite(hi)):
            lo, hi = 0.0, 1.0
        edges[k] = np.histogram_bin_edges([], bins, range=(float(lo), float(hi)) if lo < hi else (lo - 0.5, hi + 0.5))
    return edges


def histograms_from_counts(value_counts: np.ndarray, dtype: np.dtype, edges: np.ndarray) -> Histograms:
    """Exact histograms of integer data from its value counts."""
    values = np.arange(value_counts.shape[1]) - _offset(dtype)
    bins = edges.shape[1] - 1
    counts = np.stack([
        np.histogram(values, bins, range=(e[0], e[-1]), weights=row.astype(np.float64))[0]
        for row, e in zip(value_counts, edges)]).astype(np.int64)
    return Histograms(counts, edges)


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
            if self.clamp:
                values = np.clip(values, low, high)
            counts.append(np.histogram(values, bins, range=(low, high))[0])
        return np.stack(counts)

    def add(self, partial: np.ndarray, start: int = 0) -> None:
        if self.scope == "sample":
            self.counts[start:start + len(partial)] += partial
        else:
            self.counts += partial

    def result(self) -> Histograms:
        return Histograms(self.counts, self.edges)
