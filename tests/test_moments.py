"""Moments and histograms: streaming statistics against exact and numpy references.

References are computed here from the raw values: exact rationals (Python ints / Fractions)
for count, mean and variance, numpy for min, max and histograms. Keys are grouped from the
axis names alone (never through normcli's own npc view), except that pixel-scope results
are put back into sample shape with Layout.to_sample (tested on its own in test_layout.py).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conftest import write_image
from normcli import moments, scratch
from normcli.errors import InputError, NonFiniteError
from normcli.layout import Layout
from normcli.moments import BlockStats, Moments, chan_merge, checked, measure_block, merge
from normcli.scopes import SCOPES as SCOPE_VALUES
from normcli.passes import measure
from normcli.sources import open_dataset

from helpers import SCOPES, merge_all, reference_rows

LAYOUTS = ("NHWC", "NCHW", "NHW", "NC", "N")
INT_DTYPES = (np.uint8, np.uint16, np.int16)
FLOAT_DTYPES = (np.float32, np.float64)
REL = 1e-12
EPS = np.finfo(np.float64).eps
# every test with the numpy kernels, and again with the compiled ones where numba is installed
pytestmark = pytest.mark.usefixtures("kernel_path")


# ----------------------------------------------------------------------------- references
def as_keys(values: np.ndarray, layout: str, scope: str, sample_shape) -> np.ndarray:
    """normcli's per-key values in reference_rows order (pixel keys back in sample order)."""
    if scope == "pixel":
        return Layout(layout).to_sample(np.asarray(values), sample_shape).reshape(-1)
    return np.asarray(values).reshape(-1)


def exact_row(row: np.ndarray, ddof: int = 0):
    """(count, mean, var) of one key, each the exact rational rounded once to float64."""
    values = row.tolist()  # Python ints or floats, exactly the stored values
    n = len(values)
    if row.dtype.kind in "iu":
        s1 = sum(values)
        s2 = sum(v * v for v in values)
        return n, s1 / n, (s2 * n - s1 * s1) / (n * (n - ddof)) if n > ddof else math.nan
    fractions = [Fraction(v) for v in values]
    mean = sum(fractions) / n
    m2 = sum((f - mean) ** 2 for f in fractions)
    return n, float(mean), float(m2 / (n - ddof)) if n > ddof else math.nan


def check_close(got: float, want: float, scale: float, what: str) -> None:
    """|got - want| <= 1e-12 |want|, with an absolute floor of a few float64 ulps of the data's
    magnitude `scale` (the rounding of the mean itself: no float64 algorithm does better), and
    never below one subnormal step (the mean of [5e-324, 0] rounds to either neighbour)."""
    if math.isnan(want):
        assert math.isnan(got), f"{what}: got {got!r}, want NaN"
        return
    floor = max(scale, float(np.finfo(np.float64).smallest_subnormal))
    assert abs(got - want) <= REL * abs(want) + floor, f"{what}: got {got!r}, want {want!r}"


def check_moments(m: Moments, x: np.ndarray, layout: str, scope: str, *, ddof: int = 0) -> None:
    sample_shape = x.shape[1:]
    rows = reference_rows(x, layout, scope)
    count = as_keys(m.count, layout, scope, sample_shape)
    mean = as_keys(m.mean, layout, scope, sample_shape)
    var = as_keys(m.var(ddof), layout, scope, sample_shape)
    low = as_keys(m.min, layout, scope, sample_shape)
    high = as_keys(m.max, layout, scope, sample_shape)
    assert len(count) == len(rows)
    exact = x.dtype.kind in "iu"
    for k, row in enumerate(rows):
        n, want_mean, want_var = exact_row(row, ddof)
        assert count[k] == n
        assert low[k] == row.min() and high[k] == row.max()
        if exact:
            assert mean[k] == want_mean, f"mean of key {k}: {mean[k]!r} != {want_mean!r}"
            assert var[k] == want_var or (math.isnan(want_var) and math.isnan(var[k])), \
                f"var of key {k}: {var[k]!r} != {want_var!r}"
        else:
            big = float(np.max(np.abs(row.astype(np.float64))))
            check_close(mean[k], want_mean, 16 * EPS * big, f"mean of key {k}")
            check_close(var[k], want_var, (16 * EPS * big) ** 2, f"var of key {k}")


def accumulate(x: np.ndarray, layout: str, scope: str, cuts, *, ignore_nan=False) -> BlockStats:
    """Every chunk of x split at `cuts` (sample indices) measured, then merged in order."""
    bounds = [0, *cuts, len(x)]
    return merge_all([measure_block(x[a:b], SCOPE_VALUES[scope], Layout(layout), first_sample=a, ignore_nan=ignore_nan)
                      for a, b in zip(bounds[:-1], bounds[1:])])


