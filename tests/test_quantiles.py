"""Exact quantiles (normcli.quantiles) against np.percentile / np.nanpercentile on the whole array:
every dtype, method, scope, block split and merge grouping, bit for bit (dtype included)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from helpers import reference_rows
from normcli import quantiles as Q
from normcli.histograms import SMALL_INTEGERS, value_counts
from normcli.layout import Layout
from normcli.scopes import SCOPES

DTYPES = ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float16", "float32",
          "float64")
SHAPES = {"NHWC": 3, "NCHW": 3, "NHW": 2, "NC": 1, "N": 0}  # sample dimensions of each layout
# every test with the numpy kernels, and again with the compiled ones where numba is installed
pytestmark = pytest.mark.usefixtures("kernel_path")


# -- a sequential driver, as an engine would run the passes ---------------------------------
def merged(parts: list, rng: np.random.Generator):
    """The partials merged in a random order and grouping (a random binary tree)."""
    parts = [parts[i] for i in rng.permutation(len(parts))]
    while len(parts) > 1:
        i = int(rng.integers(len(parts) - 1))
        parts[i:i + 2] = [parts[i].merge(parts[i + 1])]
    return parts[0]


def run(x: np.ndarray, layout: str, scope: str, request: Q.Request, *, cuts=(), seed=0, counted=False, check=None):
    """Every pass of the quantiles of `x` over blocks cut at `cuts` (sample indexes): the results
    and the state. `counted`: the value counts of the stats pass finish the state at once."""
    rng = np.random.default_rng(seed)
    lay, sc = Layout(layout), SCOPES[scope]
    v = lay.npc(x)
    state = Q.first(request, x.dtype, sc, lay, sc.keys_of(v.shape))
    if counted:
        state = Q.counted(state, value_counts(v, 1 if sc.single_key else v.shape[2]))
    edges = [0, *sorted(set(cuts)), len(x)]
    while (task := Q.next_task(state)) is not None:
        parts = [Q.work(task, x[a:b], a) for a, b in zip(edges, edges[1:]) if b > a]
        whole = merged(parts, rng)
        if check:
            check(task, whole)
        state = Q.advance(state, whole)
    return Q.results(state), state


def reference(x, layout, scope, request):
    rows = reference_rows(x, layout, scope)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        percentile = np.nanpercentile if request.ignore_nan else np.percentile
        return [percentile(r, request.q, method=request.method) for r in rows]


def assert_same(got, want):
    """Equal dtype, shape and bits; NaN equals NaN (numpy's NaN payload is whichever NaN its
    partition left last) and 0.0 equals -0.0 (which one numpy's partition picks is arbitrary)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (got, want)
    both_nan = np.isnan(got) & np.isnan(want) if got.dtype.kind == "f" else np.zeros(got.shape, bool)
    zeros = (got == 0) & (want == 0)
    bits = f"u{got.dtype.itemsize}"
    same = got.view(bits) == want.view(bits) if got.dtype.kind in "fiu" else got == want
    assert np.all(same | both_nan | zeros), (got, want)


def check_all(x, layout, scope, request, **kw):
    got, state = run(x, layout, scope, request, **kw)
    want = reference(x, layout, scope, request)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert_same(g, w)
    return state


# -- strategies -------------------------------------------------------------------------------
def hostile(dtype: np.dtype):
    """Values of `dtype` that break careless arithmetic: extremes, ties, zeros of both signs,
    subnormals, infinities and NaN."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return st.one_of(st.integers(int(info.min), int(info.max)),
                         st.sampled_from([int(info.min), int(info.max), 0, 1, int(info.max) - 1]))
    info = np.finfo(dtype)
    special = [0.0, -0.0, float(info.max), -float(info.max), float(info.smallest_subnormal),
               -float(info.smallest_subnormal), float(info.tiny), np.inf, -np.inf, np.nan, 1.0, -1.0]
    return st.one_of(st.floats(width=8 * dtype.itemsize, allow_nan=True, allow_infinity=True),
                     st.sampled_from(special))


@st.composite
def arrays(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    layout = draw(st.sampled_from(tuple(SHAPES)))
    n = draw(st.integers(1, 9))
    sample = tuple(draw(st.lists(st.integers(1, 4), min_size=SHAPES[layout], max_size=SHAPES[layout])))
    pool = draw(st.lists(hostile(dtype), min_size=1, max_size=6))
    values = st.sampled_from(pool) if draw(st.booleans()) else hostile(dtype)  # heavy ties, or anything
    x = draw(hnp.arrays(dtype, (n, *sample), elements=values))
    return x, layout


QS = st.one_of(st.floats(0, 100), st.integers(0, 100),
               st.lists(st.one_of(st.floats(0, 100), st.sampled_from([0.0, 100.0, 50.0, 1.0, 99.0])),
                        min_size=1, max_size=5).map(tuple))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=arrays(), scope=st.sampled_from(["global", "channel", "sample"]), method=st.sampled_from(Q.METHODS),
       q=QS, ignore_nan=st.booleans(), bits=st.integers(1, 16), limit=st.integers(0, 12),
       cuts=st.lists(st.integers(1, 8), max_size=4), seed=st.integers(0, 2**16))
def test_equals_numpy_for_every_dtype_method_scope_and_split(data, scope, method, q, ignore_nan, bits, limit,
                                                            cuts, seed):
    x, layout = data
    request = Q.Request(q, method, ignore_nan, bits=bits, collect_limit=limit)
    check_all(x, layout, scope, request, cuts=[c for c in cuts if c < len(x)], seed=seed)


@settings(max_examples=100, deadline=None)
@given(dtype=st.sampled_from(["int8", "uint8", "int16", "uint16"]), scope=st.sampled_from(["global", "channel"]),
       method=st.sampled_from(Q.METHODS), q=QS, bits=st.integers(1, 16), data=st.data())
def test_small_integers_need_no_pass_given_value_counts(dtype, scope, method, q, bits, data):
    x = data.draw(hnp.arrays(np.dtype(dtype), (data.draw(st.integers(1, 6)), 3, 2, 3)))
    state = check_all(x, "NHWC", scope, Q.Request(q, method, bits=bits), counted=True)
    assert state.passes == 0


@settings(max_examples=150, deadline=None)
@given(data=arrays(), method=st.sampled_from(Q.METHODS), bits=st.integers(1, 16), limit=st.integers(0, 12),
       ignore_nan=st.booleans())
def test_every_pass_stays_within_its_bounds(data, method, bits, limit, ignore_nan):
    """No collected cell holds more than the limit, no pass more counters than its budget, and the
    passes never exceed the key's bits divided by the bits of a pass (ties refine, never collect)."""
    x, layout = data
    request = Q.Request((0.0, 1.0, 50.0, 99.0, 100.0), method, ignore_nan, bits=bits, collect_limit=limit)

    def check(task, whole):
        for cell, keys, counts in zip(task.cells, whole.keys, whole.counts):
            assert (keys is None) != (counts is None)
            assert keys is None or len(keys) <= limit
            assert counts is None or len(counts) == 1 << cell.bits <= 1 << bits

    state = check_all(x, layout, "global", request, check=check)
    assert state.passes <= math.ceil(8 * x.dtype.itemsize / state.bits)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", Q.METHODS)
def test_hostile_values_at_every_method(dtype, method):
    """One value; constant data; the extremes of the type together (int8's max - min overflows in
    numpy's own lerp: matched); zeros of both signs; both infinities; NaN with and without
    ignore_nan; all NaN."""
    dt = np.dtype(dtype)
    if dt.kind == "f":
        info = np.finfo(dt)
        cases = [[1.5], [7.0] * 9, [float(info.max), -float(info.max), 0.0], [-0.0, 0.0, -0.0, 1.0],
                 [np.inf, -np.inf, 1.0, 2.0], [np.inf, np.inf, 3.0], [np.nan, 1.0, 2.0, np.nan],
                 [np.nan, np.nan], [float(info.smallest_subnormal), -float(info.smallest_subnormal), 0.0]]
    else:
        info = np.iinfo(dt)
        cases = [[3], [5] * 9, [int(info.min), int(info.max)], [int(info.min), int(info.max), 0, int(info.max)]]
    for values in cases:
        x = np.array(values, dt)
        for q in (50, 0.0, 100, (0, 100, 50, 33.3, 99.9)):
            for ignore_nan in (False, True):
                for bits in (16, 3):
                    check_all(x, "N", "global", Q.Request(q, method, ignore_nan, bits=bits, collect_limit=1))


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64", "uint64", "int32"])
def test_a_large_block_set_with_ties_and_outliers(dtype):
    """Many values in many blocks with the default bits and limit, so that the passes are the real
    ones: 16-bit splits, then collection."""
    rng = np.random.default_rng(7)
    x = rng.normal(50, 20, size=(64, 32, 32, 3))
    x[::3] = np.round(x[::3])  # ties
    x[5, 0, 0] = 1e30 if dtype.startswith("float") else 0
    x = x.astype(dtype) if dtype.startswith("float") else np.clip(x, 0, None).astype(dtype) * 1000
    for method in ("linear", "lower", "nearest", "midpoint", "inverted_cdf", "median_unbiased"):
        request = Q.Request((0, 1, 25, 50, 75, 99, 100), method, collect_limit=1000)
        for scope in ("global", "channel"):
            state = check_all(x, "NHWC", scope, request, cuts=range(4, 64, 4))
            assert state.passes <= (2 if dtype in ("float32", "int32") else 4)


def test_many_quantiles_of_many_channels_split_into_fewer_bins(monkeypatch):
    """The counters of a pass stay within the budget: many cells split into fewer sub-cells each."""
    monkeypatch.setattr(Q, "COUNTERS", 1 << 10)
    x = np.random.default_rng(5).normal(size=(40, 7)).astype(np.float32)
    request = Q.Request(tuple(np.linspace(0, 100, 21)), collect_limit=2)

    def check(task, whole):
        assert sum(len(c) for c in whole.counts if c is not None) <= 1 << 10

    state = check_all(x, "NC", "channel", request, cuts=(13, 20), check=check)
    assert state.bits == 7


def test_keys_keep_the_order_of_values():
    for dtype in DTYPES:
        dt = np.dtype(dtype)
        if dt.kind == "f":
            info = np.finfo(dt)
            values = np.array([-np.inf, -info.max, -1, -info.tiny, -info.smallest_subnormal, -0.0, 0.0,
                               info.smallest_subnormal, info.tiny, 1, info.max, np.inf], dt)
        else:
            info = np.iinfo(dt)
            values = np.unique(np.array([info.min, info.min + 1, 0, 1, info.max - 1, info.max], dt))
        keys = Q.order_keys(values)
        assert keys.dtype.kind == "u" and np.all(np.diff(keys.astype(object)) > 0), dtype
        assert_same(Q.from_keys(keys, dt), values)


@pytest.mark.parametrize("dtype", ["int32", "uint32", "int64", "uint64"])
@pytest.mark.parametrize("where", ["min", "zero", "top bit", "max"])
def test_a_narrow_range_of_wide_integers_takes_one_pass_after_the_first(dtype, where):
    """The first pass (which the statistics pass takes) splits the whole key space by its top
    16 bits; a cell then shrinks to the smallest aligned cell holding its keys, so a range of
    20,000 anywhere, across a sign or top bit too, is found in one more pass."""
    info = np.iinfo(dtype)
    start = {"min": int(info.min), "zero": -10_000 if info.min else 0, "top bit": (int(info.max) + 1) // 2 - 10_000,
             "max": int(info.max) - 20_000}[where]
    x = np.random.default_rng(4).integers(0, 20_000, size=(300, 10, 10, 3)).astype(dtype) + np.array(start, dtype)
    for scope in ("global", "channel"):
        state = check_all(x, "NHWC", scope, Q.Request((0, 1, 50, 99, 100), collect_limit=1000), cuts=(100, 200))
        assert state.passes == 2, (dtype, where, scope)


def test_big_endian_data():
    x = np.random.default_rng(2).normal(size=(12, 5, 2)).astype(">f4")
    for scope in ("global", "channel"):
        got, _ = run(x, "NHW", scope, Q.Request((1, 50, 99), "hazen", collect_limit=3), cuts=(5,))
        want = reference(x.astype("<f4"), "NHW", scope, Q.Request((1, 50, 99), "hazen"))
        for g, w in zip(got, want):
            assert_same(g, w)


def test_pixel_scope_is_refused_with_a_reason():
    assert Q.refusal(SCOPES["pixel"]) and "memory" in Q.refusal(SCOPES["pixel"])
    assert all(Q.refusal(SCOPES[s]) is None for s in ("global", "channel", "sample"))
    with pytest.raises(ValueError, match="memory"):
        Q.first(Q.Request(50), "float32", SCOPES["pixel"], Layout("NHW"), 4)


def test_requests_are_checked():
    with pytest.raises(ValueError, match="method"):
        Q.Request(50, "median")
    for q in (-1, 100.5, (50, 101), float("nan")):
        with pytest.raises(ValueError, match=r"\[0, 100\]"):
            Q.Request(q)


def test_tasks_and_partials_pickle():
    import pickle

    x = np.random.default_rng(1).normal(size=(6, 4, 3)).astype(np.float32)
    request = Q.Request((1, 50, 99))
    for scope in ("global", "sample"):
        state = Q.first(request, x.dtype, SCOPES[scope], Layout("NHW"), 1 if scope == "global" else 6)
        task = Q.next_task(state)
        part = Q.work(pickle.loads(pickle.dumps(task)), x, 0)
        assert pickle.loads(pickle.dumps(part)) is not None


@pytest.mark.parametrize("engine", ["threads", "processes"])
def test_passes_on_an_engine(engine):
    """The passes' work runs on the engines' threads and worker processes (tasks and partials
    pickled), and their partials, merged in block order, give numpy's numbers."""
    from functools import partial, reduce

    from normcli.engine import open_engine

    x = np.random.default_rng(11).normal(size=(40, 8, 8, 3)).astype(np.float32)
    x[3] = np.round(x[3])
    lay, request = Layout("NHWC"), Q.Request((1, 50, 99), "median_unbiased", collect_limit=50)
    runner = open_engine(engine, workers=2)
    try:
        for scope in ("global", "channel"):
            state = Q.first(request, x.dtype, SCOPES[scope], lay, 1 if scope == "global" else 3)
            while (task := Q.next_task(state)) is not None:
                parts = runner.map(partial(Q.work, task), [x[i:i + 3] for i in range(0, len(x), 3)])
                state = Q.advance(state, reduce(lambda a, b: a.merge(b), parts))
            for got, want in zip(Q.results(state), reference(x, "NHWC", scope, request)):
                assert_same(got, want)
    finally:
        runner.close()
