"""Pure, mergeable statistics of blocks of samples: count, mean, M2, min, max per scope key.

A block's statistics are a small frozen value computed by `measure_block` from the block alone,
and two values merge with an associative `merge`, so any grouping of blocks (threads,
processes, a cluster, saved shards) gives the same numbers. This is the chunk / combine /
aggregate shape of dask's reductions:

- float data (FloatMoments): each block measures deviations from its own shift, a value near
  each key's data (the mean of a small probe of the block), so a large offset (1e9 + noise)
  never cancels the variance away. Blocks merge by Chan, Golub & LeVeque's pairwise update of
  (count, mean, M2), after moving one side's mean onto the other's shift: the shifts are both
  near the data, so their difference is exact or nearly so.
- integers (IntegerSums): exact sums of values and of squares, as Python integers across
  blocks; mean and variance are then rounded once. 8/16-bit values at scopes with few keys
  (ValueCounts): how often each value occurs, which also gives exact histograms of any binning.
- NaN and inf (NonFinite): counted, with the lowest offending sample index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import reduce

import numpy as np

from normcli.compiled import kernel
from normcli.errors import InputError, NonFiniteError
from normcli.histograms import SMALL_INTEGERS, all_values, value_counts
from normcli.layout import Layout
from normcli.scopes import Scope
from normcli.scratch import scratch, slice_rows


@dataclass
class Moments:
    """A dataset's per-key statistics (the aggregate): float64 arrays over the scope's keys
    (count int64; min and max whole numbers for integer data: see whole_numbers)."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray
    # The mergeable value they came from (FloatMoments: the shift and the mean around it;
    # IntegerSums: exact sums), so that merges and saved files lose nothing; None for a file saved
    # without it, which then merges by Chan et al. on its rounded means.
    source: "FloatMoments | IntegerSums | None" = field(default=None, repr=False, compare=False)

    def var(self, ddof: int = 0) -> np.ndarray:
        if isinstance(self.source, IntegerSums):
            return np.array([(b * c - a * a) / (c * (c - ddof)) if c > ddof else np.nan
                             for a, b, c in zip(*self.source.exact())], np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.count > ddof, self.m2 / np.maximum(self.count - ddof, 1), np.nan)

    def std(self, ddof: int = 0) -> np.ndarray:
        return np.sqrt(self.var(ddof))

    def centre(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Each key's mean as (shift, whole): for integer data `whole` holds the mean's integer part
        exactly (Python ints) and `shift` the rest, in [0, 1); otherwise the float64 mean (0 for a
        key without values) and None."""
        if isinstance(self.source, IntegerSums):
            s1, _, n = self.source.exact()
            whole = [a // c if c else 0 for a, c in zip(s1, n)]
            rest = np.array([(a - w * c) / c if c else 0.0 for a, w, c in zip(s1, whole, n)], np.float64)
            return rest, python_ints(whole, len(whole))
        return np.where(np.isfinite(self.mean), self.mean, 0.0), None

    def __len__(self) -> int:
        return len(self.count)

    @classmethod
    def empty(cls, keys: int) -> "Moments":
        return cls(np.zeros(keys, np.int64), np.full(keys, np.nan), np.zeros(keys),
                   np.full(keys, np.inf), np.full(keys, -np.inf))

    def merge(self, other: "Moments") -> "Moments":
        """Both sets of statistics as one: exactly as one run where both keep their source (saved
        files that hold it), else by Chan et al. on the stored means (files saved before that)."""
        if type(self.source) is type(other.source) and self.source is not None:
            return self.source.merge(other.source).aggregate()
        count, mean, m2 = chan_merge(self.count, np.nan_to_num(self.mean), self.m2,
                                     other.count, np.nan_to_num(other.mean), other.m2)
        with np.errstate(invalid="ignore"):
            mean = np.where(count > 0, mean, np.nan)
        return Moments(count, mean, m2, extreme(np.fmin, self.min, other.min),
                       extreme(np.fmax, self.max, other.max))


def whole_numbers(values) -> np.ndarray:
    """Integers (Python ints, or integer arrays of any dtype) as one array that holds them all
    exactly: int64 when they fit, else uint64, else Python ints (an object array)."""
    values = [int(v) for v in np.asarray(values, dtype=object).reshape(-1)]
    for dtype in (np.int64, np.uint64):
        info = np.iinfo(dtype)
        if all(info.min <= v <= info.max for v in values):
            return np.array(values, dtype)
    return python_ints(values, len(values))


def extreme(ufunc, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The per-key minimum or maximum (`ufunc` np.fmin or np.fmax) of two arrays: integers of
    different dtypes (int64 and uint64) compared exactly, where numpy would round both to float64."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind in "iuO" and b.dtype.kind in "iuO" and a.dtype != b.dtype:
        pick = min if ufunc is np.fmin else max
        return whole_numbers([pick(int(x), int(y)) for x, y in zip(a, b)])
    return ufunc(a, b)


def chan_merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Pairwise merge of (count, mean, M2) (Chan, Golub & LeVeque 1979); keys with no values keep
    the other side. All arguments are arrays over the keys; returns (count, mean, M2)."""
    n = n_a + n_b
    with np.errstate(invalid="ignore", divide="ignore"):
        weight_b = np.where(n > 0, n_b / np.maximum(n, 1), 0.0)
        delta = np.where((n_a > 0) & (n_b > 0), mean_b - mean_a, 0.0)
        mean = np.where(n_a > 0, mean_a + delta * weight_b, mean_b)
        m2 = m2_a + m2_b + delta * delta * n_a * weight_b
    return n, mean, m2


# -- the block values ---------------------------------------------------------------
@dataclass(frozen=True)
class NonFinite:
    """How many NaN and infinite values a block held, and the lowest sample index holding one."""

    nan: int = 0
    posinf: int = 0
    neginf: int = 0
    first: int | None = None

    @property
    def total(self) -> int:
        return self.nan + self.posinf + self.neginf

    def merge(self, other: "NonFinite") -> "NonFinite":
        firsts = [f for f in (self.first, other.first) if f is not None]
        return NonFinite(self.nan + other.nan, self.posinf + other.posinf, self.neginf + other.neginf,
                         min(firsts) if firsts else None)


@dataclass(frozen=True)
class FloatMoments:
    """Per-key count, mean - shift, M2, min and max of float data, each shaped (keys,)."""

    count: np.ndarray
    shift: np.ndarray
    mean: np.ndarray  # relative to `shift`
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray

    def merge(self, other: "FloatMoments") -> "FloatMoments":
        shift = np.where(self.count > 0, self.shift, other.shift)
        with np.errstate(invalid="ignore", over="ignore"):
            # other's mean, relative to this side's shift: shifts near the same data differ exactly
            moved = np.where(other.count > 0, (other.shift - shift) + other.mean, 0.0)
        count, mean, m2 = chan_merge(self.count, self.mean, self.m2, other.count, moved, other.m2)
        return FloatMoments(count, shift, mean, m2, np.fmin(self.min, other.min), np.fmax(self.max, other.max))

    def aggregate(self) -> Moments:
        with np.errstate(invalid="ignore"):  # a key with no (finite) values has no mean, as np.nanmean
            mean = np.where(self.count > 0, self.shift + self.mean, np.nan)
        return Moments(self.count, mean, self.m2, self.min, self.max, source=self)


@dataclass(frozen=True)
class IntegerSums:
    """Per-key count, exact sum and sum of squares (object arrays of Python ints), min and max."""

    count: np.ndarray
    s1: np.ndarray
    s2: np.ndarray
    min: np.ndarray
    max: np.ndarray

    def merge(self, other: "IntegerSums") -> "IntegerSums":
        return IntegerSums(self.count + other.count, self.s1 + other.s1, self.s2 + other.s2,
                           extreme(np.fmin, self.min, other.min), extreme(np.fmax, self.max, other.max))

    def exact(self) -> tuple[list, list, list]:
        """(sums, sums of squares, counts) per key, as Python ints."""
        return [int(x) for x in self.s1], [int(x) for x in self.s2], [int(c) for c in self.count]

    def aggregate(self) -> Moments:
        """Mean and M2 from the exact sums, each rounded once (Python integers, no overflow)."""
        s1, s2, n = self.exact()
        mean = np.array([a / c if c else np.nan for a, c in zip(s1, n)], np.float64)
        m2 = np.array([(b * c - a * a) / c if c else 0.0 for a, b, c in zip(s1, s2, n)], np.float64)
        return Moments(np.asarray(self.count, np.int64), mean, m2, self.min, self.max, source=self)


@dataclass(frozen=True)
class ValueCounts:
    """How often each value of a small integer type occurs, per key: counts shaped (keys, values)."""

    counts: np.ndarray
    dtype: np.dtype

    def merge(self, other: "ValueCounts") -> "ValueCounts":
        return ValueCounts(self.counts + other.counts, self.dtype)

    def aggregate(self) -> Moments:
        values = all_values(self.dtype).astype(object)
        exact = self.counts.astype(object)
        s1 = (exact * values).sum(axis=1)
        s2 = (exact * (values * values)).sum(axis=1)
        seen = self.counts > 0
        low = [values[np.flatnonzero(row)[0]] if row.any() else 0 for row in seen]
        high = [values[np.flatnonzero(row)[-1]] if row.any() else 0 for row in seen]
        keys = len(self.counts)
        return IntegerSums(self.counts.sum(axis=1).astype(np.int64), python_ints(s1, keys),
                           python_ints(s2, keys), np.array(low, self.dtype), np.array(high, self.dtype)).aggregate()


def _concat(a, b):
    """Per-key values of consecutive samples' keys (FloatMoments or IntegerSums), `a`'s first."""
    return type(a)(*(np.concatenate([getattr(a, name), getattr(b, name)]) for name in a.__dataclass_fields__))


@dataclass(frozen=True)
class BlockStats:
    """One block's statistics at one scope (or several blocks', merged).

    `moments` is None when the block held NaN or inf that are not being ignored (the run then
    fails, naming the first). Per-sample scopes cover keys `first_key`..; others every key.
    """

    moments: FloatMoments | IntegerSums | ValueCounts | None
    nonfinite: NonFinite = NonFinite()
    first_key: int = 0
    keys: int = 0
    per_sample: bool = False

    def aggregate(self) -> Moments:
        return self.moments.aggregate()

    @property
    def value_counts(self) -> np.ndarray | None:
        """Counts of every value per key, where this scope keeps them (small integers)."""
        return self.moments.counts if isinstance(self.moments, ValueCounts) else None


def merge(a: BlockStats, b: BlockStats) -> BlockStats:
    """The statistics of both blocks' samples (associative; per-sample blocks must be neighbours)."""
    nonfinite = a.nonfinite.merge(b.nonfinite)
    if a.per_sample:
        a, b = (a, b) if a.first_key < b.first_key else (b, a)
        if a.first_key + a.keys != b.first_key:
            raise ValueError("per-sample statistics merge only with their neighbours")
        moments = None if a.moments is None or b.moments is None else _concat(a.moments, b.moments)
        return BlockStats(moments, nonfinite, a.first_key, a.keys + b.keys, True)
    moments = None if a.moments is None or b.moments is None else a.moments.merge(b.moments)
    return BlockStats(moments, nonfinite, 0, a.keys, False)


def keeps_value_counts(dtype, scope: Scope) -> bool:
    """Whether a scope counts every value: small integers at scopes that reduce over positions
    (few keys), which gives exact moments and exact histograms of any binning from one pass."""
    return np.dtype(dtype).type in SMALL_INTEGERS and not scope.per_sample and not scope.by_position


# -- measuring one block ------------------------------------------------------------
def keyed_reduce(ufunc, a: np.ndarray, scope: Scope, dtype=None) -> np.ndarray:
    """ufunc.reduce of a (samples, positions, channels) array over the scope's axes, one value per key.

    numpy reduces the leading axes of an (M, 3) array one short row at a time, slowly; viewed as
    (M / L, L * 3) rows of a few thousand values (Scope.pieces) the same reduction runs at memory
    speed, and the L partial results fold into 3 at the end (benchmarks/PROFILE.md).
    """
    if scope.single_key:
        return np.atleast_1d(ufunc.reduce(a.reshape(-1) if a.flags.c_contiguous else a, axis=None, dtype=dtype))
    pieces = [piece for (piece,), () in scope.pieces((a,), ())]
    if not pieces or pieces[0].ndim == 3:  # any other scope (one piece, the array as it is), or no values
        return ufunc.reduce(a, axis=scope.reduced, dtype=dtype).reshape(-1)
    # rows of channels, or of values repeating them: reduced down the rows, folded onto the channels
    return reduce(ufunc, [ufunc.reduce(ufunc.reduce(piece, axis=0, dtype=dtype).reshape(-1, a.shape[2]), axis=0)
                          for piece in pieces])


def measure_block(data: np.ndarray, scope: Scope, layout: Layout, *, first_sample: int = 0,
                  ignore_nan: bool = False) -> BlockStats:
    """The statistics of one block of samples, `data` shaped (n, *sample_shape), whose first sample
    is sample `first_sample` of the dataset (pure: safe on any thread, process or worker)."""
    v = layout.npc(data)
    keys = scope.keys_of(v.shape)
    first_key = first_sample if scope.per_sample else 0
    if keeps_value_counts(v.dtype, scope):
        return from_value_counts(value_counts(v, 1 if scope.single_key else v.shape[2]), v.dtype, scope)
    if v.dtype.kind in "uib":
        return BlockStats(_integer_sums(v, scope), NonFinite(), first_key, keys, scope.per_sample)
    moments, nonfinite = _float_moments(v, scope, first_sample, ignore_nan)
    return BlockStats(moments, nonfinite, first_key, keys, scope.per_sample)


def _probe_shift(v: np.ndarray, scope: Scope) -> np.ndarray:
    """Each key's mean over a small corner of the block (at most 8 samples and 256 positions),
    0 where it holds no finite value: near the data, which is all a shift needs."""
    corner = v[tuple(slice(0, limit) if axis in scope.reduced else slice(None)
                     for axis, limit in enumerate((8, 256, None)))]
    with np.errstate(over="ignore", invalid="ignore"):  # inf - inf, or float64 values past 1e308: see below
        total = corner.sum(axis=scope.reduced, dtype=np.float64)
    if np.isfinite(total).all():  # the common case: every value of the corner finite
        return (total / scope.values_per_key(corner.shape)).reshape(-1)
    finite = np.isfinite(corner)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        total = np.where(finite, corner, 0).sum(axis=scope.reduced, dtype=np.float64)
        shift = total / np.maximum(finite.sum(axis=scope.reduced), 1)
    return np.where(np.isfinite(shift), shift, 0.0).reshape(-1)


def _float_moments(v: np.ndarray, scope: Scope, first_sample: int, ignore_nan: bool):
    count = scope.values_per_key(v.shape)
    shift = _probe_shift(v, scope)
    with np.errstate(invalid="ignore", over="ignore"):  # +inf and -inf in one key sum to NaN: counted below
        total, squares, low, high = _shifted_sums(v, scope, shift)
        if not (np.isfinite(total).all() and np.isfinite(squares).all()):
            return _nonfinite_moments(v, scope, shift, first_sample, ignore_nan)
        mean_dev = total / count
        m2 = squares - total * mean_dev
        # Sums of squares about the shift cancel when the shift is far from the block's values
        # (an outlier in the probe): then those keys measure the deviations from their own mean. Only
        # those: a key's numbers must not depend on which other keys share its block.
        # The new centre is rounded (by 1.2e-7 at 1e9): its own sum of deviations takes that back out,
        # from M2 and from the mean (whose sum about the far shift lost as much as M2's).
        far = total * mean_dev > 0.5 * squares
        if far.any():
            centre = shift + mean_dev
            near_total, near_squares = _shifted_sums(v, scope, centre, extremes=False)
            m2 = np.where(far, near_squares - near_total * (near_total / count), m2)
            mean_dev = np.where(far, (centre - shift) + near_total / count, mean_dev)
    return FloatMoments(np.full(len(total), count, np.int64), shift, mean_dev, m2, low.astype(np.float64),
                        high.astype(np.float64)), NonFinite()


def _shifted_sums(v: np.ndarray, scope: Scope, shift: np.ndarray, *, extremes: bool = True) -> tuple:
    """Per key, each (keys,): the sum of v - shift, the sum of its squares, and (with `extremes`)
    the minimum and maximum of v.

    Each piece of the block (Scope.pieces) in five numpy calls: v - shift in float64 into this
    thread's scratch, its sum, its sum of squares, v's minimum and maximum. Narrower floats
    go at most about scratch.SLICE_VALUES values at a time (a block of the default size in one go), which
    bounds the scratch for larger blocks; the slices' sums add up, their minima and maxima fold
    exactly. float64 data are measured whole, so that their numbers stay
    bit for bit those of earlier versions (saved statistics, the README's transcripts). Per-sample
    keys are measured whole: their own reductions are pairwise already. With the compiled kernels
    (normcli.compiled), float32 pieces of flat values or rows take one GIL-free call each instead.
    """
    keys = len(shift)
    flat = scope.single_key and v.flags.c_contiguous
    if flat:
        pieces = [((v.reshape(-1),), (shift,))]
    else:
        pieces = list(scope.pieces((v,), (shift,)))
    sliced = not scope.per_sample and v.dtype.itemsize < 8
    rows = flat or (pieces and pieces[0][0][0].ndim == 2)  # flat values, or rows of channels
    fast = kernel("flat_sums" if flat else "column_sums", v.nbytes) \
        if v.dtype == np.float32 and not scope.per_sample and rows else None
    found = []
    for (values,), (key_shift,) in pieces:
        reduced = (0,) if values.ndim < 3 else scope.reduced  # down a piece's rows, or the view's axes
        if fast is not None and values.ndim < 3 and values.flags.c_contiguous:
            sums = _compiled_sums(fast, values, key_shift)
            if extremes:
                sums += [np.minimum.reduce(values, axis=0).reshape(-1), np.maximum.reduce(values, axis=0).reshape(-1)]
            found.append(_fold_onto_keys(sums, keys))
            continue
        step = slice_rows(values.shape) if sliced else max(1, len(values))
        by_slice = []
        for start in range(0, len(values), step):
            part = values[start:start + step]
            y = scratch("deviations", part.shape, np.float64)
            np.copyto(y, part)  # a plain cast, then a float64 subtraction: faster than both in one call
            y -= key_shift
            sums = [*_sum_and_squares(y, scope)]
            if extremes:
                sums += [np.minimum.reduce(part, axis=reduced), np.maximum.reduce(part, axis=reduced)]
            by_slice.append([s.reshape(-1) for s in sums])
        if not by_slice:
            continue
        # the slices' partial results added down the columns: pairwise for one key (numpy's reduce
        # of an (n, 1) array), running sums otherwise, as a piece's rows within a slice
        sums = by_slice[0] if len(by_slice) == 1 else \
            [fold.reduce(np.stack(column), axis=0) for fold, column in zip(_FOLDS, zip(*by_slice))]
        found.append(_fold_onto_keys(sums, keys))
    return tuple(reduce(fold, column) for fold, column in zip(_FOLDS, zip(*found)))


_FOLDS = (np.add, np.add, np.minimum, np.maximum)  # how the sums of two parts of a key's values combine


def _fold_onto_keys(sums: list, keys: int) -> list:
    """A piece's results per column folded onto the keys (rows repeating the keys)."""
    return [fold.reduce(total.reshape(-1, keys), axis=0) if len(total) > keys else total
            for fold, total in zip(_FOLDS, sums)]


def _compiled_sums(fast, values: np.ndarray, shift: np.ndarray) -> list:
    """The sums of values - shift and of its squares by a compiled kernel (normcli.compiled): of the
    flat values of one key, or per column of 2-D rows; in one call, without a temporary."""
    if values.ndim == 1:
        total, squares = fast(values, float(shift[0]))
        return [np.array([total]), np.array([squares])]
    total, squares = np.zeros(values.shape[1]), np.zeros(values.shape[1])
    fast(values, np.ascontiguousarray(shift, np.float64), total, squares)
    return [total, squares]


def _sum_and_squares(y: np.ndarray, scope: Scope) -> tuple[np.ndarray, np.ndarray]:
    """The sums of y and of y * y, per key of a block (3-D) or per column of rows (2-D pieces); y
    is scratch, squared in place. numpy's own sums, never BLAS (np.dot, a product with ones): its
    kernels add in an order of their own, which differs between processors, and so would the last
    digits of the statistics. One key: pairwise sums of the flat values; rows: running sums down
    the columns."""
    if scope.single_key:
        flat = y.reshape(-1)
        return np.add.reduce(flat, keepdims=True), np.add.reduce(np.square(flat, out=flat), keepdims=True)
    if y.ndim == 2:
        return np.add.reduce(y, axis=0), np.add.reduce(np.square(y, out=y), axis=0)
    return keyed_reduce(np.add, y, scope), keyed_reduce(np.add, np.square(y, out=y), scope)


def _nonfinite_moments(v: np.ndarray, scope: Scope, shift: np.ndarray, first_sample: int, ignore_nan: bool):
    """(moments, NonFinite) of a block whose sums are not finite: NaN or inf in it (moments None,
    or over the finite values with ignore_nan), else values too large for float64 (an error)."""
    finite = np.isfinite(v)
    nonfinite = _count_nonfinite(v, finite, first_sample)
    if not nonfinite.total:
        raise _too_large()
    if not ignore_nan:
        return None, nonfinite
    return _masked_moments(v, _deviations(v, scope, shift), finite, scope, shift), nonfinite


def _deviations(v: np.ndarray, scope: Scope, shift: np.ndarray) -> np.ndarray:
    """v - shift per key, in float64, in this thread's scratch."""
    y = scratch("deviations", v.shape, np.float64)
    for (values, out), (key_shift,) in scope.pieces((v, y), (shift,)):
        np.subtract(values, key_shift, out=out)
    return y


def _too_large() -> InputError:
    return InputError("values too large to add up or square in float64 (magnitudes beyond about 1e154); "
                      "scale the data down first")


def _masked_moments(v, y, finite, scope: Scope, shift) -> FloatMoments:
    """--ignore-nan on a block that has NaN or inf: every statistic over the finite values only."""
    axes = scope.reduced
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
    return FloatMoments(count.reshape(-1), shift, mean_dev.reshape(-1), m2.reshape(-1), low.reshape(-1),
                        high.reshape(-1))


def _count_nonfinite(v: np.ndarray, finite: np.ndarray, first_sample: int) -> NonFinite:
    bad_samples = np.flatnonzero(~finite.reshape(len(v), -1).all(axis=1))
    return NonFinite(int(np.isnan(v).sum()), int(np.isposinf(v).sum()), int(np.isneginf(v).sum()),
                     first_sample + int(bad_samples[0]) if len(bad_samples) else None)


def nonfinite_error(found: NonFinite, locate) -> NonFiniteError:
    """The one-line NaN/inf error, naming the first offending sample via `locate(index)`."""
    kinds = [f"{n} {label}" for n, label in ((found.nan, "NaN"), (found.posinf, "+inf"), (found.neginf, "-inf"))
             if n]
    source, name = locate(found.first)
    where = f"first in sample {found.first}" + (f" ({name})" if isinstance(name, str) else "")
    noun = "value" if found.total == 1 else "values"
    return NonFiniteError(
        f"the input holds {' and '.join(kinds)} {noun}, {where}; use --ignore-nan to leave them out", source)


def checked(stats: BlockStats, locate, *, ignore_nan: bool = False) -> Moments:
    """The aggregate of merged statistics, or the NaN/inf error when they hold what is not ignored."""
    if stats.nonfinite.total and not ignore_nan:
        raise nonfinite_error(stats.nonfinite, locate)
    return stats.aggregate()


# -- exact integers -------------------------------------------------------------------
def from_value_counts(value_counts: np.ndarray, dtype, scope: Scope) -> BlockStats:
    """The statistics at a counting scope (keeps_value_counts) of values counted per channel, or all
    together: (channels or 1, values)."""
    counts = value_counts.sum(axis=0, keepdims=True) if scope.single_key else value_counts
    return BlockStats(ValueCounts(counts, np.dtype(dtype)), NonFinite(), 0, len(counts))


_LIMB = 16  # bits: a product of two limbs summed over fewer than 2**32 values fits in uint64


def _integer_sums(v: np.ndarray, scope: Scope) -> IntegerSums:
    """Exact per-key sums of values and squares of integers of any width (Python ints).

    Values are offset to unsigned and cut into 16-bit limbs l_i (x = sum l_i 2^16i); the sums of
    l_i and of l_i l_j are exact in uint64 (blocks hold fewer than 2**32 values per key), and
    the sums of x and x^2 follow from them in Python integers.
    """
    if v.dtype == np.bool_:
        v = v.astype(np.uint8)
    count = scope.values_per_key(v.shape)
    bits = 8 * v.dtype.itemsize
    offset = 1 << (bits - 1) if v.dtype.kind == "i" else 0
    unsigned = v.view(np.dtype(f"u{v.dtype.itemsize}"))
    if offset:
        unsigned = unsigned ^ np.array(offset, unsigned.dtype)  # x + offset, modulo 2**bits: in [0, 2**bits)
    limbs = [(unsigned >> np.array(shift, unsigned.dtype)).astype(np.uint64) & np.uint64(0xFFFF)
             for shift in range(0, bits, _LIMB)] if bits > _LIMB else [unsigned.astype(np.uint64)]
    weights = [1 << (_LIMB * i) for i in range(len(limbs))]
    limb_sums = [keyed_reduce(np.add, limb, scope, dtype=np.uint64) for limb in limbs]
    s1 = sum(w * sums.astype(object) for w, sums in zip(weights, limb_sums))
    s2 = 0
    for i, li in enumerate(limbs):
        for j in range(i, len(limbs)):
            product = keyed_reduce(np.add, li * limbs[j], scope, dtype=np.uint64).astype(object)
            s2 = s2 + (1 if i == j else 2) * weights[i] * weights[j] * product
    if offset:  # back from x + c to x: sum x = S1 - n c, sum x^2 = S2 - 2 c S1 + n c^2
        s2 = s2 - 2 * offset * s1 + count * offset * offset
        s1 = s1 - count * offset
    keys = len(limb_sums[0])
    return IntegerSums(np.full(keys, count, np.int64), python_ints(s1, keys), python_ints(s2, keys),
                       keyed_reduce(np.minimum, v, scope), keyed_reduce(np.maximum, v, scope))


def python_ints(values, keys: int) -> np.ndarray:
    """`keys` integers as an object array of Python ints (sums that no fixed width holds)."""
    array = np.empty(keys, dtype=object)
    array[:] = [int(x) for x in np.broadcast_to(np.asarray(values, dtype=object), (keys,))]
    return array
