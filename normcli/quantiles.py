"""Exact quantiles of data larger than memory: `np.percentile` over a scope's values, bit for bit,
in a few passes of bounded memory.

Every value is mapped to an unsigned integer key of its width whose order is the values' order
(`order_keys`: floats by the sign-magnitude to two's-complement trick on their bits, so -inf < ...
< -0.0 < 0.0 < ... < +inf, NaN beyond both ends). An order statistic is then found by radix
selection in key space: a pass counts, for each *cell* (an aligned range of keys) that holds a
wanted rank, how many values fall in each of its 2**bits sub-cells, or, once a cell holds few
values (`Request.collect_limit`), collects them; the next pass looks only inside the sub-cells that
hold the ranks. Counts are integers over integer ranges, so no rounding can misplace a value, and a
cell of ties is refined down to a single key rather than collected. A key's first pass splits the
whole key space by the values' top bits, a bincount that needs no range and so runs inside the
statistics pass (statspass.StatsTask.quantiles) while it reads each block; every cell after it
shrinks to the smallest aligned cell holding the keys seen in it. So float32 takes one pass after
the statistics pass (16 bits each), narrow-ranged integers of any width one or two, and 8- and
16-bit integers none (the statistics pass's value counts).

Once the ranks are known values, the quantile is numpy's own arithmetic (`finish`): its virtual
index and gamma for each method, and its linear interpolation that switches form at gamma >= 0.5,
on values of the input's dtype (so the dtype of the result, the wrap-around of an int8 difference
and the inf - inf of two infinities are numpy's too).

The passes are data, for whatever driver runs them: `first()` makes a `State`; `next_task(state)`
is the `Task` of the next pass or None; `work(task, data, first_sample)` is a pure, picklable block
function whose `Partial`s merge associatively and commutatively (any grouping or order gives the
same results); `advance(state, merged)` is the state after the pass; `results(state)` the
quantiles per key. Per-sample keys lie wholly in one block, so that scope is one pass that selects
each sample's quantiles where its block is read. Signed zeros tie as they do in numpy's partition:
which of -0.0 and 0.0 a quantile of both is cannot be predicted, from numpy either.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from normcli.compiled import kernel
from normcli.layout import Layout
from normcli.scopes import Scope
from normcli.scratch import scratch

METHODS = ("inverted_cdf", "averaged_inverted_cdf", "closest_observation", "interpolated_inverted_cdf",
           "hazen", "weibull", "linear", "median_unbiased", "normal_unbiased", "lower", "higher", "midpoint",
           "nearest")  # numpy's, in its order
_TAKEN = ("inverted_cdf", "closest_observation", "lower", "higher", "nearest")  # no interpolation
_ALPHA_BETA = {"interpolated_inverted_cdf": (0, 1), "hazen": (0.5, 0.5), "weibull": (0, 0),
               "median_unbiased": (1 / 3.0, 1 / 3.0), "normal_unbiased": (3 / 8.0, 3 / 8.0)}
COUNTERS = 1 << 22  # sub-cell counters a pass may hold (32 MiB of int64): fewer bits for many keys


def refusal(scope: Scope) -> str | None:
    """Why quantiles cannot be taken at `scope`, or None: a quantile of each pixel across samples
    needs ranks among every sample's value of that pixel, state that grows with the dataset."""
    if scope.by_position:
        return (f"percentiles --per {scope.name} are not supported: exact quantiles of every "
                "(position, channel) across samples need memory that grows with the dataset")
    return None


@dataclass(frozen=True)
class Request:
    """What is asked: percentiles `q` (a number, or a tuple of numbers, in [0, 100], as numpy takes
    them: a number gives results of the input's float dtype, a tuple float64), numpy's `method`,
    NaN left out (`np.nanpercentile`) or not; `bits` per pass and `collect_limit` bound the state."""

    q: float | tuple[float, ...]
    method: str = "linear"
    ignore_nan: bool = False
    bits: int = 16
    collect_limit: int = 1 << 16

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown quantile method {self.method!r}: one of {', '.join(METHODS)}")
        fractions = np.true_divide(self.q, 100)
        if np.ndim(fractions) > 1 or not (np.all(fractions >= 0) and np.all(fractions <= 1)):
            raise ValueError("percentiles must be numbers in [0, 100]")

    @property
    def weak(self) -> bool:
        """Whether q is one Python number (numpy then keeps a float input's dtype)."""
        return type(self.q) in (int, float)

    @property
    def fractions(self) -> np.ndarray:
        """q / 100, as numpy divides it (a 0-d array for one number)."""
        return np.true_divide(self.q, 100, out=...)


