"""Histograms with exactly np.histogram's semantics: edges per scope key, a fast float kernel,
integer lookup tables, and per-block counts that merge by addition.

Bins follow numpy: `bins` equal bins over [low, high], each bin half-open [e_i, e_i+1) except
the last, which is closed; values outside the range are left out (or, with `clamp`, put in the
end bins, for a range known up to rounding).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from normcli.compiled import kernel
from normcli.layout import Layout
from normcli.scopes import Scope
from normcli.scratch import SLICE_VALUES, scratch

SMALL_INTEGERS = (np.uint8, np.uint16, np.int8, np.int16)  # every value can be counted


@dataclass(frozen=True)
class Histograms:
    """Per-row histograms: counts (rows, bins) and edges (rows, bins + 1)."""

    counts: np.ndarray
    edges: np.ndarray


def histogram_edges(low, high, bins: int) -> np.ndarray:
    """numpy's edges for each row's range; a single value gets (v - 0.5, v + 0.5) as in numpy, and
    so does a range too narrow to hold `bins` distinct float64 edges (where numpy gives up)."""
    edges = np.empty((len(low), bins + 1))
    for k, (lo, hi) in enumerate(zip(low, high)):
        lo, hi = (float(lo), float(hi)) if np.isfinite(float(lo)) and np.isfinite(float(hi)) else (0.0, 1.0)
        try:
            edges[k] = np.histogram_bin_edges([], bins, range=(lo, hi) if lo < hi else (lo - 0.5, hi + 0.5))
        except ValueError:  # "Too many bins for data range"
            edges[k] = np.histogram_bin_edges([], bins, range=(lo - 0.5, hi + 0.5))
    return edges


def edges_for(scope: Scope, low: np.ndarray, high: np.ndarray, bins: int, hist_range=None) -> np.ndarray:
    """Each row's edges: the given range, else the row's [low, high] (one row of all values for a
    scope that has one histogram)."""
    if hist_range is not None:
        rows = 1 if scope.one_histogram else len(low)
        return histogram_edges(np.full(rows, hist_range[0]), np.full(rows, hist_range[1]), bins)
    if scope.one_histogram:
        low = np.asarray(low, np.float64)
        high = np.asarray(high, np.float64)
        low, high = low[np.isfinite(low)], high[np.isfinite(high)]
        return histogram_edges([low.min() if low.size else np.nan], [high.max() if high.size else np.nan], bins)
    return histogram_edges(low, high, bins)


@dataclass(frozen=True)
class HistogramCounts:
    """One block's histogram counts, rows `first_row`.. (rows are samples for per-sample scopes),
    with their edges where each block chose its own (each sample's own range)."""

    counts: np.ndarray
    first_row: int = 0
    per_sample: bool = False
    edges: np.ndarray | None = None

    def merge(self, other: "HistogramCounts") -> "HistogramCounts":
        if not self.per_sample:
            return HistogramCounts(self.counts + other.counts, edges=self.edges)
        a, b = (self, other) if self.first_row < other.first_row else (other, self)
        if a.first_row + len(a.counts) != b.first_row:
            raise ValueError("per-sample histograms merge only with their neighbours")
        edges = None if a.edges is None else np.concatenate([a.edges, b.edges])
        return HistogramCounts(np.concatenate([a.counts, b.counts]), a.first_row, True, edges)


def count_block(data: np.ndarray, scope: Scope, layout: Layout, edges: np.ndarray, *, clamp: bool = False,
                first_sample: int = 0) -> HistogramCounts:
    """The histogram counts of one block of samples (pure). `edges` has one row per histogram row;
    per-sample scopes take the rows of this block's samples, `edges[0]` being `first_sample`'s."""
    v = layout.npc(data.view(np.uint8) if data.dtype == bool else data)  # bools: their 0/1 bytes, as numpy counts them
    bins = edges.shape[1] - 1
    groups = [v] if scope.one_histogram else scope.key_views(v)
    counts = []
    for row_edges, values in zip(edges, groups):
        low, high = row_edges[0], row_edges[-1]
        if values.dtype.type in SMALL_INTEGERS and not clamp:
            codes = np.take(integer_bins(values.dtype, row_edges), from_zero(values.reshape(-1)))
            counts.append(np.bincount(codes, minlength=bins + 1)[:bins])
            continue
        counts.append(float_histogram(values, low, high, bins, clamp=clamp))
    return HistogramCounts(np.stack(counts).astype(np.int64), first_sample, scope.per_sample)


def count_pairs(x: np.ndarray, y: np.ndarray, scope: Scope, layout: Layout, x_edges: np.ndarray,
                y_edges: np.ndarray, maps: tuple[np.ndarray, np.ndarray, np.ndarray], *,
                first_sample: int = 0) -> tuple[HistogramCounts, HistogramCounts]:
    """count_block(x, x_edges) and count_block(y, y_edges, clamp=True) of float data `x` and its
    map `y` (Affine.apply, no clip): `maps` holds each key's (shift, scale, offset), one histogram
    row per key (not a scope of one histogram). Keys whose histograms pair (paired_histograms) are
    counted in one pass over x; the others each on their own."""
    counts = []
    keys = zip(scope.key_views(layout.npc(x)), scope.key_views(layout.npc(y)), x_edges, y_edges, *maps)
    for x_values, y_values, x_row, y_row, *key_map in keys:
        bins = len(x_row) - 1
        pair = paired_histograms(x_values, y_values, x_row, y_row, key_map)
        counts.append(pair if pair is not None else
                      (float_histogram(x_values, x_row[0], x_row[-1], bins),
                       float_histogram(y_values, y_row[0], y_row[-1], bins, clamp=True)))
    return tuple(HistogramCounts(np.stack(side).astype(np.int64), first_sample, scope.per_sample)
                 for side in zip(*counts))


def all_values(dtype: np.dtype) -> np.ndarray:
    """Every value of a small integer type, in order (the columns of a value count)."""
    info = np.iinfo(dtype)
    return np.arange(info.min, info.max + 1)


def from_zero(values: np.ndarray) -> np.ndarray:
    """Small-integer values as indices counted from the type's minimum (0 for unsigned types)."""
    offset = -int(np.iinfo(values.dtype).min)
    return values if offset == 0 else values.astype(np.int32) + offset


_BAND_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}  # Pillow's modes of 1-4 8-bit bands