def measure_file(x: np.ndarray, layout: str, scope: str, max_bytes: int, **kwargs):
    """normcli.passes.measure on x saved as .npy and read in chunks of about `max_bytes`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npy"
        np.save(path, x)
        with open_dataset([str(path)], layout=layout) as opened:
            dataset = replace(opened, block_bytes=max_bytes)
            sizes = [block.count for block in dataset.blocks()]
            return measure(dataset, scope, **kwargs), sizes


# ----------------------------------------------------------------------------- strategies
def elements_for(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        # bounded, so that sums of squares stay finite; every mantissa still possible
        return st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=8 * dtype.itemsize)
    return None  # the dtype's whole range


@st.composite
def arrays_in_layouts(draw, dtypes=INT_DTYPES + FLOAT_DTYPES, max_side=4, max_samples=8):
    layout = draw(st.sampled_from(LAYOUTS))
    dtype = draw(st.sampled_from(dtypes))
    shape = (draw(st.integers(1, max_samples)), *(draw(st.integers(1, max_side)) for _ in layout[1:]))
    x = draw(hnp.arrays(dtype, shape, elements=elements_for(dtype)))
    return layout, x


@st.composite
def cut_points(draw, n):
    """Strictly increasing inner cut points: chunks of at least one sample."""
    return sorted(draw(st.sets(st.integers(1, n - 1), max_size=n - 1))) if n > 1 else []


# ----------------------------------------------------------------------------- 1. moments
@settings(max_examples=150, deadline=None)
@given(arrays_in_layouts(), st.sampled_from(SCOPES), st.data())
def test_accumulator_matches_exact_reference_whatever_the_chunks(case, scope, data):
    layout, x = case
    cuts = data.draw(cut_points(len(x)))
    m = accumulate(x, layout, scope, cuts).aggregate()
    check_moments(m, x, layout, scope)


@settings(max_examples=60, deadline=None)
@given(arrays_in_layouts(), st.sampled_from(SCOPES), st.data())
def test_unbiased_variance_matches_exact_reference(case, scope, data):
    layout, x = case
    cuts = data.draw(cut_points(len(x)))
    m = accumulate(x, layout, scope, cuts).aggregate()
    check_moments(m, x, layout, scope, ddof=1)


@settings(max_examples=80, deadline=None)
@given(arrays_in_layouts(), st.sampled_from(SCOPES), st.data())
def test_measure_on_a_dataset_matches_exact_reference_whatever_the_chunk_size(case, scope, data):
    layout, x = case
    sample_bytes = x[0].nbytes
    max_bytes = data.draw(st.integers(1, x.nbytes + sample_bytes), label="max_bytes")
    stats, sizes = measure_file(x, layout, scope, max_bytes, bins=0)
    # the chunking really is the one asked for: whole samples, about max_bytes each
    assert sum(sizes) == len(x)
    assert all(s * sample_bytes <= max(max_bytes, sample_bytes) for s in sizes)
    assert stats.samples == len(x) and stats.layout == layout and stats.scope == scope
    assert stats.dtype == str(x.dtype)
    check_moments(stats.moments, x, layout, scope)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(INT_DTYPES), st.integers(1, 300), st.data())
def test_integer_inputs_are_exact_on_long_rows(dtype, n, data):
    """Long integer rows: the exact mean and variance, rounded once, bit for bit."""
    x = data.draw(hnp.arrays(dtype, (n, 2)))
    cuts = data.draw(cut_points(n))
    m = accumulate(x, "NC", "channel", cuts).aggregate()
    for c in range(2):
        col = [int(v) for v in x[:, c]]
        s1, s2 = sum(col), sum(v * v for v in col)
        assert m.mean[c] == s1 / n
        assert m.var()[c] == (s2 * n - s1 * s1) / (n * n)
        assert m.m2[c] == (s2 * n - s1 * s1) / n


def test_integer_extremes_do_not_overflow():
    """Full-range values: squares of 65535 or -32768 summed over many samples stay exact."""
    for dtype in INT_DTYPES:
        info = np.iinfo(dtype)
        x = np.array([info.min, info.max] * 50_000 + [info.max], dtype=dtype)
        m = accumulate(x, "N", "global", [12345, 70000]).aggregate()
        n, want_mean, want_var = exact_row(x)
        assert m.count[0] == n and m.mean[0] == want_mean and m.var()[0] == want_var
        assert (m.min[0], m.max[0]) == (info.min, info.max)


# --------------------------------------------------------------- the large offset (1e9 + noise)
@pytest.fixture(scope="module")
def offset_data():
    rng = np.random.default_rng(2024)
    noise = rng.normal(0.0, 1.0, 1_000_000)
    x = 1e9 + noise
    centred = x - 1e9
    # x - 1e9 is exact (Sterbenz: both within a factor 2), so np.var(centred) is the float64
    # two-pass variance of x itself, without any cancellation.
    assert np.array_equal(centred + 1e9, x)
    return x, float(np.var(centred)), 1e9 + float(np.mean(centred))


def rel_err(got, want):
    return abs(got - want) / abs(want)


def test_naive_sum_of_squares_fails_on_the_offset_data(offset_data):
    """The reference and tolerance below can tell a bad algorithm from a good one."""
    x, var_ref, _ = offset_data
    n = len(x)
    naive = (np.sum(x * x) - np.sum(x) ** 2 / n) / n
    assert not rel_err(naive, var_ref) <= 1e-3
    # plain np.var (two-pass, pairwise sums) is fine: the reference is not the only good answer
    assert rel_err(np.var(x), var_ref) <= 1e-6


@pytest.mark.parametrize("chunk", [1_000_000, 999_999, 262_144, 65_537, 10_007, 4_096, 1_000, 777])
def test_large_offset_variance_whatever_the_chunk_size(offset_data, chunk):
    x, var_ref, mean_ref = offset_data
    m = accumulate(x, "N", "global", list(range(chunk, len(x), chunk))).aggregate()
    assert m.count[0] == len(x)
    assert rel_err(m.var()[0], var_ref) <= REL
    assert rel_err(m.mean[0], mean_ref) <= REL
    assert m.min[0] == x.min() and m.max[0] == x.max()


@pytest.mark.parametrize("chunk", [1_000_000, 12_345, 1_000])
def test_large_offset_sorted_data(offset_data, chunk):
    """Sorted data drifts away from the first chunk's shift: still no cancellation."""
    x, var_ref, mean_ref = offset_data
    x = np.sort(x)
    m = accumulate(x, "N", "global", list(range(chunk, len(x), chunk))).aggregate()
    assert rel_err(m.var()[0], var_ref) <= REL
    assert rel_err(m.mean[0], mean_ref) <= REL