# -- keys --------------------------------------------------------------------------------
def key_bits(dtype) -> int:
    dtype = np.dtype(dtype)
    if dtype.kind not in "iuf":
        raise ValueError(f"quantiles of {dtype} data are not supported")
    return 8 * dtype.itemsize


def order_keys(values: np.ndarray) -> np.ndarray:
    """Unsigned integers of the values' width in the values' order (NaN with its sign bit below
    -inf, without it above +inf): unsigned as they are, signed with the sign bit flipped, floats
    with every bit flipped when negative and the sign bit flipped when not."""
    values = np.ascontiguousarray(values, np.asarray(values).dtype.newbyteorder("="))
    bits = key_bits(values.dtype)
    unsigned, signed = np.dtype(f"u{bits // 8}"), np.dtype(f"i{bits // 8}")
    if values.dtype.kind == "u":
        return values.view(unsigned)
    lowest = np.array(-(1 << (bits - 1)), signed)
    if values.dtype.kind == "i":
        return (values.view(signed) ^ lowest).view(unsigned)
    s = values.view(signed)
    keys = s >> np.array(bits - 1, signed)  # -1 where negative, else 0: one new array, then in place
    keys |= lowest
    keys ^= s
    return keys.view(unsigned)


def from_keys(keys: np.ndarray, dtype) -> np.ndarray:
    """The values of order keys (the inverse of order_keys)."""
    dtype = np.dtype(dtype)
    bits = key_bits(dtype)
    keys = np.asarray(keys, f"u{bits // 8}")
    top = np.array(1 << (bits - 1), keys.dtype)
    if dtype.kind == "u":
        return keys.view(dtype)
    if dtype.kind == "i":
        return (keys ^ top).view(dtype)
    return np.where(keys & top, keys ^ top, ~keys).astype(keys.dtype).view(dtype)


def _infinity_keys(dtype) -> tuple[int, int]:
    """The keys of -inf and +inf of a float dtype: NaN keys lie outside them."""
    low, high = order_keys(np.array([-np.inf, np.inf], dtype))
    return int(low), int(high)


# -- numpy's quantile arithmetic ---------------------------------------------------------
def _boundaries(index: np.ndarray, lower) -> np.ndarray:
    """A discrete method's rank: floor(index) where `lower(gamma, index)`, else the next; never < 0."""
    previous = np.floor(index)
    rank = np.where(lower(index - previous, index), previous, previous + 1).astype(np.intp)
    rank[rank < 0] = 0
    return rank


def _virtual_index(n: int, p: np.ndarray, method: str) -> np.ndarray:
    """numpy's virtual index of each fraction p among n sorted values (an intp rank for the
    methods that take a value, a float position for those that interpolate)."""
    if method == "inverted_cdf":
        return _boundaries(np.asanyarray(n * p - 1), lambda gamma, _: gamma == 0)
    if method == "closest_observation":
        return _boundaries(np.asanyarray(n * p - 1 - 0.5),
                           lambda gamma, index: (gamma == 0) & (np.floor(index) % 2 == 1))
    if method == "averaged_inverted_cdf":
        return np.asanyarray(n * p - 1)
    if method in _ALPHA_BETA:
        alpha, beta = _ALPHA_BETA[method]
        return np.asanyarray(n * p + (alpha + p * (1 - alpha - beta)) - 1)
    if method == "lower":
        return np.floor((n - 1) * p).astype(np.intp)
    if method == "higher":
        return np.ceil((n - 1) * p).astype(np.intp)
    if method == "nearest":
        return np.around((n - 1) * p).astype(np.intp)
    if method == "midpoint":
        return np.asanyarray(0.5 * (np.floor((n - 1) * p) + np.ceil((n - 1) * p)))
    return np.asanyarray((n - 1) * p)  # linear