def value_counts(values: np.ndarray, channels: int) -> np.ndarray:
    """How often each value of a small integer type occurs in `values` (its last axis `channels`
    long, or 1 for all values together): shaped (channels, values), indexed from the type's minimum."""
    n_values = 1 << (8 * values.dtype.itemsize)
    if values.dtype.itemsize == 1 and channels in _BAND_MODES and values.size:
        return _byte_value_counts(values, channels)
    columns = [values.reshape(-1)] if channels == 1 else [values[..., c].reshape(-1) for c in range(channels)]
    return np.stack([np.bincount(from_zero(c), minlength=n_values) for c in columns])


def _byte_value_counts(values: np.ndarray, channels: int) -> np.ndarray:
    """value_counts of 8-bit data by Pillow's Image.histogram, which counts every band in C in one
    pass, faster than numpy's per-channel bincount, and threads share it (bincount holds the GIL;
    benchmarks/PROFILE.md)."""
    from PIL import Image

    data = np.ascontiguousarray(values).view(np.uint8).reshape(-1)
    if values.dtype == np.int8:
        data = data ^ np.uint8(0x80)  # two's complement + 128: counted from the minimum, as from_zero
    mode = _BAND_MODES[channels]
    image = Image.frombuffer(mode, (data.size // channels, 1), data, "raw", mode, 0, 1)
    return np.array(image.histogram(), np.int64).reshape(channels, 256)


def integer_bins(dtype: np.dtype, edges: np.ndarray) -> np.ndarray:
    """For every value of a small integer type, its bin under numpy's rule (e_i <= v < e_i+1, the
    last bin closed), or `bins` for values outside: histograms become one lookup and one bincount."""
    values = all_values(dtype).astype(np.float64)
    bins = len(edges) - 1
    index = np.searchsorted(edges, values, side="right") - 1
    index[values == edges[-1]] = bins - 1
    index[(values < edges[0]) | (values > edges[-1])] = bins
    return index.astype(np.intp)


def histograms_from_value_counts(value_counts: np.ndarray, dtype: np.dtype, edges: np.ndarray) -> Histograms:
    """Exact histograms (numpy's binning) of small-integer data from its value counts (keys, values)."""
    bins = edges.shape[1] - 1
    counts = [np.bincount(integer_bins(dtype, row_edges), weights=row, minlength=bins + 1)[:bins]
              for row, row_edges in zip(value_counts, edges)]
    return Histograms(np.rint(counts).astype(np.int64).reshape(len(edges), bins), edges)


# Fast float histograms. np.histogram(values, bins, range=(low, high)) is slow on float32 (its speed
# is in benchmarks/PROFILE.md): it casts every value to float64, filters the range, and corrects
# every index against the edges. The kernel below computes f = (v - low) * (bins / (high - low)) in float32 for
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
# exact by Sterbenz's lemma; values with idx >= bins are rejected), so t lies in
# [idx + margin - e_fast, idx + 1 - margin + e_fast]. With margin > e_fast + max(e_np, e_edge):
# 0 < t < bins, so low < v < high and numpy keeps v; numpy's float index is strictly inside
# (idx, idx + 1), so its trunc is idx; edge idx is below v and edge idx + 1 above it, so neither of
# numpy's +-1 corrections fires (idx is also searchsorted(edges, v, "right") - 1). The margin used,
# 2 (e_fast + e_np + e_edge), leaves a factor 2. It grows with bins and with max(|low|, |high|) /
# (high - low) (a large offset with a narrow range); past _HIST_MAX_MARGIN np.histogram does it all.
_HIST_MAX_MARGIN = 0.05  # wider margins reject too many values for the kernel to pay
_HIST_GIVE_UP = 0.25  # a first block with more rejected than this (data on the edges): np.histogram
_HIST_BYTE_SLOTS = 256  # bins + 1 up to this: indices counted as bytes by Pillow, 2x bincount of index pairs
_HIST_PROBE = 1 << 13  # the first block's size: giving up costs little
_HIST_MIN_SIZE = 4096  # fewer values: np.histogram is as fast
_HIST_U = 2.0 ** -53
_hist_plans: dict = {}


def _hist_plan(low, high, bins: int, dtype: np.dtype, extra: float = 0.0):
    """The kernel's (compute type, L, s, lowest accepted fraction, highest) for one range, or None;
    `extra`: bin units the margin must also cover (paired_histograms)."""
    key = (float(low), float(high), int(bins), dtype, float(extra))
    plan = _hist_plans.get(key, False)
    if plan is False:
        if len(_hist_plans) > 4096:
            _hist_plans.clear()
        plan = _hist_plans[key] = _make_hist_plan(*key)
    return plan


def _make_hist_plan(low: float, high: float, bins: int, dtype: np.dtype, extra: float = 0.0):
    if dtype.type not in (np.float16, np.float32, np.float64) or bins < 1:
        return None
    if not (np.isfinite(low) and np.isfinite(high) and low < high and np.isfinite(high - low)):
        return None
    width = high - low
    scale = bins / width
    for ctype in (np.float32, np.float64) if dtype.itemsize < 8 else (np.float64,):
        info = np.finfo(ctype)
        with np.errstate(over="ignore"):
            L, s = ctype(low), ctype(scale)
        if not (np.isfinite(L) and info.tiny <= s < info.max):
            continue
        c = abs(low - float(L)) * scale
        eta = 3 * float(info.eps) / 2 + 2 * _HIST_U
        e_fast = 1.01 * (bins * eta + c)
        margin = 2 * (e_fast + _numpy_error(low, high, bins) + extra)
        if margin <= _HIST_MAX_MARGIN:
            return ctype, L, s, _round_to(ctype, margin, up=True), _round_to(ctype, 1 - margin, up=False)
    return None


def _numpy_error(low: float, high: float, bins: int) -> float:
    """e_np + e_edge of the comment above: how far, in bins, numpy's float index and its edges may
    be off the exact position of a value in [low, high]."""
    return bins * (4.01 * _HIST_U + 3.01 * _HIST_U + 1.01 * _HIST_U * max(abs(low), abs(high)) / (high - low))


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


def float_histogram(values: np.ndarray, low, high, bins: int, *, clamp: bool = False) -> np.ndarray:
    """np.histogram(values, bins, range=(low, high))[0], exactly; several times faster on float data
    (see the comment above). `clamp`: of np.clip(values, low, high) (values outside the range are
    all among those the kernel rejects, so only those are clipped)."""
    numpy_histogram = partial(_numpy_histogram, low=low, high=high, bins=bins, clamp=clamp)
    # numpy bins in result_type(low, high, values): float64 here (numpy >= 2, float64 range ends),
    # which the argument above assumes; anything else is left to numpy.
    plan = None
    if values.size >= _HIST_MIN_SIZE and np.result_type(low, high, values.dtype) == np.float64:
        plan = _hist_plan(low, high, bins, values.dtype)
    found = None if plan is None else _kernel_counts(values, None, plan, bins)
    if found is None:
        return numpy_histogram(values)
    counts, rejected, _ = found
    if rejected:
        counts += numpy_histogram(np.concatenate(rejected))
    return counts


def _numpy_histogram(values: np.ndarray, *, low, high, bins: int, clamp: bool) -> np.ndarray:
    return np.histogram(np.clip(values, low, high) if clamp else values, bins, range=(low, high))[0]


def paired_histograms(x: np.ndarray, y: np.ndarray, x_edges: np.ndarray, y_edges: np.ndarray,
                      key_map: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray] | None:
    """float_histogram(x) over x_edges' range and float_histogram(y, clamp=True) over y_edges', in
    one pass over x, where y (same shape) holds x's affine map `key_map` = (shift, scale, offset):
    y = fl(fl(fl(x - shift) * scale) + offset) in float64, rounded to y's dtype (Affine.apply, no
    clip; non-finite x may hold anything in y). None where the two do not pair: the edges' ends
    are not each other's map by the same arithmetic, or the kernel does not apply.

    Why a value's bin in x's histogram gives its bin in y's. In exact arithmetic an affine map of
    positive scale takes x's position (x - A) / (B - A) in [A, B] to the same position of Y(x) in
    [Y(A), Y(B)] (reversed for a negative scale: bin i becomes bins - 1 - i). Here y_edges' ends
    are the float64 maps of A and B (checked, bit for bit), off Y(A), Y(B) by at most a = 2.01 U
    |A - shift| |scale| + 1.01 U |Y(A)|, and each y off Y(x) by at most g = a (the same three
    roundings) + u |y| (the rounding to y's dtype, u its unit roundoff) + its smallest subnormal.
    With W = |scale| (B - A) the width of y's range, y's exact position in y's bins is then within
    e_map = 1.01 (g + 3a) bins / (W - 2a) of x's. The kernel's margin on x (see the comment above)
    is widened by e_map and by numpy's own errors on y's range (e_np + e_edge): a value it accepts
    lies strictly inside its bin in both histograms, where numpy's rounding cannot move it, and
    strictly inside y's range, which clamping leaves alone. The values it rejects are binned by
    np.histogram, each side its own values (those of y clipped to y's range).
    """
    bins = x_edges.shape[0] - 1
    # float64 ends, as count_block passes them: numpy bins in their type (Python floats would give float32's)
    x_low, x_high, y_low, y_high = (np.float64(e) for e in (x_edges[0], x_edges[-1], y_edges[0], y_edges[-1]))
    if x.shape != y.shape or y.dtype.kind != "f" or x.size < _HIST_MIN_SIZE or y_edges.shape[0] != bins + 1 \
            or np.result_type(x_edges.dtype, x.dtype) != np.float64 \
            or any(a * y.itemsize != b * x.itemsize for a, b in zip(x.strides, y.strides)):
        return None
    extra = _pairing_error(x_low, x_high, y_low, y_high, bins, key_map, y.dtype)
    plan = None if extra is None else _hist_plan(x_low, x_high, bins, x.dtype, extra)
    found = None if plan is None else _kernel_counts(x, y, plan, bins)
    if found is None:
        return None
    counts, rejected_x, rejected_y = found
    y_counts = counts.copy() if key_map[1] > 0 else counts[::-1].copy()
    if rejected_x:
        counts += _numpy_histogram(np.concatenate(rejected_x), low=x_low, high=x_high, bins=bins, clamp=False)
        y_counts += _numpy_histogram(np.concatenate(rejected_y), low=y_low, high=y_high, bins=bins, clamp=True)
    return counts, y_counts


def _pairing_error(x_low: float, x_high: float, y_low: float, y_high: float, bins: int, key_map, y_dtype):
    """e_map + numpy's errors on y's range, in bins (paired_histograms), or None: no pairing."""
    shift, scale, offset = (np.float64(v) for v in key_map)
    with np.errstate(all="ignore"):
        images = [(np.float64(end) - shift) * scale + offset for end in (x_low, x_high)]
    if not (np.isfinite(scale) and scale != 0 and all(np.isfinite(images)) and y_low < y_high):
        return None
    if (images if scale > 0 else images[::-1]) != [y_low, y_high]:
        return None
    reach = max(abs(x_low - shift), abs(x_high - shift)) * abs(scale)  # |x - shift| |scale| on [A, B]
    largest = max(abs(y_low), abs(y_high))
    a = 2.01 * _HIST_U * reach + 1.01 * _HIST_U * largest + 2.0 ** -1070  # (and float64 underflow)
    info = np.finfo(y_dtype)
    u = float(info.eps) / 2 if info.bits < 64 else 0.0
    g = a + u * 1.01 * (largest + a) + float(info.smallest_subnormal)
    width = abs(scale) * (x_high - x_low) * (1 - 4 * _HIST_U)
    if not width > 4 * a:
        return None
    return 1.01 * (g + 3 * a) * bins / (width - 2 * a) + _numpy_error(y_low, y_high, bins)


def _kernel_counts(values: np.ndarray, paired: np.ndarray | None, plan, bins: int):
    """The kernel's counts of the values it accepts, and the values it rejects (in blocks), with
    `paired`'s values at the same places (or None); None when the first block gives up."""
    fast = kernel("histogram_counts", values.nbytes) if values.dtype == np.float32 else None
    if fast is not None:
        return _compiled_counts(fast, values, paired, plan, bins)
    ctype, L, s, lo, hi = plan
    size = min(values.size, SLICE_VALUES)
    f, whole = scratch("histogram fractions", size, ctype), scratch("histogram bins", size, ctype)
    index = scratch("histogram indices", size, np.intp)
    flags = index.view(bool)  # 8 bytes a value: room for two masks, used up before `index` is
    b1 = bins + 1
    top = ctype(bins)  # exact (bins < 2**24 here); a Python int would make numpy cast `whole` for the comparison
    counts = np.zeros(b1, np.int64)
    as_bytes = b1 <= _HIST_BYTE_SLOTS
    rejected, rejected_paired = [], []
    blocks = _hist_blocks(values, SLICE_VALUES, _HIST_PROBE)
    paired_blocks = _hist_blocks(paired, SLICE_VALUES, _HIST_PROBE) if paired is not None else None
    first = True
    with np.errstate(over="ignore", invalid="ignore"):
        for block in blocks:
            paired_block = next(paired_blocks) if paired_blocks is not None else None
            n = block.size
            fb, wb, ib, ok, inside = f[:n], whole[:n], index[:n], flags[:n], flags[n:2 * n]
            np.subtract(block, L, out=fb.reshape(block.shape))
            fb *= s
            np.trunc(fb, out=wb)
            fb -= wb  # the fraction, exact; <= 0 below the range, NaN for NaN and +-inf
            np.greater_equal(fb, lo, out=ok)
            np.less_equal(fb, hi, out=inside)
            ok &= inside
            np.less(wb, top, out=inside)  # at or past the last edge (cheaper than np.minimum)
            ok &= inside
            if not ok.all():
                bad = np.flatnonzero(np.logical_not(ok, out=inside))
                if first and len(bad) > _HIST_GIVE_UP * n:
                    return None
                at = np.unravel_index(bad, block.shape) if block.ndim > 1 else bad
                rejected.append(block[at])
                if paired_block is not None:
                    rejected_paired.append(paired_block[at])
                wb[bad] = bins  # the spare slot, dropped at the end
            first = False
            # wb holds whole numbers in [0, bins]: the casts below are exact.
            if as_bytes:
                codes = index.view(np.uint8)[:n]  # `flags` are used up
                np.copyto(codes, wb, casting="unsafe")
                counts += _byte_value_counts(codes, 1)[0, :b1]
            else:
                np.copyto(ib, wb, casting="unsafe")
                counts += np.bincount(ib, minlength=b1)
    return counts[:bins], rejected, rejected_paired


def _compiled_counts(fast, values: np.ndarray, paired: np.ndarray | None, plan, bins: int):
    """_kernel_counts by the compiled kernel (normcli.compiled): the same margin test in one loop,
    GIL free."""
    ctype, L, s, lo, hi = plan
    rejected_at = scratch("histogram indices", min(values.size, SLICE_VALUES), np.intp)
    counts = np.zeros(bins, np.int64)
    rejected, rejected_paired = [], []
    paired_blocks = _hist_blocks(paired, SLICE_VALUES, _HIST_PROBE) if paired is not None else None
    first = True
    for block in _hist_blocks(values, SLICE_VALUES, _HIST_PROBE):
        paired_block = next(paired_blocks) if paired_blocks is not None else None
        flat = block.reshape(-1)
        n_bad = fast(flat, L, s, lo, hi, ctype(bins), counts, rejected_at)
        if first and n_bad > _HIST_GIVE_UP * flat.size:
            return None
        first = False
        if n_bad:
            rejected.append(flat[rejected_at[:n_bad]])
            if paired_block is not None:
                rejected_paired.append(paired_block.reshape(-1)[rejected_at[:n_bad]])
    return counts, rejected, rejected_paired