@pytest.mark.parametrize("scope", ["channel", "pixel"])
@pytest.mark.parametrize("chunk", [250_000, 4_099, 100])
def test_large_offset_per_key(offset_data, scope, chunk):
    """Four keys with offsets of both signs, each against its own exact-shift reference."""
    x, _, _ = offset_data
    offsets = np.array([1e9, -1e9, 1e6, 0.0])
    noise = (x - 1e9).reshape(-1, 4)
    data = noise + offsets
    assert np.array_equal(data - offsets, noise)  # each column's shift is exact too
    m = accumulate(data, "NC", scope, list(range(chunk, len(data), chunk))).aggregate()
    np.testing.assert_array_equal(m.count, len(data))
    for c in range(4):
        assert rel_err(m.var()[c], np.var(noise[:, c])) <= REL
    for c in range(3):
        assert rel_err(m.mean[c], offsets[c] + np.mean(noise[:, c])) <= REL
    assert abs(m.mean[3] - np.mean(noise[:, 3])) <= 1e-15


@pytest.mark.parametrize("chunk", [5_000, 333, 1])
def test_large_offset_per_sample(offset_data, chunk):
    """Each sample with its own large offset (alternating sign), chunks of any size."""
    x, _, _ = offset_data
    offsets = np.where(np.arange(5000) % 2, -1e9, 1e9) * (1 + np.arange(5000) % 3)
    data = (x[:200_000] - 1e9).reshape(-1, 40) + offsets[:, None]
    noise = data - offsets[:, None]  # exact (Sterbenz): the data's own deviations from its offset
    assert np.array_equal(noise + offsets[:, None], data)
    m = accumulate(data, "NC", "sample", list(range(chunk, len(data), chunk))).aggregate()
    np.testing.assert_array_equal(m.count, 40)
    want_var = np.var(noise, axis=1)
    assert (np.abs(m.var() - want_var) <= REL * want_var).all()
    want_mean = offsets + np.mean(noise, axis=1)
    assert (np.abs(m.mean - want_mean) <= REL * np.abs(want_mean)).all()


def test_uint16_sums_do_not_wrap_over_billions_of_values():
    """5e9 values of 65535 (a 10 GB uint16 dataset, as 5000 chunks of 1e6): sums of squares pass
    2**64, so they must not be kept in 64-bit integers across chunks."""
    chunk = np.full((1_000_000,), 65535, np.uint16)
    partial = measure_block(chunk, SCOPE_VALUES["global"], Layout("N"))
    m = merge_all([partial] * 5000).aggregate()
    assert m.count[0] == 5_000_000_000
    assert m.mean[0] == 65535.0 and m.var()[0] == 0.0


def test_large_offset_through_a_dataset(offset_data, tmp_path):
    x, var_ref, mean_ref = offset_data
    path = tmp_path / "offset.npy"
    np.save(path, x.reshape(-1, 10))
    for max_bytes in (80 * 9_999, 80 * 1_000):
        with open_dataset([str(path)]) as dataset:
            stats = measure(replace(dataset, block_bytes=max_bytes), "global", bins=0)
        assert rel_err(stats.moments.var()[0], var_ref) <= REL
        assert rel_err(stats.moments.mean[0], mean_ref) <= REL


# ----------------------------------------------------------------------------- 2. merging
@settings(max_examples=60, deadline=None)
@given(arrays_in_layouts(dtypes=FLOAT_DTYPES + INT_DTYPES, max_samples=12), st.sampled_from(["global", "channel", "pixel"]),
       st.data())
def test_merging_two_halves_equals_one_run(case, scope, data):
    layout, x = case
    assume(len(x) >= 2)
    split = data.draw(st.integers(1, len(x) - 1), label="split")
    whole = accumulate(x, layout, scope, []).aggregate()
    first = accumulate(x[:split], layout, scope, []).aggregate()
    second = accumulate(x[split:], layout, scope, []).aggregate()
    merged = first.merge(second)
    np.testing.assert_array_equal(merged.count, whole.count)
    np.testing.assert_array_equal(merged.min, whole.min)
    np.testing.assert_array_equal(merged.max, whole.max)
    values = x.astype(np.float64)
    big, spread = float(np.max(np.abs(values))), float(np.ptp(values))
    # A merge takes each half's float64 mean as it is (the contract's limit for merged files): each
    # mean is off by up to EPS * big / 2, which moves the variance by up to about EPS * big * spread.
    # Far from zero (-999707 with a spread of 22) that is above 1e-12, and no merge of means can do better.
    merge_floor = 16 * EPS * big * spread
    for k in range(len(whole)):
        check_close(merged.mean[k], whole.mean[k], 16 * EPS * big, f"mean of key {k}")
        check_close(merged.var()[k], whole.var()[k], (16 * EPS * big) ** 2 + merge_floor, f"var of key {k}")
    if x.dtype.kind == "f" and big <= 4 * spread:  # no large offset: the merge is the exact result too
        check_moments(merged, x, layout, scope)