def _neighbours(virtual: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ranks each side of a float virtual index, as numpy picks them: -1 (the last) at or past
    the last value, 0 before the first."""
    previous = np.floor(virtual, out=...)
    following = np.add(previous, 1, out=...)
    above = virtual >= n - 1
    previous[above] = -1
    following[above] = -1
    below = virtual < 0
    previous[below] = 0
    following[below] = 0
    return previous.astype(np.intp), following.astype(np.intp)


def _gamma(virtual: np.ndarray, previous: np.ndarray, method: str) -> np.ndarray:
    gamma = np.asanyarray(virtual - previous)
    if method == "averaged_inverted_cdf":
        gamma = np.where(gamma == 0, 0.5, 1.0)
    elif method == "midpoint":
        gamma = np.where(virtual % 1 == 0, 0.0, 0.5)
    return np.asanyarray(gamma, dtype=virtual.dtype)


@dataclass(frozen=True)
class Ranks:
    """Which order statistics (0-based ranks among n values) a request needs, and how numpy makes
    the quantiles of them: taken at `take`, or interpolated between `previous` and `following`."""

    n: int
    take: np.ndarray | None
    previous: np.ndarray | None = None
    following: np.ndarray | None = None
    gamma: np.ndarray | None = None

    @property
    def wanted(self) -> list[int]:
        indexes = [self.take] if self.take is not None else [self.previous, self.following]
        return sorted({int(i) % self.n for a in indexes for i in np.asarray(a).reshape(-1)})


def ranks(n: int, request: Request) -> Ranks:
    """The ranks that the quantiles of `n` values need (n >= 1)."""
    virtual = _virtual_index(n, request.fractions, request.method)
    if request.method in _TAKEN:
        return Ranks(n, virtual)
    previous, following = _neighbours(virtual, n)
    return Ranks(n, None, previous, following, _gamma(virtual, previous, request.method))


def finish(order: dict[int, object], plan: Ranks, request: Request, dtype, has_nan: bool = False):
    """numpy's quantiles from the order statistics `order` (rank -> value of `dtype`) that `plan`
    wants: as np.percentile gives them (a numpy scalar for one q, else an array), NaN of the result's
    dtype if `has_nan`."""
    wanted = plan.wanted
    known = np.array([order[r] for r in wanted], dtype)  # the order statistics, as a tiny sorted array
    where = {r: i for i, r in enumerate(wanted)}

    def local(indexes):  # the positions in `known` of numpy's indexes, shaped as numpy's
        return np.array([where[int(i) % plan.n] for i in np.reshape(indexes, -1)], np.intp).reshape(np.shape(indexes))

    if plan.take is not None:
        result = known.take(local(plan.take))
    else:
        a, b = known[local(plan.previous)], known[local(plan.following)]
        t = float(plan.gamma) if request.weak else plan.gamma
        with np.errstate(over="ignore", invalid="ignore"):
            result = _lerp(a, b, t)
    if has_nan:
        result = np.full(np.shape(result), np.nan, np.asarray(result).dtype)[()]
    return result


def _lerp(a, b, t):
    """numpy's interpolation a + (b - a) t, written b - (b - a)(1 - t) where t >= 0.5 (exact at
    t = 1); the difference in the values' dtype, as numpy takes it."""
    diff = b - a
    result = np.add(a, diff * t, out=...)
    np.subtract(b, diff * (1 - t), out=result, where=t >= 0.5, casting="unsafe", dtype=result.dtype)
    return result[()] if result.ndim == 0 else result


def _all_nan(request: Request, dtype):
    """np.nanpercentile of a key without a value: NaN of the input's dtype, shaped like q."""
    return np.full(np.shape(request.fractions), np.nan, dtype)[()]


