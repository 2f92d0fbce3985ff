"""normalize / standardize through passes.transform(ScalePlan), against float64 numpy references,
scikit-learn's scalers, saved statistics files, inverses, --ignore-nan, and hypothesis.

Every expected value is computed here from the input array with plain numpy reductions over the
axes a scope names in the array's own layout (never through normcli's layout helpers).
"""

from __future__ import annotations

import json
import math
import tempfile
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from normcli import statsfile
from normcli.errors import NonFiniteError, NormcliWarning
from normcli.passes import measure
from normcli.plans import ScalePlan
from normcli.sinks import Outputs
from normcli.sources import Dataset, open_dataset
from normcli.transforms import Affine, minmax, zscore

from conftest import run_cli
from helpers import SCOPES, fresh_path, save, transform

# Axes each scope reduces, written per layout in the array's own axis order.
AXES = {
    "NHWC": {"global": (0, 1, 2, 3), "channel": (0, 1, 2), "sample": (1, 2, 3), "pixel": (0,)},
    "NCHW": {"global": (0, 1, 2, 3), "channel": (0, 2, 3), "sample": (1, 2, 3), "pixel": (0,)},
    "NHW": {"global": (0, 1, 2), "channel": (0, 1, 2), "sample": (1, 2), "pixel": (0,)},
    "NC": {"global": (0, 1), "channel": (0,), "sample": (1,), "pixel": (0,)},
    "N": {"global": (0,), "channel": (0,), "sample": (0,), "pixel": (0,)},
}
AXES["N"]["sample"] = ()  # each 1-D sample is one value
F32_TOL = 1e-5
F64_TOL = 1e-12


# ----------------------------------------------------------------------------- references
def ref_standardize(x, axes, ddof=0, eps=0.0):
    x = x.astype(np.float64)
    n = np.prod([x.shape[a] for a in axes]) if axes else 1
    mean = x.mean(axis=axes, keepdims=True) if axes else x
    dev = x - mean
    with np.errstate(invalid="ignore", divide="ignore"):
        var = (np.square(dev).sum(axis=axes, keepdims=True) if axes else np.square(dev)) / (n - ddof) + eps
        return np.where(var > 0, dev / np.sqrt(np.where(var > 0, var, 1.0)), 0.0)


def ref_normalize(x, axes, low=0.0, high=1.0):
    x = x.astype(np.float64)
    mn = x.min(axis=axes, keepdims=True) if axes else x
    mx = x.max(axis=axes, keepdims=True) if axes else x
    span = mx - mn
    return np.where(span > 0, (x - mn) / np.where(span > 0, span, 1.0) * (high - low) + low, low)


# ----------------------------------------------------------------------------- helpers
def run(folder: Path, x: np.ndarray, plan: ScalePlan, *, layout=None, dtype=None, ignore_nan=False, **kw):
    """Transform `x` (saved as .npy) with `plan`; returns (output array, TransformResult)."""
    out = fresh_path(folder, "out", ".npy")
    with open_dataset([save(folder, x)], layout=layout) as dataset:
        result = transform(dataset, plan, str(out), dtype=dtype, bins=0, ignore_nan=ignore_nan, **kw)
    return np.load(out), result


def standardize_plan(scope, **kw):
    ddof, eps = kw.pop("ddof", 0), kw.pop("eps", 0.0)
    return ScalePlan(scope, lambda m: zscore(m, ddof=ddof, eps=eps), **kw)


def normalize_plan(scope, out_range=(0.0, 1.0), clip=False, **kw):
    return ScalePlan(scope, lambda m: minmax(m, out_range), clip=out_range if clip else None, **kw)


def tol(dtype):
    return F64_TOL if dtype == "float64" else F32_TOL


@pytest.fixture
def data(rng):
    """(N, H, W, C) float64 with a different mean and spread per channel and per sample."""
    x = rng.normal(0.0, 1.0, (12, 5, 4, 3))
    x *= np.array([1.0, 4.0, 0.25])
    x += np.array([10.0, -3.0, 0.5])
    x += rng.normal(0.0, 2.0, (12, 1, 1, 1))
    return x


@pytest.fixture(params=["one chunk", "1-sample chunks"])
def chunking(request, monkeypatch):
    """Run with the default chunks, or with one sample per chunk (merged on several threads)."""
    if request.param != "one chunk":
        monkeypatch.setattr(Dataset, "block_bytes", 1)  # the blocks of every dataset opened from now
    return request.param


def no_normcli_warnings(record):
    return [w for w in record if issubclass(w.category, NormcliWarning)] == []