def test_merge_of_normal_halves_within_1e12():
    rng = np.random.default_rng(7)
    x = rng.normal(3.0, 2.0, (20_000, 3))
    whole = accumulate(x, "NC", "channel", []).aggregate()
    merged = accumulate(x[:7_001], "NC", "channel", []).aggregate().merge(
        accumulate(x[7_001:], "NC", "channel", []).aggregate())
    np.testing.assert_array_equal(merged.count, whole.count)
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=REL, atol=0)
    np.testing.assert_allclose(merged.var(), whole.var(), rtol=REL, atol=0)
    np.testing.assert_allclose(merged.var(), np.var(x, axis=0), rtol=REL, atol=0)


def test_chan_merge_with_empty_sides():
    n = np.array([0, 5, 0, 3])
    mean = np.array([0.0, 2.5, 0.0, -1.0])
    m2 = np.array([0.0, 10.0, 0.0, 4.0])
    zeros_n, zeros = np.zeros(4, np.int64), np.zeros(4)
    for args in ((zeros_n, zeros, zeros, n, mean, m2), (n, mean, m2, zeros_n, zeros, zeros)):
        count, got_mean, got_m2 = chan_merge(*args)
        np.testing.assert_array_equal(count, n)
        np.testing.assert_array_equal(got_mean[n > 0], mean[n > 0])
        np.testing.assert_array_equal(got_m2, m2)
    count, got_mean, got_m2 = chan_merge(zeros_n, zeros, zeros, zeros_n, zeros, zeros)
    np.testing.assert_array_equal(count, 0)
    np.testing.assert_array_equal(got_m2, 0.0)
    assert np.isfinite(got_mean).all()


def test_chan_merge_is_the_pooled_statistics():
    rng = np.random.default_rng(1)
    a, b = rng.normal(5, 3, 101), rng.normal(-2, 1, 57)
    count, mean, m2 = chan_merge(np.array([101]), np.array([a.mean()]), np.array([np.var(a) * 101]),
                                 np.array([57]), np.array([b.mean()]), np.array([np.var(b) * 57]))
    both = np.concatenate([a, b])
    assert count[0] == 158
    assert rel_err(mean[0], both.mean()) <= REL
    assert rel_err(m2[0] / count[0], np.var(both)) <= REL


def test_merge_with_empty_moments_keeps_the_other_side():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (30, 2))
    m = accumulate(x, "NC", "channel", []).aggregate()
    for merged in (Moments.empty(2).merge(m), m.merge(Moments.empty(2))):
        np.testing.assert_array_equal(merged.count, m.count)
        np.testing.assert_array_equal(merged.mean, m.mean)
        np.testing.assert_array_equal(merged.m2, m.m2)
        np.testing.assert_array_equal(merged.min, m.min)
        np.testing.assert_array_equal(merged.max, m.max)


# ----------------------------------------------------------------------------- 3. NaN / inf
def test_nonfinite_without_ignore_nan_counts_and_locates(tmp_path):
    x = np.random.default_rng(0).normal(0, 1, (12, 3, 2, 2))
    x[5, 0, 1, 1] = np.nan
    x[9, 2, 0, 0] = np.nan
    x[7, 1, 1, 0] = np.inf
    x[11, 0, 0, 1] = -np.inf
    path = tmp_path / "bad.npy"
    np.save(path, x)
    # chunks of 2 samples: the first bad sample is not in the first chunk
    with open_dataset([str(path)]) as dataset:
        with pytest.raises(NonFiniteError) as info:
            measure(replace(dataset, block_bytes=x[0].nbytes * 2), "channel", bins=0)
    message = str(info.value)
    assert "\n" not in message
    assert "2 NaN" in message and "1 +inf" in message and "1 -inf" in message
    assert "sample 5" in message
    assert str(path) in message and info.value.path == str(path)
    assert "--ignore-nan" in message
    assert isinstance(info.value, InputError)


def test_nonfinite_message_mentions_only_what_is_there(tmp_path):
    x = np.ones((4, 3), np.float32)
    x[2, 1] = np.nan
    path = tmp_path / "one.npy"
    np.save(path, x)
    with open_dataset([str(path)]) as dataset:
        with pytest.raises(NonFiniteError, match=r"1 NaN value, first in sample 2") as info:
            measure(dataset, "global", bins=0)
    assert "inf" not in str(info.value)


def test_nonfinite_in_a_later_input_names_that_input(tmp_path):
    good, bad = np.zeros((4, 2)), np.zeros((3, 2))
    bad[1, 0] = -np.inf
    np.save(tmp_path / "good.npy", good)
    np.save(tmp_path / "bad.npy", bad)
    with open_dataset([str(tmp_path / "good.npy"), str(tmp_path / "bad.npy")]) as dataset:
        with pytest.raises(NonFiniteError) as info:
            measure(dataset, "sample", bins=0)
    message = str(info.value)
    assert "1 -inf" in message and "sample 5" in message  # global sample index
    assert str(tmp_path / "bad.npy") in message and str(tmp_path / "good.npy") not in message


def test_nonfinite_in_an_image_folder_names_the_image(tmp_path):
    root = tmp_path / "tiffs"
    rng = np.random.default_rng(0)
    for name in ("a/0.tif", "a/1.tif", "b/2.tif"):
        image = rng.normal(0, 1, (4, 5)).astype(np.float32)
        if name == "a/1.tif":
            image[2, 3] = np.nan
        write_image(root / name, image)
    with open_dataset([str(root)]) as dataset:
        with pytest.raises(NonFiniteError) as info:
            measure(dataset, "global", bins=0)
    assert "1 NaN" in str(info.value) and "sample 1" in str(info.value) and "a/1.tif" in str(info.value)