# -- the passes ------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """Keys prefix << shift .. ((prefix + 1) << shift) - 1 of one scope key, which a pass splits
    into 2**bits sub-cells or (bits 0) collects; `whole`: the cell holds every value of its key."""

    key: int
    prefix: int
    shift: int
    bits: int
    whole: bool = False


@dataclass(frozen=True)
class Task:
    """One counting pass over every block: the cells to count, per scope key."""

    scope: Scope
    layout: Layout
    dtype: str
    cells: tuple[Cell, ...]
    count_nan: bool  # the first pass of floats: count NaN keys per scope key

    def measure(self, data: np.ndarray, first_sample: int = 0) -> "Partial":
        return _count_cells(self, data)


@dataclass(frozen=True)
class SampleTask:
    """The one pass of per-sample quantiles: each sample's, where its block is read."""

    layout: Layout
    request: Request

    def measure(self, data: np.ndarray, first_sample: int = 0) -> "SampleResults":
        return _sample_quantiles(self, data, first_sample)


def work(task: Task | SampleTask, data: np.ndarray, first_sample: int = 0):
    """One block's share of a pass: `data` shaped (n, *sample_shape), its first sample the dataset's
    sample `first_sample` (pure, module level: runs on any thread, process or worker)."""
    return task.measure(data, first_sample)


_EMPTY_LOW = 1 << 64  # a cell's lowest key before it has any


@dataclass(frozen=True)
class Partial:
    """Counts of one pass over some blocks, per cell of its Task: sub-cell counts (split cells) or
    the keys themselves (collected cells), the lowest and highest key seen, and per scope key how
    many NaN keys lie below -inf and above +inf (first pass of floats)."""

    counts: tuple[np.ndarray | None, ...]
    keys: tuple[np.ndarray | None, ...]
    low: tuple[int, ...]
    high: tuple[int, ...]
    nan_below: tuple[int, ...]
    nan_above: tuple[int, ...]

    def merge(self, other: "Partial") -> "Partial":
        """Both blocks' counts (associative and commutative: collected keys are selected from
        after sorting, so their order does not matter)."""
        return Partial(
            tuple(None if a is None else a + b for a, b in zip(self.counts, other.counts)),
            tuple(None if a is None else np.concatenate([a, b]) for a, b in zip(self.keys, other.keys)),
            tuple(map(min, self.low, other.low)), tuple(map(max, self.high, other.high)),
            tuple(map(int.__add__, self.nan_below, other.nan_below)),
            tuple(map(int.__add__, self.nan_above, other.nan_above)))


@dataclass(frozen=True)
class SampleResults:
    """Per-sample quantiles of some blocks: (first sample, results of consecutive samples) runs."""

    runs: tuple[tuple[int, tuple], ...]

    def merge(self, other: "SampleResults") -> "SampleResults":
        return SampleResults(self.runs + other.runs)  # in any order: advance() puts them in sample order


def _columns(u: np.ndarray, scope: Scope) -> list[np.ndarray]:
    """The values of each scope key (global or channel) of a (samples, positions, channels) array."""
    if scope.single_key:
        return [u.reshape(-1)]
    return [u[..., c].reshape(-1) for c in range(u.shape[2])]