# ----------------------------------------------------------------------------- every scope
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("scope", SCOPES)
def test_standardize_every_scope_matches_numpy(tmp_path, data, scope, dtype, chunking):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        y, result = run(tmp_path, data, standardize_plan(scope), dtype=dtype)
    assert y.dtype == np.dtype(dtype) and y.shape == data.shape
    np.testing.assert_allclose(y, ref_standardize(data, AXES["NHWC"][scope]), rtol=0, atol=tol(dtype))
    assert no_normcli_warnings(record)
    # The fitted statistics the plan used are the input's, per key.
    axes = AXES["NHWC"][scope]
    assert result.before.moments.count.sum() == data.size
    np.testing.assert_allclose(np.sort(result.before.moments.mean),
                               np.sort(data.mean(axis=axes).reshape(-1)), rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("out_range", [(0.0, 1.0), (-1.0, 1.0), (2.0, 7.5)])
def test_normalize_every_scope_matches_numpy(tmp_path, data, scope, dtype, out_range, chunking):
    y, _ = run(tmp_path, data, normalize_plan(scope, out_range), dtype=dtype)
    expected = ref_normalize(data, AXES["NHWC"][scope], *out_range)
    np.testing.assert_allclose(y, expected, rtol=0, atol=tol(dtype) * max(map(abs, out_range)))
    # Each key's extremes land exactly on the range's ends.
    axes = AXES["NHWC"][scope]
    np.testing.assert_allclose(y.min(axis=axes), out_range[0], atol=tol(dtype) * 10)
    np.testing.assert_allclose(y.max(axis=axes), out_range[1], atol=tol(dtype) * 10)


@pytest.mark.parametrize("layout,shape", [("NCHW", (9, 3, 4, 5)), ("NHW", (9, 4, 5)), ("NC", (40, 6)),
                                          ("N", (40,))])
@pytest.mark.parametrize("scope", ["global", "channel", "pixel", "sample"])
@pytest.mark.filterwarnings("ignore::normcli.errors.NormcliWarning")  # N/sample: one value per sample
def test_standardize_and_normalize_other_layouts(tmp_path, rng, layout, shape, scope):
    x = rng.normal(3.0, 2.0, shape)
    if len(shape) > 1:  # spreads that differ by sample and by the second axis
        x *= rng.uniform(0.5, 3.0, shape[:2]).reshape(shape[:2] + (1,) * (len(shape) - 2))
    if layout == "NCHW":
        x += np.array([5.0, -5.0, 0.0])[None, :, None, None]  # channels really differ
    y, _ = run(tmp_path, x, standardize_plan(scope), layout=layout, dtype="float64")
    np.testing.assert_allclose(y, ref_standardize(x, AXES[layout][scope]), rtol=0, atol=F64_TOL)
    y, _ = run(tmp_path, x, normalize_plan(scope, (-1.0, 1.0)), layout=layout, dtype="float64")
    np.testing.assert_allclose(y, ref_normalize(x, AXES[layout][scope], -1.0, 1.0), rtol=0, atol=F64_TOL)


def test_integer_input_standardizes_exactly(tmp_path, rng):
    x = rng.integers(0, 256, (10, 6, 7, 3), dtype=np.uint8)
    for scope in SCOPES:
        y, result = run(tmp_path, x, standardize_plan(scope), dtype="float64")
        np.testing.assert_allclose(y, ref_standardize(x, AXES["NHWC"][scope]), rtol=0, atol=F64_TOL)
    x16 = rng.integers(0, 65536, (10, 6, 7), dtype=np.uint16)
    y, _ = run(tmp_path, x16, normalize_plan("channel"), dtype="float64")
    np.testing.assert_allclose(y, ref_normalize(x16, AXES["NHW"]["channel"]), rtol=0, atol=F64_TOL)


# ----------------------------------------------------------------------------- peers
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_per_pixel_equals_sklearn_standard_scaler(tmp_path, data, dtype):
    preprocessing = pytest.importorskip("sklearn.preprocessing")
    x = data.copy()
    x[:, 0, 0, 0] = 4.0  # a constant feature: sklearn and normcli both give 0
    with pytest.warns(NormcliWarning, match="zero variance"):
        y, _ = run(tmp_path, x, standardize_plan("pixel"), dtype=dtype)
    rows = x.reshape(len(x), -1)
    expected = preprocessing.StandardScaler().fit_transform(rows)
    np.testing.assert_allclose(y.reshape(len(x), -1), expected, rtol=0, atol=tol(dtype))
    assert not y[:, 0, 0, 0].any()


@pytest.mark.parametrize("out_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_per_pixel_equals_sklearn_minmax_scaler(tmp_path, data, out_range):
    preprocessing = pytest.importorskip("sklearn.preprocessing")
    x = data.copy()
    x[:, 2, 1, 2] = -7.0  # max == min: the range's low end in both
    with pytest.warns(NormcliWarning, match="max == min"):
        y, _ = run(tmp_path, x, normalize_plan("pixel", out_range), dtype="float64")
    expected = preprocessing.MinMaxScaler(feature_range=out_range).fit_transform(x.reshape(len(x), -1))
    np.testing.assert_allclose(y.reshape(len(x), -1), expected, rtol=0, atol=F64_TOL)
    assert (y[:, 2, 1, 2] == out_range[0]).all()


def test_per_pixel_ddof1_equals_sklearn_scaler_with_unbiased_scale(tmp_path, data):
    preprocessing = pytest.importorskip("sklearn.preprocessing")
    rows = data.reshape(len(data), -1)
    scaler = preprocessing.StandardScaler().fit(rows)
    n = len(rows)
    expected = (rows - scaler.mean_) / (scaler.scale_ * np.sqrt(n / (n - 1)))
    y, _ = run(tmp_path, data, standardize_plan("pixel", ddof=1), dtype="float64")
    np.testing.assert_allclose(y.reshape(n, -1), expected, rtol=0, atol=F64_TOL)


def test_per_channel_uses_pooled_std_not_mean_of_per_image_stds(tmp_path, data):
    pooled_mean = data.reshape(-1, 3).mean(axis=0)
    pooled_std = data.reshape(-1, 3).std(axis=0)
    per_image_std = data.std(axis=(1, 2)).mean(axis=0)
    assert (np.abs(per_image_std - pooled_std) > 1e-3 * pooled_std).all()  # the data tells them apart
    y, result = run(tmp_path, data, standardize_plan("channel"), dtype="float64")
    np.testing.assert_allclose(y, (data - pooled_mean) / pooled_std, rtol=0, atol=F64_TOL)
    np.testing.assert_allclose(result.before.moments.mean, pooled_mean, rtol=1e-13)
    np.testing.assert_allclose(np.sqrt(result.before.moments.var()), pooled_std, rtol=1e-13)
    after = y.reshape(-1, 3)
    np.testing.assert_allclose(after.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(after.var(axis=0), 1.0, rtol=1e-12)


def test_per_channel_equals_torchvision_style_normalize(tmp_path, data):
    torch = pytest.importorskip("torch")
    mean = torch.from_numpy(data).permute(0, 3, 1, 2).mean(dim=(0, 2, 3))
    std = torch.from_numpy(data).permute(0, 3, 1, 2).std(dim=(0, 2, 3), unbiased=False)
    expected = ((torch.from_numpy(data) - mean) / std).numpy()
    y, _ = run(tmp_path, data, standardize_plan("channel"))
    np.testing.assert_allclose(y, expected, rtol=0, atol=F32_TOL)


# ----------------------------------------------------------------------------- options
@pytest.mark.parametrize("scope", SCOPES)
def test_ddof_1(tmp_path, data, scope):
    y, _ = run(tmp_path, data, standardize_plan(scope, ddof=1), dtype="float64")
    np.testing.assert_allclose(y, ref_standardize(data, AXES["NHWC"][scope], ddof=1), rtol=0, atol=F64_TOL)
    y0 = ref_standardize(data, AXES["NHWC"][scope], ddof=0)
    assert np.abs(y - y0).max() > 1e-3  # ddof 1 really differs here


@pytest.mark.parametrize("scope", SCOPES)
def test_eps_is_added_to_the_variance(tmp_path, data, scope):
    eps = 0.7
    y, _ = run(tmp_path, data, standardize_plan(scope, eps=eps), dtype="float64")
    np.testing.assert_allclose(y, ref_standardize(data, AXES["NHWC"][scope], eps=eps), rtol=0, atol=F64_TOL)
    assert np.abs(y - ref_standardize(data, AXES["NHWC"][scope])).max() > 1e-2


def test_eps_makes_a_constant_key_zero_without_warning(tmp_path, data):
    x = data.copy()
    x[..., 1] = 3.0
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        y, _ = run(tmp_path, x, standardize_plan("channel", eps=1e-3), dtype="float64")
    assert no_normcli_warnings(record)  # var + eps > 0: nothing degenerate
    assert (y[..., 1] == 0).all()
    np.testing.assert_allclose(y, ref_standardize(x, AXES["NHWC"]["channel"], eps=1e-3), atol=F64_TOL)


# ----------------------------------------------------------------------------- degenerate keys
@pytest.mark.parametrize("scope,where", [
    ("global", np.s_[...]),
    ("channel", np.s_[..., 1]),
    ("sample", np.s_[3]),
    ("pixel", np.s_[:, 1, 2, 0]),
])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_zero_variance_gives_zero_and_warns(tmp_path, data, scope, where, dtype):
    x = data.copy()
    x[where] = 123.25
    with pytest.warns(NormcliWarning, match="zero variance"):
        y, _ = run(tmp_path, x, standardize_plan(scope), dtype=dtype)
    assert np.isfinite(y).all()
    assert (y[where] == 0).all()
    np.testing.assert_allclose(y, ref_standardize(x, AXES["NHWC"][scope]), rtol=0, atol=tol(dtype))


@pytest.mark.parametrize("scope,where", [
    ("global", np.s_[...]),
    ("channel", np.s_[..., 0]),
    ("sample", np.s_[5]),
    ("pixel", np.s_[:, 0, 3, 2]),
])
@pytest.mark.parametrize("out_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_max_equals_min_gives_low_end_and_warns(tmp_path, data, scope, where, out_range):
    x = data.copy()
    x[where] = -8.5
    with pytest.warns(NormcliWarning, match="max == min"):
        y, _ = run(tmp_path, x, normalize_plan(scope, out_range), dtype="float64")
    assert np.isfinite(y).all()
    assert (y[where] == out_range[0]).all()
    np.testing.assert_allclose(y, ref_normalize(x, AXES["NHWC"][scope], *out_range), rtol=0, atol=F64_TOL)


def test_single_value_keys_with_ddof1_give_zero_not_nan(tmp_path, rng):
    x = rng.normal(size=(1, 3, 3, 2))  # per pixel: one value per key, no unbiased variance
    with pytest.warns(NormcliWarning):
        y, _ = run(tmp_path, x, standardize_plan("pixel", ddof=1), dtype="float64")
    assert np.isfinite(y).all() and not y.any()


# ----------------------------------------------------------------------------- clip
def test_clip_limits_normalized_test_data_to_the_range(tmp_path, rng):
    train = rng.normal(0.0, 1.0, (20, 4, 4, 2))
    test = rng.normal(0.5, 2.0, (20, 4, 4, 2))  # wider: falls outside the train range
    fitted = measure(open_dataset([save(tmp_path, train)]), "channel", bins=0).moments
    lo, hi = train.min(axis=(0, 1, 2)), train.max(axis=(0, 1, 2))
    unclipped = (test - lo) / (hi - lo) * 2.0 - 1.0
    assert (unclipped < -1).any() and (unclipped > 1).any()
    y, _ = run(tmp_path, test, normalize_plan("channel", (-1.0, 1.0), fitted=fitted), dtype="float64")
    np.testing.assert_allclose(y, unclipped, rtol=0, atol=F64_TOL)
    y, result = run(tmp_path, test, normalize_plan("channel", (-1.0, 1.0), clip=True, fitted=fitted),
                    dtype="float64")
    np.testing.assert_allclose(y, np.clip(unclipped, -1.0, 1.0), rtol=0, atol=F64_TOL)
    assert y.min() == -1.0 and y.max() == 1.0
    assert result.after.moments.min.min() >= -1.0 and result.after.moments.max.max() <= 1.0


# ----------------------------------------------------------------------------- inverse
def test_affine_inverse_is_the_inverse_map(rng):
    shift, scale, offset = rng.normal(size=5), rng.uniform(0.1, 3.0, 5) * rng.choice([-1, 1], 5), rng.normal(size=5)
    scale[2] = 0.0  # a degenerate key maps back to its shift
    forward = Affine(shift, scale, offset)
    x = rng.normal(size=(4, 6, 5))
    y = forward.apply(x, np.empty_like(x), "channel")
    back = forward.inverse().apply(y, np.empty_like(y), "channel")
    keep = np.arange(5) != 2
    np.testing.assert_allclose(back[..., keep], x[..., keep], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(back[..., 2], shift[2])
    np.testing.assert_allclose(y, (x - shift) * scale + offset, rtol=1e-15)
    # Applied to any data, the inverse keeps a degenerate key at its constant.
    anything = forward.inverse().apply(x, np.empty_like(x), "channel")
    np.testing.assert_array_equal(anything[..., 2], shift[2])
    np.testing.assert_allclose(anything[..., keep], ((x - offset)[..., keep] / scale[keep] + shift[keep]),
                               rtol=1e-13)


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("kind", ["standardize", "normalize"])
@pytest.mark.filterwarnings("ignore::normcli.errors.NormcliWarning")
def test_inverse_round_trips_to_the_input(tmp_path, data, scope, kind):
    x = data.copy()
    x[:, :, :, 2] = np.where(np.arange(len(x))[:, None, None] % 4 == 0, 1.5, x[:, :, :, 2])  # some flat keys
    x[2] = 7.0  # a constant sample
    make = standardize_plan if kind == "standardize" else (lambda s, **kw: normalize_plan(s, (-1.0, 1.0), **kw))
    y, result = run(tmp_path, x, make(scope), dtype="float64")
    fitted = result.before.moments
    back, _ = run(tmp_path, y, make(scope, fitted=fitted, inverse=True), dtype="float64")
    np.testing.assert_allclose(back, x, rtol=1e-12, atol=1e-12 * np.abs(x).max())


# ----------------------------------------------------------------------------- fit on train, apply to test
@pytest.mark.parametrize("scope", ["global", "channel", "pixel"])
@pytest.mark.parametrize("ddof", [0, 1])
def test_fit_on_train_apply_to_test_through_a_stats_file(tmp_path, rng, scope, ddof):
    train = rng.normal(4.0, 3.0, (30, 4, 3, 2)) + np.array([0.0, 10.0])
    test = rng.normal(1.0, 5.0, (7, 4, 3, 2))
    with open_dataset([save(tmp_path, train)]) as dataset:
        stats = measure(dataset, scope, bins=0)
    path = str(tmp_path / "train.json")
    with Outputs() as outputs:
        statsfile.write(path, statsfile.StatsFile(stats.scope, stats.layout, stats.sample_shape, stats.moments,
                                                  ddof, stats.inputs), outputs)
    saved = statsfile.read(path)
    assert (saved.per, saved.layout, saved.ddof) == (scope, "NHWC", ddof)
    with open_dataset([save(tmp_path, test)], layout=saved.layout) as dataset:
        statsfile.check_fits(saved, dataset, path)
    y, result = run(tmp_path, test, standardize_plan(saved.per, ddof=saved.ddof, fitted=saved.moments),
                    dtype="float64")
    axes = AXES["NHWC"][scope]
    expected = (test - train.mean(axis=axes, keepdims=True)) / train.std(axis=axes, ddof=ddof, keepdims=True)
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-11)
    # Applied, not refitted: the test data's own standardization differs.
    assert np.abs(y - ref_standardize(test, axes, ddof)).max() > 0.1
    # normalize with the same file: the train min/max
    y, _ = run(tmp_path, test, normalize_plan(saved.per, fitted=saved.moments), dtype="float64")
    lo, hi = train.min(axis=axes, keepdims=True), train.max(axis=axes, keepdims=True)
    np.testing.assert_allclose(y, (test - lo) / (hi - lo), rtol=0, atol=1e-11)


# ----------------------------------------------------------------------------- --ignore-nan
def with_nonfinite(x, rng, count=6):
    """x with NaN, +inf and -inf at a few places (every key keeps finite values)."""
    x = x.copy()
    flat = x.reshape(-1)
    places = rng.choice(flat.size, count, replace=False)
    flat[places] = np.array([np.nan, np.inf, -np.inf] * count)[:count]
    return x, ~np.isfinite(x)


def nan_reference(x, axes, kind, ddof=0):
    xm = np.where(np.isfinite(x), x, np.nan)
    if kind == "standardize":
        mean = np.nanmean(xm, axis=axes, keepdims=True)
        std = np.nanstd(xm, axis=axes, ddof=ddof, keepdims=True)
        return (x - mean) / std
    lo, hi = np.nanmin(xm, axis=axes, keepdims=True), np.nanmax(xm, axis=axes, keepdims=True)
    return (x - lo) / (hi - lo)


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("kind", ["standardize", "normalize"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ignore_nan_passes_nonfinite_through_and_excludes_it(tmp_path, data, rng, scope, kind, dtype, chunking):
    x, bad = with_nonfinite(data, rng)
    plan = standardize_plan(scope) if kind == "standardize" else normalize_plan(scope)
    y, result = run(tmp_path, x, plan, dtype=dtype, ignore_nan=True)
    # Non-finite values come out exactly as they went in.
    np.testing.assert_array_equal(y[bad], x[bad].astype(dtype))
    assert np.isfinite(y[~bad]).all()
    expected = nan_reference(x, AXES["NHWC"][scope], kind)
    np.testing.assert_allclose(y[~bad], expected[~bad], rtol=0, atol=tol(dtype))
    # The fitted statistics count only finite values.
    assert result.before.moments.count.sum() == (~bad).sum()
    finite_out = np.where(bad, np.nan, y.astype(np.float64))
    if kind == "normalize":
        assert np.nanmin(finite_out) >= -tol(dtype) and np.nanmax(finite_out) <= 1 + tol(dtype)


def test_nonfinite_without_ignore_nan_is_an_error_and_writes_nothing(tmp_path, data, rng):
    x, bad = with_nonfinite(data, rng, count=3)
    out = tmp_path / "z.npy"
    with open_dataset([save(tmp_path, x)]) as dataset:
        with pytest.raises(NonFiniteError) as info:
            transform(dataset, standardize_plan("global"), str(out), bins=0)
    message = str(info.value)
    assert "1 NaN" in message and "1 +inf" in message and "1 -inf" in message and "\n" not in message
    first = int(np.flatnonzero(bad.reshape(len(x), -1).any(axis=1))[0])
    assert f"sample {first}" in message
    assert not out.exists()


def test_ignore_nan_with_a_key_that_is_all_nan(tmp_path, data):
    x = data.copy()
    x[:, 1, 1, :] = np.nan  # one position: NaN in every sample
    with pytest.warns(NormcliWarning):
        y, result = run(tmp_path, x, standardize_plan("pixel"), dtype="float64", ignore_nan=True)
    assert np.isnan(y[:, 1, 1, :]).all()
    keep = ~np.isnan(x)
    np.testing.assert_allclose(y[keep], ref_standardize(data, AXES["NHWC"]["pixel"])[keep], atol=F64_TOL)


# ----------------------------------------------------------------------------- hypothesis
DTYPES = ("float32", "float64", "uint8", "uint16")


@st.composite
def datasets(draw):
    shape = (draw(st.integers(1, 6)), draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 3)))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if dtype.startswith("uint"):
        top = np.iinfo(dtype).max
        x = rng.integers(0, draw(st.sampled_from([1, 3, top])) + 1, shape).astype(dtype)
    else:
        scale = draw(st.sampled_from([1e-2, 1.0, 1e3]))
        offset = draw(st.sampled_from([0.0, -50.0, 100.0]))
        x = (rng.normal(offset, scale, shape)).astype(dtype)
    if draw(st.booleans()):  # a constant channel
        x[..., 0] = x.reshape(-1)[0]
    return x


HYPOTHESIS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@HYPOTHESIS
@given(x=datasets(), scope=st.sampled_from(SCOPES))
def test_hypothesis_standardize_has_mean_0_var_1(x, scope):
    axes = AXES["NHWC"][scope]
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore", NormcliWarning)
        y, _ = run(Path(folder), x, standardize_plan(scope))
    assert y.dtype == np.float32 and np.isfinite(y).all()
    # Keys whose values are not all equal have var > 0 (numpy's var of equal values may round above 0).
    live = x.max(axis=axes, keepdims=True) > x.min(axis=axes, keepdims=True)
    y64 = y.astype(np.float64)
    mean_out = y64.mean(axis=axes, keepdims=True)
    var_out = y64.var(axis=axes, keepdims=True)
    np.testing.assert_allclose(mean_out[live], 0.0, atol=1e-5)
    np.testing.assert_allclose(var_out[live], 1.0, rtol=1e-5)
    assert not y[np.broadcast_to(~live, y.shape)].any()


@HYPOTHESIS
@given(x=datasets(), scope=st.sampled_from(SCOPES),
       out_range=st.sampled_from([(0.0, 1.0), (-1.0, 1.0), (-3.0, 0.5)]))
def test_hypothesis_normalize_lands_in_range(x, scope, out_range):
    axes = AXES["NHWC"][scope]
    low, high = out_range
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore", NormcliWarning)
        y, _ = run(Path(folder), x, normalize_plan(scope, out_range))
    assert np.isfinite(y).all()
    assert y.min() >= low - 1e-6 and y.max() <= high + 1e-6
    x64 = x.astype(np.float64)
    live = (x64.max(axis=axes, keepdims=True) > x64.min(axis=axes, keepdims=True))
    np.testing.assert_allclose(np.broadcast_to(y.min(axis=axes, keepdims=True), live.shape)[live], low, atol=1e-6)
    np.testing.assert_allclose(np.broadcast_to(y.max(axis=axes, keepdims=True), live.shape)[live], high, atol=1e-6)
    assert (y[np.broadcast_to(~live, y.shape)] == low).all()
    np.testing.assert_allclose(y, ref_normalize(x, axes, low, high), rtol=0, atol=1e-5 * max(abs(low), abs(high)))


@pytest.mark.parametrize("ignore_nan", [True, False])
def test_both_infinities_in_one_key_raise_no_numpy_warning(tmp_path, data, ignore_nan):
    """+inf and -inf in one key sum to NaN inside the accumulator; the user must see only
    normcli's own message (the CLI prints every warning), never numpy's RuntimeWarning."""
    x = data.copy()
    x[0, 0, 0, 0], x[1, 0, 0, 0] = np.inf, -np.inf
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        if ignore_nan:
            y, _ = run(tmp_path, x, standardize_plan("global"), dtype="float64", ignore_nan=True)
            assert y[0, 0, 0, 0] == np.inf and y[1, 0, 0, 0] == -np.inf
        else:
            with pytest.raises(NonFiniteError, match=r"1 \+inf and 1 -inf"):
                run(tmp_path, x, standardize_plan("global"))
    assert [str(w.message) for w in record if issubclass(w.category, RuntimeWarning)] == []


def test_ignore_nan_inf_in_a_constant_key_stays_inf_without_numpy_warnings(tmp_path, data):
    """A zero-variance key maps every value to 0 by multiplying by 0; inf * 0 must neither become NaN
    nor make numpy warn (the CLI would print 'RuntimeWarning: invalid value')."""
    x = data.copy()
    x[..., 1] = 3.0
    x[0, 0, 0, 1], x[4, 2, 1, 1] = np.inf, -np.inf
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        y, _ = run(tmp_path, x, standardize_plan("channel"), dtype="float64", ignore_nan=True)
    assert y[0, 0, 0, 1] == np.inf and y[4, 2, 1, 1] == -np.inf
    finite = np.isfinite(x[..., 1])
    assert not y[..., 1][finite].any()
    assert [str(w.message) for w in record if issubclass(w.category, RuntimeWarning)] == []
    assert any("zero variance" in str(w.message) for w in record if issubclass(w.category, NormcliWarning))


def test_ignore_nan_passes_inf_through_even_with_clip(tmp_path, rng):
    train = rng.normal(size=(10, 3, 3, 1))
    test = rng.normal(0.0, 3.0, (4, 3, 3, 1))
    test[1, 1, 1, 0], test[2, 0, 0, 0], test[3, 2, 2, 0] = np.inf, -np.inf, np.nan
    bad = ~np.isfinite(test)
    fitted = measure(open_dataset([save(tmp_path, train)]), "global", bins=0).moments
    y, _ = run(tmp_path, test, normalize_plan("global", (0.0, 1.0), clip=True, fitted=fitted), dtype="float64",
               ignore_nan=True)
    np.testing.assert_array_equal(y[bad], test[bad])  # unchanged: neither clipped nor NaN
    expected = np.clip((test - train.min()) / (train.max() - train.min()), 0.0, 1.0)
    np.testing.assert_allclose(y[~bad], expected[~bad], rtol=0, atol=F64_TOL)


@settings(max_examples=150, deadline=None)
@given(scope=st.sampled_from(SCOPES), samples=st.integers(1, 4), positions=st.integers(1, 3000),
       channels=st.sampled_from([1, 2, 3, 5, 300]), out_dtype=st.sampled_from([np.float32, np.float64]),
       transposed=st.booleans(), clip=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_affine_apply_is_the_broadcast_formula_bit_for_bit(scope, samples, positions, channels, out_dtype,
                                                           transposed, clip, seed):
    """However a scope cuts the arrays into pieces (rows of repeated per-channel values, remainders,
    strided views), every value is (x - shift) * scale + offset in float64, stored once."""
    from normcli.scopes import SCOPES as BY_NAME

    rng = np.random.default_rng(seed)
    x = rng.normal(100, 10, (samples, channels, positions) if transposed else (samples, positions, channels))
    x = x.astype(np.float32)
    x = x.transpose(0, 2, 1) if transposed else x
    s = BY_NAME[scope]
    keys = s.keys_of(x.shape)
    affine = Affine(rng.normal(100, 1, keys), rng.normal(0.1, 0.01, keys), rng.normal(0, 1, keys))
    bounds = (-0.5, 0.5) if clip else None
    expected = ((x - s.broadcast(affine.shift, x.shape)) * s.broadcast(affine.scale, x.shape)
                + s.broadcast(affine.offset, x.shape))
    if bounds:
        expected = np.clip(expected, *bounds)
    out = np.full(x.shape, np.nan, out_dtype)
    affine.apply(x, out, s, bounds)
    np.testing.assert_array_equal(out, expected.astype(out_dtype))


# ------------------------------------------------------- integers of every width, at their extremes
INTEGER_DTYPES = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)
NHWC_AXES = {"global": (1, 2, 3, 0), "channel": (0, 1, 2), "sample": (1, 2, 3), "pixel": (0,)}


@st.composite
def integer_datasets(draw, min_samples=1):
    """(N, H, W, C) integers of any width: often at the dtype's extremes and next to them, or all
    within a few hundred of one extreme (a small spread where float64 cannot hold the values)."""
    dtype = np.dtype(draw(st.sampled_from(INTEGER_DTYPES)))
    info = np.iinfo(dtype)
    extremes = [info.min, info.min + 1, info.max, info.max - 1, 0, 1]
    shape = (draw(st.integers(min_samples, 5)), draw(st.integers(1, 3)), draw(st.integers(1, 3)),
             draw(st.integers(1, 3)))
    if draw(st.booleans()):
        base = draw(st.sampled_from(extremes))
        element = st.integers(-300, 300).map(lambda d: min(max(base + d, info.min), info.max))
    else:
        element = st.one_of(st.sampled_from(extremes), st.integers(info.min, info.max))
    values = draw(st.lists(element, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    return np.array(values, dtype).reshape(shape)


def exact_keyed(x: np.ndarray, axes):
    """Per-key (min, max, sum, sum of squares, count) of integer data in Python ints, broadcastable."""
    exact = x.astype(object)
    count = int(np.prod([x.shape[a] for a in axes]))
    return (exact.min(axis=axes, keepdims=True), exact.max(axis=axes, keepdims=True),
            exact.sum(axis=axes, keepdims=True), (exact * exact).sum(axis=axes, keepdims=True), count)


def exact_normalize(x, axes, low=0.0, high=1.0):
    low_v, high_v, _, _, _ = exact_keyed(x, axes)
    span = high_v - low_v
    scaled = np.frompyfunc(lambda v, a, s: float(Fraction(int(v - a), int(s))) if s else 0.0, 3, 1)
    return scaled(x.astype(object), low_v, span).astype(np.float64) * (high - low) + low


def exact_standardize(x, axes, eps=0.0):
    """(x - mean) / sqrt(var + eps) from the exact mean and variance (rational, rounded once)."""
    _, _, s1, s2, n = exact_keyed(x, axes)

    def z(v, a, b):
        var = float(Fraction(int(b) * n - int(a) * int(a), n * n)) + eps
        return float(Fraction(int(v)) - Fraction(int(a), n)) / math.sqrt(var) if var > 0 else 0.0

    return np.frompyfunc(z, 3, 1)(x.astype(object), s1, s2).astype(np.float64)


def transformed(tmp_path, x, *args) -> np.ndarray:
    source, out = save(tmp_path, x), fresh_path(tmp_path, "out", ".npy")
    run_cli(*args[:1], source, "-o", out, "--dtype", "float64", "--quiet", *args[1:])
    return np.load(out)


INTEGERS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("scope", SCOPES)
@INTEGERS
@given(x=integer_datasets())
def test_normalize_integers_of_every_width_is_exact(tmp_path, scope, x):
    """max - min never wraps in the input's dtype (int8's -128..127, int64's extremes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NormcliWarning)
        got = transformed(tmp_path, x, "normalize", "--per", scope, "--range", "-1", "3")
    np.testing.assert_allclose(got, exact_normalize(x, NHWC_AXES[scope], -1.0, 3.0), rtol=0, atol=4e-15)


@pytest.mark.parametrize("scope", SCOPES)
@INTEGERS
@given(x=integer_datasets())
def test_standardize_integers_of_every_width_is_exact(tmp_path, scope, x):
    """The mean's whole part is exact: 2**63 - 2 is no float64, x - mean is taken in integers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NormcliWarning)
        got = transformed(tmp_path, x, "standardize", "--per", scope)
    np.testing.assert_allclose(got, exact_standardize(x, NHWC_AXES[scope]), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("scope", ["channel", "global", "pixel"])
@INTEGERS
@given(x=integer_datasets(min_samples=2), batches=st.integers(1, 2))
def test_batchnorm_integers_of_every_width_is_exact(tmp_path, scope, x, batches):
    size = len(x) // batches
    x = x[:size * batches]
    assume(size >= 2)
    got = transformed(tmp_path, x, "batchnorm", "--batch-size", size, "--per", scope)
    want = np.concatenate([exact_standardize(x[i:i + size], NHWC_AXES[scope], 1e-5) for i in range(0, len(x), size)])
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-14)


@INTEGERS
@given(x=integer_datasets(), data=st.data())
def test_groupnorm_integers_of_every_width_is_exact(tmp_path, x, data):
    channels = x.shape[3]
    groups = data.draw(st.sampled_from([g for g in range(1, channels + 1) if channels % g == 0]))
    got = transformed(tmp_path, x, "groupnorm", "--groups", groups)
    grouped = x.reshape(*x.shape[:3], groups, channels // groups)
    want = exact_standardize(grouped, (1, 2, 4), 1e-5).reshape(x.shape)
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("kind", ["normalize", "standardize"])
@pytest.mark.parametrize("scope", ["global", "channel", "pixel"])
@INTEGERS
@given(x=integer_datasets())
def test_inverse_of_integers_of_every_width_comes_back(tmp_path, kind, scope, x):
    stats = fresh_path(tmp_path, "stats", ".json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NormcliWarning)
        forward = transformed(tmp_path, x, kind, "--per", scope, "--save-stats", stats)
        back = transformed(tmp_path, forward, kind, "--stats-from", stats, "--inverse")
    exact = x.astype(object)
    low, high = exact.min(axis=NHWC_AXES[scope], keepdims=True), exact.max(axis=NHWC_AXES[scope], keepdims=True)
    flat = np.broadcast_to(low == high, x.shape)
    spread = (np.abs(high.astype(np.float64)) + np.abs(low.astype(np.float64)))
    err = np.abs(back - x.astype(np.float64))
    # one rounding of the forward value, scaled back by the span, and the float64 of x and the shift
    assert (err[~flat] <= np.broadcast_to(4e-15 * spread, x.shape)[~flat] + 1).all()


@pytest.mark.parametrize("scope", ["global", "channel", "sample", "pixel"])
def test_int64_extremes_normalize_to_their_exact_places(tmp_path, scope):
    x = np.array([2**63 - 1, 2**63 - 2, -2**63, 0], np.int64).reshape(1, 4, 1, 1) if scope != "pixel" else \
        np.array([2**63 - 1, 2**63 - 2, -2**63, 0], np.int64).reshape(4, 1, 1, 1)
    got = transformed(tmp_path, x, "normalize", "--per", scope)
    np.testing.assert_array_equal(got.reshape(-1), [1.0, 1.0, 0.0, 0.5])


def test_int8_camera_range_normalizes_to_the_whole_range(tmp_path):
    x = np.arange(-128, 128, dtype=np.int8).reshape(1, 16, 16, 1)
    got = transformed(tmp_path, x, "normalize")
    np.testing.assert_allclose(got.reshape(-1), np.arange(256) / 255, rtol=0, atol=2e-16)


# ----------------------------------------------------- round trips through normcli's own 8/16-bit files
@pytest.fixture
def rgb_folder(tmp_path, rng):
    from conftest import write_image

    root = tmp_path / "rgb"
    for name, (h, w) in {"a.png": (9, 7), "b/c.png": (5, 8)}.items():
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image[0, 0], image[-1, -1] = 0, 255  # every channel spans 0..255
        write_image(root / name, image)
    return root


def read_tree(root: Path) -> dict:
    """Every PNG under `root` as stored (imagecodecs: Pillow reads 16-bit RGB as 8-bit)."""
    import imagecodecs

    return {p.relative_to(root): imagecodecs.imread(p) for p in sorted(root.rglob("*.png"))}


@pytest.mark.parametrize("dtype,step", [("uint8", 1 / 255 / 0.8 * 255), ("uint16", 1 / 65535 / 0.8 * 255)])
def test_inverse_through_normcli_own_integer_images_comes_back(tmp_path, rgb_folder, dtype, step):
    """normalize --range 0.1 0.9 into 8/16-bit PNGs rounds the ends one half-step outward; the
    inverse accepts that, clamps it, and gives the input back within one quantisation step."""
    middle, back, stats = tmp_path / "middle", tmp_path / "back", tmp_path / "stats.json"
    run_cli("normalize", rgb_folder, "-o", middle, "--range", "0.1", "0.9", "--per", "channel", "--dtype", dtype,
            "--save-stats", stats, "--quiet")
    assert all(a.dtype == np.dtype(dtype) for a in read_tree(middle).values())
    result = run_cli("normalize", middle, "-o", back, "--inverse", "--stats-from", stats, "--range", "0.1", "0.9",
                     "--dtype", "uint8")
    assert "clipped" not in result.stderr and "warning" not in result.stderr
    original, restored = read_tree(rgb_folder), read_tree(back)
    assert original.keys() == restored.keys()
    # The middle's rounding (half its step, `step` / 2 in input units) and the output's own rounding.
    worst = math.floor(step / 2 + 0.5)
    for name, image in original.items():
        assert restored[name].dtype == np.uint8
        assert np.abs(restored[name].astype(int) - image).max() <= worst


def test_inverse_still_refuses_values_far_past_the_range(tmp_path, rgb_folder):
    from conftest import write_image

    middle, back, stats = tmp_path / "middle", tmp_path / "back", tmp_path / "stats.json"
    run_cli("normalize", rgb_folder, "-o", middle, "--range", "0.1", "0.9", "--per", "channel",
            "--save-stats", stats, "--quiet")
    image = read_tree(middle)[Path("a.png")].copy()
    image[1, 1] = 0  # (0 - 0.1) / 0.8 * 255: 32 below the input's range, not a rounding
    write_image(middle / "a.png", image)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_cli("normalize", middle, "-o", back, "--inverse", "--stats-from", stats, "--range", "0.1", "0.9",
                     ok=False)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: the output spans [-31.") and result.stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# ------------------------------------------------------------ the range the statistics were fitted with
def test_the_inverse_uses_the_recorded_range(tmp_path, rng):
    x = rng.normal(5.0, 3.0, (6, 4, 4, 2))
    stats = fresh_path(tmp_path, "stats", ".json")
    forward = transformed(tmp_path, x, "normalize", "--range", "-1", "1", "--save-stats", stats)
    assert statsfile.read(str(stats)).extra["range"] == [-1.0, 1.0]
    back = transformed(tmp_path, forward, "normalize", "--stats-from", stats, "--inverse")  # no --range
    np.testing.assert_allclose(back, x, rtol=0, atol=1e-12 * np.abs(x).max())
    same = transformed(tmp_path, forward, "normalize", "--stats-from", stats, "--inverse", "--range", "-1", "1")
    np.testing.assert_array_equal(same, back)


def test_the_inverse_with_another_range_is_a_usage_error_naming_both(tmp_path, rng):
    x = rng.normal(5.0, 3.0, (6, 4))
    stats = fresh_path(tmp_path, "stats", ".json")
    forward = save(tmp_path, transformed(tmp_path, x, "normalize", "--range", "-1", "1", "--save-stats", stats))
    out = fresh_path(tmp_path, "back", ".npy")
    result = run_cli("normalize", forward, "-o", out, "--stats-from", stats, "--inverse", "--range", "0", "1",
                     ok=False)
    assert result.exit_code == 2
    assert f"--range 0 1 contradicts {stats}, which was fitted with --range -1 1; drop --range" in result.stderr
    assert not out.exists()


def test_a_file_without_a_recorded_range_inverts_with_the_range_given(tmp_path, rng):
    """Files saved before the range was recorded (or by stats --save): the command's own --range."""
    x = rng.normal(5.0, 3.0, (6, 4))
    stats = fresh_path(tmp_path, "stats", ".json")
    forward = transformed(tmp_path, x, "normalize", "--range", "-1", "1", "--save-stats", stats)
    doc = json.loads(stats.read_text())
    del doc["range"]
    stats.write_text(json.dumps(doc))
    back = transformed(tmp_path, forward, "normalize", "--stats-from", stats, "--inverse", "--range", "-1", "1")
    np.testing.assert_allclose(back, x, rtol=0, atol=1e-12 * np.abs(x).max())
    unit = transformed(tmp_path, forward, "normalize", "--stats-from", stats, "--inverse")  # (0, 1), as before
    np.testing.assert_allclose(unit, (forward - 0.0) * (x.max() - x.min()) + x.min(), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
@pytest.mark.parametrize("kind", ["normalize", "standardize"])
def test_wide_integer_statistics_applied_from_a_file_are_exact(tmp_path, dtype, kind):
    """--stats-from gives what the fit gave: the file's int64/uint64 min, max and sums are exact."""
    info = np.iinfo(dtype)
    x = np.array([info.max, info.max - 2, info.max - 1, info.max - 4], dtype).reshape(4, 1, 1, 1)
    stats = fresh_path(tmp_path, "stats", ".json")
    fitted_output = transformed(tmp_path, x, kind, "--save-stats", stats)
    applied = transformed(tmp_path, x, kind, "--stats-from", stats)
    exact = (exact_normalize if kind == "normalize" else exact_standardize)(x, (0, 1, 2, 3))
    np.testing.assert_array_equal(applied, fitted_output)
    np.testing.assert_allclose(applied, exact, rtol=1e-15, atol=1e-15)