@st.composite
def arrays_with_nonfinite(draw):
    layout, x = draw(arrays_in_layouts(dtypes=FLOAT_DTYPES))
    mask = draw(hnp.arrays(np.int8, x.shape, elements=st.sampled_from([0, 0, 0, 1, 2, 3])))
    x = x.copy()
    x[mask == 1] = np.nan
    x[mask == 2] = np.inf
    x[mask == 3] = -np.inf
    return layout, x


@pytest.mark.filterwarnings("error::RuntimeWarning")  # no numpy noise on the user's terminal
@settings(max_examples=120, deadline=None)
@given(arrays_with_nonfinite(), st.sampled_from(SCOPES), st.data())
def test_ignore_nan_equals_nan_reductions_on_the_finite_values(case, scope, data):
    layout, x = case
    cuts = data.draw(cut_points(len(x)))
    m = checked(accumulate(x, layout, scope, cuts, ignore_nan=True), lambda i: ("x.npy", i),
                ignore_nan=True)  # never raises with ignore_nan
    sample_shape = x.shape[1:]
    finite_only = np.where(np.isfinite(x), x.astype(np.float64), np.nan)
    rows = reference_rows(finite_only, layout, scope)
    count = as_keys(m.count, layout, scope, sample_shape)
    mean = as_keys(m.mean, layout, scope, sample_shape)
    var = as_keys(m.var(), layout, scope, sample_shape)
    low = as_keys(m.min, layout, scope, sample_shape)
    high = as_keys(m.max, layout, scope, sample_shape)
    for k, row in enumerate(rows):
        values = row[~np.isnan(row)]
        assert count[k] == len(values)
        if not len(values):  # np.nanmean / np.nanvar of nothing: NaN
            assert math.isnan(mean[k]) and math.isnan(var[k]), (mean[k], var[k])
            continue
        assert low[k] == np.nanmin(row) and high[k] == np.nanmax(row)
        _, want_mean, want_var = exact_row(values)
        big = float(np.max(np.abs(values)))
        check_close(mean[k], want_mean, 16 * EPS * big, f"mean of key {k}")
        check_close(var[k], want_var, (16 * EPS * big) ** 2, f"var of key {k}")
        tiny = float(np.finfo(np.float64).smallest_subnormal)
        np.testing.assert_allclose(mean[k], np.nanmean(row), rtol=1e-9, atol=max(1e-9 * big, tiny))
        np.testing.assert_allclose(var[k], np.nanvar(row), rtol=1e-9, atol=(1e-9 * big) ** 2)


def test_ignore_nan_through_measure(tmp_path):
    x = np.random.default_rng(5).normal(10, 2, (40, 3)).astype(np.float32)
    x[3, 0] = np.nan
    x[17, 2] = np.inf
    x[30:, 1] = -np.inf
    path = tmp_path / "x.npy"
    np.save(path, x)
    with open_dataset([str(path)]) as dataset:
        stats = measure(dataset, "channel", bins=8, ignore_nan=True)
    finite = np.where(np.isfinite(x), x.astype(np.float64), np.nan)
    np.testing.assert_array_equal(stats.moments.count, np.isfinite(x).sum(axis=0))
    np.testing.assert_allclose(stats.moments.mean, np.nanmean(finite, axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.moments.var(), np.nanvar(finite, axis=0), rtol=1e-10)
    np.testing.assert_array_equal(stats.moments.min, np.nanmin(finite, axis=0))
    np.testing.assert_array_equal(stats.moments.max, np.nanmax(finite, axis=0))
    for c in range(3):
        col = x[:, c][np.isfinite(x[:, c])]
        want, _ = np.histogram(col, 8, range=(col.min(), col.max()))
        np.testing.assert_array_equal(stats.histograms.counts[c], want)


# ----------------------------------------------------------------------------- 4. histograms
def reference_histograms(x, layout, scope, bins, hist_range=None):
    # in float64, like the edges normcli reports (np.histogram of float32 data with float32
    # range bounds would bin against float32 edges instead)
    x = x.astype(np.float64)
    rows = [x.reshape(-1)] if scope == "pixel" else reference_rows(x, layout, scope)
    out = []
    for row in rows:
        lo, hi = hist_range if hist_range is not None else (row.min(), row.max())
        try:
            counts, edges = np.histogram(row, bins, range=(float(lo), float(hi)))
        except ValueError:  # numpy gives up on a range too narrow for `bins` edges: normcli widens it by
            counts, edges = np.histogram(row, bins, range=(float(lo) - 0.5, float(hi) + 0.5))  # 0.5, as for one value
        out.append((counts, edges))
    return out


HIST_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)


@settings(max_examples=100, deadline=None)
@given(arrays_in_layouts(dtypes=HIST_DTYPES), st.sampled_from(SCOPES), st.integers(1, 40), st.data())
def test_histograms_equal_numpy_per_row(case, scope, bins, data):
    layout, x = case
    max_bytes = data.draw(st.integers(1, x.nbytes + 1), label="max_bytes")
    stats, _ = measure_file(x, layout, scope, max_bytes, bins=bins)
    hist = stats.histograms
    want = reference_histograms(x, layout, scope, bins)
    assert hist.counts.shape == (len(want), bins)
    for k, (counts, edges) in enumerate(want):
        np.testing.assert_array_equal(hist.counts[k], counts, err_msg=f"row {k}")
        np.testing.assert_allclose(hist.edges[k], edges, rtol=1e-15, atol=0)
    # every value is in some bin
    if scope == "pixel":
        assert hist.counts.sum() == stats.moments.count.sum()
    else:
        np.testing.assert_array_equal(hist.counts.sum(axis=1), stats.moments.count)