def _count_cells(task: Task, data: np.ndarray) -> Partial:
    """Count one block into the task's cells.

    The counting runs on the values' bit patterns: the top k bits of a key are a permutation of the
    top k bits of its value (floats flip them by the sign), so the first pass (every cell whole)
    permutes its bincount, later passes look candidates up in a permuted table, and only the few
    candidates become keys.
    """
    dtype = np.dtype(task.dtype)
    width = 8 * dtype.itemsize
    npc = task.layout.npc(np.asarray(data, dtype).view(f"u{dtype.itemsize}"))
    raw = _columns(npc, task.scope)
    counts, keys = [None] * len(task.cells), [None] * len(task.cells)
    low, high = [_EMPTY_LOW] * len(task.cells), [-1] * len(task.cells)
    nan_below, nan_above = [0] * len(raw), [0] * len(raw)
    if task.cells[0].whole:  # a first pass: one bincount of every key's top bits, in the patterns' order
        bits = task.cells[0].bits
        top = _top_counts(npc.reshape(-1, 1) if task.scope.single_key else npc.reshape(-1, npc.shape[2]), width, bits)
        for i, cell in enumerate(task.cells):
            counts[i] = top[cell.key]
            if not raw[cell.key].size:
                continue
            low[i], high[i] = 0, (1 << width) - 1  # advance() narrows them to the counted cells
            if dtype.kind in "iu" and width == 64:  # exact ends: a narrow range then takes one
                values = raw[cell.key].view(dtype)  # more pass, not three of 16 bits to find them
                low[i], high[i] = (int(k) for k in order_keys(np.array([values.min(), values.max()], dtype)))
            if task.count_nan and _may_be_nonfinite(counts[i], dtype, bits):
                nan_below[cell.key], nan_above[cell.key] = _nan_counts(raw[cell.key], dtype)
        return Partial(tuple(counts), tuple(keys), tuple(low), tuple(high), tuple(nan_below), tuple(nan_above))
    by_key: dict[int, list[int]] = {}
    for i, cell in enumerate(task.cells):
        by_key.setdefault(cell.key, []).append(i)
    if not task.scope.single_key:  # per-key lookups run on contiguous rows: one transposing copy
        raw = list(np.ascontiguousarray(npc.reshape(-1, npc.shape[2]).T))
    for key, indexes in by_key.items():
        cells = [task.cells[i] for i in indexes]
        for i, cell, values in zip(indexes, cells, _inside(cells, raw[key], dtype)):
            if cell.bits:
                sub = values >> np.array(cell.shift - cell.bits, values.dtype)
                sub &= np.array((1 << cell.bits) - 1, values.dtype)
                counts[i] = _bincount(sub, cell.bits)
            else:
                keys[i] = values.copy()
            if values.size:
                low[i], high[i] = int(values.min()), int(values.max())
    return Partial(tuple(counts), tuple(keys), tuple(low), tuple(high), tuple(nan_below), tuple(nan_above))


def _bincount(values: np.ndarray, bits: int) -> np.ndarray:
    return np.bincount(values if values.itemsize < 8 else values.astype(np.intp), minlength=1 << bits)