@st.composite
def ranges(draw):
    lo = draw(st.floats(-40_000, 70_000, allow_nan=False))
    width = draw(st.floats(0.5, 70_000, allow_nan=False))
    return lo, lo + width


@settings(max_examples=80, deadline=None)
@given(arrays_in_layouts(dtypes=HIST_DTYPES), st.sampled_from(SCOPES), st.integers(1, 40), ranges(), st.data())
def test_histograms_with_a_given_range_equal_numpy(case, scope, bins, hist_range, data):
    layout, x = case
    max_bytes = data.draw(st.integers(1, x.nbytes + 1), label="max_bytes")
    stats, _ = measure_file(x, layout, scope, max_bytes, bins=bins, hist_range=hist_range)
    want = reference_histograms(x, layout, scope, bins, hist_range)
    for k, (counts, edges) in enumerate(want):
        np.testing.assert_array_equal(stats.histograms.counts[k], counts, err_msg=f"row {k}")
        np.testing.assert_array_equal(stats.histograms.edges[k], edges)


def test_integer_histogram_edge_values_and_outside_range(tmp_path):
    """Values on edges go right, the top edge is closed, values outside are left out (numpy's rule)."""
    x = np.arange(256, dtype=np.uint8).reshape(16, 16)
    path = tmp_path / "u8.npy"
    np.save(path, x)
    for hist_range, bins in (((0, 255), 5), ((10, 20), 10), ((10.5, 19.5), 3), ((-5, 300), 7)):
        with open_dataset([str(path)]) as dataset:
            stats = measure(dataset, "global", bins=bins, hist_range=hist_range)
        want, _ = np.histogram(x, bins, range=hist_range)
        np.testing.assert_array_equal(stats.histograms.counts[0], want)


def test_constant_rows_histogram_like_numpy(tmp_path):
    x = np.full((5, 4), 7.25)
    path = tmp_path / "c.npy"
    np.save(path, x)
    with open_dataset([str(path)]) as dataset:
        stats = measure(dataset, "sample", bins=4)
    for k in range(5):
        counts, edges = np.histogram(x[k], 4, range=(7.25, 7.25))
        np.testing.assert_array_equal(stats.histograms.counts[k], counts)
        np.testing.assert_array_equal(stats.histograms.edges[k], edges)
    assert (stats.moments.var() == 0).all()


def test_a_range_too_narrow_for_the_bins_gets_numpys_single_value_edges(tmp_path):
    """np.histogram gives up ("Too many bins for data range") on [1e9, 1e9 + 1 ulp]; stats must not."""
    x = np.array([1e9, np.nextafter(1e9, 2e9)])
    np.save(tmp_path / "narrow.npy", x)
    with open_dataset([str(tmp_path / "narrow.npy")]) as dataset:
        stats = measure(dataset, "global", bins=30)
    edges = stats.histograms.edges[0]
    np.testing.assert_array_equal(edges, np.histogram_bin_edges([], 30, range=(x[0] - 0.5, x[1] + 0.5)))
    assert stats.histograms.counts[0].sum() == 2


# ----------------------------------------------------------------------------- associativity
@st.composite
def merge_trees(draw, leaves: int):
    """A random binary grouping of `leaves` consecutive items: nested pairs of leaf indices."""
    def build(lo, hi):
        if hi - lo == 1:
            return lo
        cut = draw(st.integers(lo + 1, hi - 1))
        return (build(lo, cut), build(cut, hi))
    return build(0, leaves)


@settings(max_examples=60, deadline=None)
@given(st.data(), st.sampled_from(SCOPES), st.sampled_from([np.float32, np.float64]))
def test_any_grouping_of_merges_equals_the_sequential_one_far_from_zero(data, scope, dtype):
    """Blocks of 1e9 + noise measured alone and merged as any tree: the same numbers as merging
    them one after the other, within 1e-12 relative (mean and variance)."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    n = data.draw(st.integers(2, 40))
    offset = 1e9 if dtype == np.float64 else 1e4  # float32 holds 1e4 + noise to 7 digits
    x = (offset + rng.normal(0.0, 1.0, (n, 3, 2))).astype(dtype)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, n - 1), max_size=n - 1))))
    bounds = [0, *cuts, n]
    parts = [measure_block(x[a:b], SCOPE_VALUES[scope], Layout("NHW"), first_sample=a)
             for a, b in zip(bounds[:-1], bounds[1:])]
    tree = data.draw(merge_trees(len(parts)))

    def fold(node):
        return parts[node] if isinstance(node, int) else merge(fold(node[0]), fold(node[1]))

    sequential, grouped = merge_all(parts).aggregate(), fold(tree).aggregate()
    np.testing.assert_array_equal(grouped.count, sequential.count)
    assert (np.abs(grouped.mean - sequential.mean) <= 1e-12 * np.abs(sequential.mean)).all()
    seq_var, tree_var = sequential.var(), grouped.var()
    assert (np.abs(tree_var - seq_var) <= 1e-12 * seq_var).all()
    np.testing.assert_array_equal(grouped.min, sequential.min)
    np.testing.assert_array_equal(grouped.max, sequential.max)
    if scope == "global" and dtype == np.float64:  # and both match an exact reference
        exact = [Fraction(float(v)) for v in x.reshape(-1)]
        mean = sum(exact) / len(exact)
        var = sum((v - mean) ** 2 for v in exact) / len(exact)
        assert abs(Fraction(float(grouped.var()[0])) - var) <= Fraction(1, 10**12) * var


@pytest.mark.parametrize("dtype", [np.int32, np.uint32, np.int64, np.uint64])
@pytest.mark.parametrize("scope", SCOPES)
def test_wide_integers_are_exact_at_their_extremes(dtype, scope, rng):
    """Integers wider than 16 bits: exact sums (no float64 rounding, no wrapping), exact extremes."""
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max, (9, 4, 3), dtype=dtype, endpoint=True)
    x[0, 0, 0], x[1, 1, 1], x[2, 2, 2] = info.max, info.min, info.max
    m = accumulate(x, "NHW", scope, [2, 5]).aggregate()
    rows = reference_rows(x, "NHW", scope)
    for k, row in enumerate(rows):
        values = [int(v) for v in np.asarray(row).reshape(-1)]
        mean = Fraction(sum(values), len(values))
        var = sum((Fraction(v) - mean) ** 2 for v in values) / len(values)
        assert m.mean[k] == float(mean) and m.var()[k] == float(var)
        assert int(m.min[k]) == min(values) and int(m.max[k]) == max(values)


def test_wide_integer_extremes_in_json(tmp_path):
    from conftest import run_cli

    np.save(tmp_path / "u64.npy", np.array([2**64 - 1, 0, 3], dtype=np.uint64))
    np.save(tmp_path / "i64.npy", np.array([2**63 - 1, -2**63, 5], dtype=np.int64))
    for name, low, high in (("u64.npy", 0, 2**64 - 1), ("i64.npy", -2**63, 2**63 - 1)):
        row = json.loads(run_cli("stats", tmp_path / name, "--format", "json").stdout)["rows"][0]
        assert (row["min"], row["max"]) == (low, high)


@pytest.mark.parametrize("scope", SCOPES)
def test_a_variance_beyond_float64_is_an_error_not_zeros(tmp_path, scope):
    from conftest import run_cli

    np.save(tmp_path / "huge.npy", np.array([[1e200, -1e200], [3e200, 2e200]]))
    result = run_cli("standardize", tmp_path / "huge.npy", "-o", tmp_path / "z.npy", "--per", scope, ok=False)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: values too large to add up or square in float64")
    assert not (tmp_path / "z.npy").exists()


def _exact_var(row) -> float:
    fractions = [Fraction(v) for v in row.tolist()]
    mean = sum(fractions) / len(fractions)
    return float(sum((f - mean) ** 2 for f in fractions) / len(fractions))


@pytest.fixture(scope="module")
def far_probe_samples():
    """Twelve samples of std 1e-3 at a 1e9 offset (where float64 steps by 1.2e-7); sample 3's first
    256 values (the shift's probe) sit 1 above the rest, so its block re-centres it on its mean."""
    rng = np.random.default_rng(18)
    x = 1e9 + rng.normal(0.0, 1e-3, (12, 600))
    x[3, :256] += 1.0
    return x.reshape(12, 20, 30), [_exact_var(row) for row in x]


@settings(max_examples=25, deadline=None)
@given(max_bytes=st.integers(4800, 12 * 4800))
def test_per_sample_variance_at_an_offset_does_not_depend_on_the_block(far_probe_samples, max_bytes):
    """Each sample centred on its own shift: <= 1e-12 of the exact variance whichever samples share
    its block (a neighbour whose probe is far from its mean once re-centred them all)."""
    x, exact = far_probe_samples
    stats, sizes = measure_file(x, "NHW", "sample", max_bytes, bins=0)
    assert sum(sizes) == 12
    for got, want in zip(stats.moments.var(), exact):
        assert rel_err(got, want) <= 1e-12


# ------------------------------------------------------------- the float kernel's slices and scratch
def in_slices(values: int, function, *args, **kwargs):
    """function(*args, **kwargs) with measure_block's float slices shrunk to about `values` values
    (at least one sample each)."""
    saved = scratch.SLICE_VALUES
    scratch.SLICE_VALUES = values
    try:
        return function(*args, **kwargs)
    finally:
        scratch.SLICE_VALUES = saved


@st.composite
def offset_floats(draw):
    """Float blocks at an offset (0, 1e9 or -1e12) with noise of any scale, in any layout and width,
    sometimes with the probed first sample far from the rest; channel rows long enough that Scope.pieces cuts them into rows of ~4096 values and a tail."""
    layout = draw(st.sampled_from(("NHWC", "NCHW", "NC", "N")))
    dtype = draw(st.sampled_from((np.float16, np.float32, np.float64)))
    offset = draw(st.sampled_from((0.0, 1e9, -1e12)))
    assume(not (dtype == np.float16 and offset))
    n = draw(st.integers(1, 6))
    side = draw(st.sampled_from((1, 3, 40)))
    shape = {"NHWC": (n, side, side, 3), "NCHW": (n, 3, side, side), "NC": (n * side * 12, 3), "N": (n * side,)}[layout]
    scale = draw(st.sampled_from((1e-3, 1.0, 1e3)))
    seed = draw(st.integers(0, 2**32 - 1))
    x = offset + scale * np.random.default_rng(seed).standard_normal(shape)
    if draw(st.booleans()):  # the first sample, where the shift is probed, far from the others
        x[0] += 1e4 * scale
    x = x.astype(dtype)
    assume(np.isfinite(x).all())  # float16 stops at 65504
    return layout, x


@settings(max_examples=120, deadline=None)
@given(offset_floats(), st.sampled_from(SCOPES), st.sampled_from((1, 7, 64, 1 << 16)), st.data())
def test_sliced_float_moments_match_the_exact_reference(case, scope, slice_values, data):
    """Any slice size, block size, width and offset: within the bound of check_moments (1e-12 of the
    exact rational mean and variance, a few ulps of the data's magnitude), exact counts and extremes."""
    layout, x = case
    cuts = data.draw(cut_points(len(x)))
    m = in_slices(slice_values, accumulate, x, layout, scope, cuts).aggregate()
    check_moments(m, x, layout, scope)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("scope", ["global", "channel", "pixel"])
def test_slices_change_no_exact_result(dtype, scope, rng):
    """Counts, minima and maxima do not depend on the slices; mean and variance only by rounding."""
    x = (rng.standard_normal((30, 20, 20, 3)) * 50).astype(dtype)
    whole = measure_block(x, SCOPE_VALUES[scope], Layout("NHWC")).aggregate()
    for values in (1, 100, 5000):
        sliced = in_slices(values, measure_block, x, SCOPE_VALUES[scope], Layout("NHWC")).aggregate()
        np.testing.assert_array_equal(sliced.count, whole.count)
        np.testing.assert_array_equal(sliced.min, whole.min)
        np.testing.assert_array_equal(sliced.max, whole.max)
        np.testing.assert_allclose(sliced.mean, whole.mean, rtol=1e-13)
        np.testing.assert_allclose(sliced.var(), whole.var(), rtol=1e-12)


@pytest.mark.parametrize("dtype, offset, scale", [(np.float32, 1e9, 1e3), (np.float32, -1e12, 1e6),
                                                  (np.float64, 1e9, 1.0), (np.float64, -1e12, 1.0)])
@pytest.mark.parametrize("slice_values", [97, 1 << 16])
def test_float_moments_far_from_zero_against_fsum_and_fractions(dtype, offset, scale, slice_values):
    """Per channel at 1e9 and -1e12: the mean within 1e-15 of math.fsum's, the variance within 1e-12
    of the exact rational one, whatever the slices."""
    x = (offset + scale * np.random.default_rng(23).standard_normal((50, 30, 3))).astype(dtype)
    m = in_slices(slice_values, measure_block, x, SCOPE_VALUES["channel"], Layout("NHWC")).aggregate()
    for c in range(3):
        column = x[..., c].reshape(-1).astype(np.float64)
        assert rel_err(m.mean[c], math.fsum(column) / len(column)) <= 1e-15
        assert rel_err(m.var()[c], _exact_var(column)) <= REL


def test_threads_share_no_scratch():
    """Eight threads measuring different blocks at once get, bit for bit, what one thread gets."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(4)
    blocks = [(rng.standard_normal((9, 30, 30, 3)) * (k + 1) + k).astype(np.float32) for k in range(32)]
    cases = [(block, SCOPE_VALUES[scope]) for block in blocks for scope in ("global", "channel", "sample")]

    def numbers(case):
        m = measure_block(case[0], case[1], Layout("NHWC")).aggregate()
        return m.mean.tobytes() + m.m2.tobytes() + m.min.tobytes() + m.max.tobytes()

    alone = [numbers(case) for case in cases]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(numbers, cases * 3)) == alone * 3


def test_float64_blocks_are_measured_whole():
    """float64 data are not sliced: the sums are numpy's over the whole block, bit for bit (for one
    key, the pairwise sums of the deviations from the shift and of their squares)."""
    x = np.random.default_rng(8).normal(26.0, 17.0, (64, 32, 32, 1))
    stats = in_slices(1, measure_block, x, SCOPE_VALUES["global"], Layout("NHWC")).moments
    y = x.reshape(-1) - stats.shift[0]
    total = np.add.reduce(y)
    assert stats.mean[0] == total / y.size
    assert stats.m2[0] == np.add.reduce(y * y) - total * (total / y.size)


_BLAS_PROBE = """
import hashlib
import numpy as np
from normcli import images, moments
from normcli.layout import Layout
from normcli.scopes import SCOPES
x = np.random.default_rng(1).normal(26, 17.5, (200, 32, 32, 3))
for data in (x, x.astype(np.float32)):
    for scope in ("global", "channel", "sample"):
        m = moments.measure_block(data, SCOPES[scope], Layout("NHWC")).aggregate()
        print(scope, np.asarray(m.mean).tolist(), np.asarray(m.m2).tolist())
print(hashlib.sha256(images.luma(x[:4]).tobytes()).hexdigest())
"""


def _blas_cores() -> list[str]:
    """OpenBLAS kernels this processor can run (OPENBLAS_CORETYPE picks one), oldest first."""
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return ["Prescott"] + (["Sandybridge"] if " avx " in flags else []) + (["Haswell"] if " avx2 " in flags else [])


def test_the_statistics_do_not_depend_on_the_blas_kernel():
    """The moments (and the float luma of images) are numpy's own sums, in an order of numpy's:
    the same bits whichever BLAS kernel a processor picks (np.dot and products with ones did not
    give them: their last digits moved between OpenBLAS's Prescott and Haswell kernels)."""
    import subprocess
    import sys

    cores = _blas_cores()
    if len(cores) < 2 or "openblas" not in str(np.show_config(mode="dicts")).lower():
        pytest.skip("needs numpy's OpenBLAS on an x86-64 processor with AVX")
    printed = {core: subprocess.run([sys.executable, "-c", _BLAS_PROBE], capture_output=True, text=True, check=True,
                                    env={**os.environ, "OPENBLAS_CORETYPE": core}).stdout for core in cores}
    assert len(set(printed.values())) == 1, printed