def _top_counts(raw: np.ndarray, width: int, bits: int) -> np.ndarray:
    """How many values of each of K scope keys (the columns of `raw`, bit patterns `width` bits
    wide) have each top `bits` bits of their pattern: (K, 2**bits), in one bincount. The patterns'
    order, not the keys' (a permutation of 2**bits counts, which advance() applies once)."""
    keys = raw.shape[1]
    fast = kernel("top_bit_counts", raw.nbytes) \
        if raw.dtype in (np.uint32, np.uint64) and raw.flags.c_contiguous else None
    if fast is not None:  # compiled (normcli.compiled): one GIL-free loop, no temporary
        counts = np.zeros((keys, 1 << bits), np.int64)
        fast(raw, raw.dtype.type(width - bits), counts)
        return counts
    top = scratch("top bits", raw.shape, np.intp)  # bincount counts intp: shifted straight into it
    np.right_shift(raw, raw.dtype.type(width - bits), out=top, casting="unsafe")
    flat = top.reshape(-1)
    if keys > 1:  # each key's counts after the previous key's: offsets added along rows of ~4096 values
        # (numpy's loop over (N, K) rows against a (K,) vector is 1.7 times slower)
        row = np.tile(np.arange(keys, dtype=np.intp) << bits, max(1, 4096 // keys))
        whole = len(flat) // len(row) * len(row)
        rows = flat[:whole].reshape(-1, len(row))
        rows += row
        flat[whole:] += row[:len(flat) - whole]
    return np.bincount(flat, minlength=keys << bits).reshape(keys, 1 << bits)


def _in_key_order(task: Task, merged: Partial) -> Partial:
    """A first pass's merged counts, indexed by the bit patterns' top bits, as later passes' are: by
    the keys' top bits, each cell's lowest and highest key narrowed to the sub-cells that hold any."""
    dtype = np.dtype(task.dtype)
    width = 8 * dtype.itemsize
    counts, low, high = [], [], []
    for cell, patterns, lowest, highest in zip(task.cells, merged.counts, merged.low, merged.high):
        ordered = np.empty_like(patterns)
        ordered[_top_keys(dtype, cell.bits)] = patterns
        seen = np.flatnonzero(ordered)
        if seen.size:
            shift = width - cell.bits
            lowest, highest = max(lowest, int(seen[0]) << shift), min(highest, ((int(seen[-1]) + 1) << shift) - 1)
        counts.append(ordered)
        low.append(lowest)
        high.append(highest)
    return replace(merged, counts=tuple(counts), low=tuple(low), high=tuple(high))


@lru_cache(maxsize=64)
def _top_keys(dtype: np.dtype, bits: int) -> np.ndarray:
    """For each value of the top `bits` bits of a bit pattern, the top bits of its key (read-only)."""
    width = 8 * dtype.itemsize
    patterns = np.arange(1 << bits, dtype=f"u{dtype.itemsize}") << np.array(width - bits, f"u{dtype.itemsize}")
    top = (order_keys(patterns.view(dtype)) >> np.array(width - bits, patterns.dtype)).astype(np.intp)
    top.flags.writeable = False
    return top


@lru_cache(maxsize=64)
def _nonfinite_patterns(dtype: np.dtype, bits: int) -> tuple[slice, slice]:
    """The top `bits` bits of the bit patterns of a float dtype's infinities and NaNs (all exponent
    bits set), positive and negative: two ranges of a first pass's counts."""
    width = 8 * dtype.itemsize
    shift, sign = width - bits, 1 << (width - 1)
    inf = int(np.array(np.inf, dtype).view(f"u{dtype.itemsize}"))
    return slice(inf >> shift, (sign - 1 >> shift) + 1), slice((sign | inf) >> shift, ((1 << width) - 1 >> shift) + 1)


def _may_be_nonfinite(counts: np.ndarray, dtype: np.dtype, bits: int) -> bool:
    """Whether a block's first-pass counts (the patterns' order) may hold an infinity or a NaN."""
    return any(counts[part].any() for part in _nonfinite_patterns(dtype, bits))


def _nan_counts(raw: np.ndarray, dtype: np.dtype) -> tuple[int, int]:
    """How many NaN keys lie below -inf and above +inf."""
    low, high = _infinity_keys(dtype)
    keys = order_keys(raw.view(dtype))
    return int(np.count_nonzero(keys < low)), int(np.count_nonzero(keys > high))


_TABLE_BITS = 16  # the first look at a key's values is a table of the top bits of their keys


def _inside(cells: list[Cell], raw: np.ndarray, dtype: np.dtype) -> list:
    """The keys of the block inside each of one scope key's cells.

    Comparing every value with every cell would take a pass over the block per cell: instead a
    table of keys' top bits (16, or down to the narrowest cell) marks the ranges that hold a cell,
    one lookup of the bit patterns' top bits picks the few candidates, and only they are compared.
    """
    width = 8 * dtype.itemsize
    level = max(min(c.shift for c in cells), width - _TABLE_BITS)
    table = np.zeros(1 << (width - level), bool)
    for c in cells:  # a cell at or above the table's level covers a range of it, one below a single entry
        if c.shift >= level:
            table[c.prefix << (c.shift - level):(c.prefix + 1) << (c.shift - level)] = True
        else:
            table[c.prefix >> (level - c.shift)] = True
    top = scratch("top bits", raw.shape, np.intp)  # take() indexes by intp: shifted straight into it
    np.right_shift(raw, raw.dtype.type(level), out=top, casting="unsafe")
    candidates = order_keys(np.compress(table.take(_top_keys(dtype, width - level)).take(top), raw).view(dtype))
    if len(cells) == 1 and cells[0].shift == level:
        return [candidates]
    return [candidates[(candidates >> np.array(c.shift, candidates.dtype)) == c.prefix] for c in cells]


def _sample_quantiles(task: SampleTask, data: np.ndarray, first_sample: int) -> SampleResults:
    """np.percentile of each sample's values (np.nanpercentile of those holding NaN, if asked)."""
    request = task.request
    rows = task.layout.npc(np.asarray(data)).reshape(len(data), -1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN samples, and numpy's int8 lerp overflow
        together = np.percentile(rows, request.q, axis=1, method=request.method)
        per_sample = [together[..., i][()] for i in range(len(rows))]
        if request.ignore_nan and rows.dtype.kind == "f":
            for i in np.flatnonzero(np.isnan(rows).any(axis=1)):
                per_sample[i] = np.nanpercentile(rows[i], request.q, method=request.method)
    return SampleResults(((first_sample, tuple(per_sample)),))


# -- the state between passes -------------------------------------------------------------
@dataclass(frozen=True)
class Open:
    """A cell known to hold some wanted positions (indexes into the key-ordered values of its scope
    key, NaN keys below -inf counted): `below` values lie before it, `count` in it (None: not yet
    counted), its keys between `low` and `high`."""

    prefix: int
    shift: int
    below: int
    count: int | None
    low: int
    high: int
    positions: tuple[int, ...] = ()
    whole: bool = False  # the first cell of its key: it holds every value


@dataclass(frozen=True)
class KeyState:
    """One scope key's search: its open cells, the keys found at wanted positions, and the
    quantiles once every one is found."""

    cells: tuple[Open, ...]
    found: tuple[tuple[int, int], ...] = ()
    plan: Ranks | None = None  # None before the first pass has counted the values
    nan_below: int = 0
    done: bool = False
    result: object = None


@dataclass(frozen=True)
class State:
    """Everything the passes have learnt so far (plain, picklable data)."""

    request: Request
    dtype: str
    scope: Scope
    layout: Layout
    keys: tuple[KeyState, ...]
    passes: int = 0
    bits: int = 16  # per pass: fewer where many scope keys would hold too many counters

    @property
    def per_sample(self) -> bool:
        return self.scope.per_sample


def first(request: Request, dtype, scope: Scope, layout: Layout, keys: int) -> State:
    """The state before the first quantile pass, for `keys` scope keys of `dtype` data."""
    reason = refusal(scope)
    if reason:
        raise ValueError(reason)
    dtype = np.dtype(dtype).newbyteorder("=")  # blocks of a big-endian .npy are converted as they are read
    width = key_bits(dtype)
    bits = min(request.bits, _budget_bits(keys))
    if scope.per_sample:
        return State(request, dtype.str, scope, layout, tuple(KeyState(()) for _ in range(keys)), bits=bits)
    whole = Open(0, width, 0, None, 0, (1 << width) - 1, whole=True)
    return State(request, dtype.str, scope, layout, tuple(KeyState((whole,)) for _ in range(keys)), bits=bits)


def counted(state: State, value_counts: np.ndarray) -> State:
    """The state `first()` gave, finished by the value counts (keys, 2**bits) of 8/16-bit integers,
    counted from the type's minimum (moments.ValueCounts): no pass."""
    request, dtype = state.request, np.dtype(state.dtype)
    return replace(state, keys=tuple(_counted(request, dtype, row) for row in np.asarray(value_counts)))


def _budget_bits(cells: int) -> int:
    """The bits a pass may split each of `cells` cells into, for at most COUNTERS counters."""
    return max(1, (COUNTERS // max(cells, 1)).bit_length() - 1)


def _counted(request: Request, dtype: np.dtype, counts: np.ndarray) -> KeyState:
    """A key whose every value is counted (counts[i]: how often the i-th key occurs): no pass."""
    ends = np.cumsum(counts)
    if not ends[-1]:
        return KeyState((), done=True, result=_all_nan(request, dtype))
    plan = ranks(int(ends[-1]), request)
    return _found(KeyState((), plan=plan), [(r, int(np.searchsorted(ends, r, side="right"))) for r in plan.wanted],
                  request, dtype)


def next_task(state: State) -> Task | SampleTask | None:
    """The next pass, or None when every quantile is known."""
    if all(k.done for k in state.keys):
        return None
    if state.per_sample:
        return SampleTask(state.layout, state.request)
    limit = state.request.collect_limit
    splits = sum(c.count is None or c.count > limit for k in state.keys for c in k.cells)
    bits = min(state.bits, _budget_bits(splits))  # many cells (many q, many keys): fewer bits each
    cells = []
    for index, key in enumerate(state.keys):
        for cell in key.cells:
            collect = cell.count is not None and cell.count <= limit
            cells.append(Cell(index, cell.prefix, cell.shift, 0 if collect else min(bits, cell.shift), whole=cell.whole))
    count_nan = np.dtype(state.dtype).kind == "f" and any(not k.done and k.plan is None and k.cells[0].count is None
                                                          for k in state.keys)
    return Task(state.scope, state.layout, state.dtype, tuple(cells), count_nan)


def advance(state: State, merged: Partial | SampleResults) -> State:
    """The state after a pass whose blocks' partials, merged, are `merged`."""
    if state.per_sample:
        results = [r for _, run in sorted(merged.runs, key=lambda run: run[0]) for r in run]
        if len(results) != len(state.keys):
            raise ValueError("per-sample quantiles must cover every sample once")
        return replace(state, keys=tuple(KeyState((), done=True, result=r) for r in results),
                       passes=state.passes + 1)
    task = next_task(state)
    if task.cells[0].whole:
        merged = _in_key_order(task, merged)
    by_key: dict[int, list[int]] = {}
    for i, cell in enumerate(task.cells):
        by_key.setdefault(cell.key, []).append(i)
    keys = list(state.keys)
    for index, cell_indexes in by_key.items():
        keys[index] = _advance_key(state, keys[index], [(task.cells[i], merged, i) for i in cell_indexes],
                                   merged.nan_below[index], merged.nan_above[index])
    return replace(state, keys=tuple(keys), passes=state.passes + 1)


def _advance_key(state: State, key: KeyState, counted, nan_below: int, nan_above: int) -> KeyState:
    request, dtype = state.request, np.dtype(state.dtype)
    if key.plan is None:  # the first pass: now the values are counted, the wanted ranks are known
        (cell, merged, i), = counted
        total = len(merged.keys[i]) if merged.counts[i] is None else int(merged.counts[i].sum())
        n = total - nan_below - nan_above
        if n < total and not request.ignore_nan:  # numpy's NaN, of the dtype its result has
            plan = ranks(total, request)
            return KeyState((), done=True, result=finish({r: 0 for r in plan.wanted}, plan, request, dtype, True))
        if n == 0:
            return KeyState((), done=True, result=_all_nan(request, dtype))
        plan = ranks(n, request)
        root = replace(key.cells[0], count=total, positions=tuple(r + nan_below for r in plan.wanted))
        key = replace(key, cells=(root,), plan=plan, nan_below=nan_below)
    found = list(key.found)
    cells = []
    for (cell, merged, i), open_cell in zip(counted, key.cells):
        low, high = max(open_cell.low, merged.low[i]), min(open_cell.high, merged.high[i])
        if merged.counts[i] is None:
            ordered = np.sort(merged.keys[i])
            found += [(p, int(ordered[p - open_cell.below])) for p in open_cell.positions]
            continue
        counts = merged.counts[i]
        ends = np.cumsum(counts)
        groups: dict[int, list[int]] = {}
        for p in open_cell.positions:
            groups.setdefault(int(np.searchsorted(ends, p - open_cell.below, side="right")), []).append(p)
        shift = open_cell.shift - cell.bits
        for j, positions in groups.items():
            prefix = (open_cell.prefix << cell.bits) | j
            first_key, last_key = max(prefix << shift, low), min(((prefix + 1) << shift) - 1, high)
            if first_key == last_key:
                found += [(p, first_key) for p in positions]
                continue
            below = open_cell.below + (int(ends[j - 1]) if j else 0)
            narrow = (first_key ^ last_key).bit_length()  # the smallest aligned cell holding the keys seen
            cells.append(Open(first_key >> narrow, narrow, below, int(counts[j]), first_key, last_key,
                              tuple(positions)))
    key = replace(key, cells=tuple(cells))
    return _found(key, found, request, dtype) if not cells else replace(key, found=tuple(found))


def _found(key: KeyState, found, request: Request, dtype: np.dtype) -> KeyState:
    """The key with every wanted position's key found: its quantiles."""
    values = from_keys(np.array([k for _, k in found], np.uint64), dtype)
    order = {p - key.nan_below: v for (p, _), v in zip(found, values)}
    return replace(key, found=tuple(found), done=True, result=finish(order, key.plan, request, dtype))


def results(state: State) -> list:
    """Each scope key's quantiles, as np.percentile gives them (np.nanpercentile with ignore_nan)."""
    if not all(k.done for k in state.keys):
        raise ValueError("the quantile passes have not finished")
    return [k.result for k in state.keys]
