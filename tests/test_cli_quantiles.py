"""Percentiles through the commands: `stats --percentiles`, `standardize --robust` and `normalize
--percentiles`, against np.percentile / np.nanpercentile on the whole array (bit for bit),
scikit-learn's RobustScaler and a CSBDeep-style numpy reference; saved, reapplied and inverted;
refused where they cannot be exact."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from helpers import dask_cluster, reference_rows
from normcli.quantiles import METHODS
from normcli.sources import Dataset

Q = (0, 1, 25, 50, 75, 99.8, 100)
QS = ",".join(map(str, Q))


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(Dataset, "block_bytes", 300)  # many blocks, so the passes merge many partials


def percentiles_of(doc: dict) -> list[dict]:
    return [row["percentiles"] for row in doc["rows"]]


def assert_numpy(doc: dict, x: np.ndarray, layout: str, scope: str, method: str, *, nan: bool = False):
    """Every key's percentiles in the JSON report are numpy's on the key's values, exactly."""
    function = np.nanpercentile if nan else np.percentile
    rows = reference_rows(x, layout, scope)
    got = percentiles_of(doc)
    assert len(got) == len(rows)
    for row, values in zip(got, rows):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            want = function(values, list(map(float, Q)), method=method)
        assert list(row) == [f"{q:g}" if q != 99.8 else "99.8" for q in Q]
        for value, expected in zip(row.values(), want.tolist()):
            assert (value is None and not np.isfinite(expected)) or value == expected, (method, row, want)


def dataset(dtype: str, rng, shape=(7, 5, 4, 3)) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
        x.flat[::7] = info.max  # ties and the extremes
        x.flat[::11] = info.min
        return x
    x = (rng.normal(0, 50, shape)).astype(dtype)
    x.flat[::5] = x.flat[3]  # ties
    return x


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16", "int32", "uint64", "float16", "float32",
                                   "float64"])
@pytest.mark.parametrize("scope", ["global", "channel", "sample"])
def test_stats_percentiles_are_numpys_for_every_method(tmp_path, rng, small_blocks, dtype, scope):
    x = dataset(dtype, rng)
    np.save(tmp_path / "x.npy", x)
    for method in METHODS:
        done = run_cli("stats", tmp_path / "x.npy", "--per", scope, "--percentiles", QS, "--quantile-method", method,
                       "--format", "json", "--bins", "0")
        assert_numpy(json.loads(done.stdout), x, "NHWC", scope, method)


@pytest.mark.parametrize("engine", ["threads", "processes"])
def test_percentiles_on_every_engine_and_layout(tmp_path, rng, small_blocks, engine):
    x = rng.normal(3, 2, (6, 3, 5, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    for scope in ("global", "channel", "sample"):
        done = run_cli("stats", tmp_path / "x.npy", "--layout", "NCHW", "--per", scope, "--percentiles", QS,
                       "--format", "json", "--engine", engine, "--workers", "2", "--bins", "0")
        assert_numpy(json.loads(done.stdout), x, "NCHW", scope, "linear")


def test_ignore_nan_is_nanpercentile(tmp_path, rng, small_blocks):
    x = rng.normal(0, 1, (8, 4, 4, 2))
    x[0, 0, 0, 0] = x[3, 1, 2, 1] = np.nan
    x[5, 2, 2, 0] = np.inf
    x[1, :, :, 1] = np.nan  # a whole sample's channel
    np.save(tmp_path / "x.npy", x)
    for scope in ("global", "channel", "sample"):
        done = run_cli("stats", tmp_path / "x.npy", "--per", scope, "--percentiles", QS, "--ignore-nan",
                       "--format", "json", "--bins", "0")
        assert_numpy(json.loads(done.stdout), x, "NHWC", scope, "linear", nan=True)


def test_constant_data_and_one_value(tmp_path):
    for x in (np.full((3, 2, 2, 1), 7.25), np.array([[[[-3.0]]]])):
        np.save(tmp_path / "x.npy", x)
        done = run_cli("stats", tmp_path / "x.npy", "--percentiles", QS, "--format", "json", "--bins", "0")
        assert_numpy(json.loads(done.stdout), x, "NHWC", "channel", "linear")


def test_median_table_and_csv(tmp_path, rng):
    x = rng.integers(0, 256, (10, 6, 6, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    table = run_cli("stats", tmp_path / "x.npy", "--median", "--percentiles", "1,99.8", "--bins", "0").stdout
    medians = np.median(x.reshape(-1, 3), axis=0)
    assert "percentiles (linear):" in table and "p99.8" in table
    assert max(map(len, table.splitlines())) <= 80
    lines = run_cli("stats", tmp_path / "x.npy", "--median", "--format", "csv").stdout.splitlines()
    assert lines[0].split(",")[-1] == "p50"
    assert [float(line.split(",")[-1]) for line in lines[1:]] == medians.tolist()


def test_many_percentiles_fit_80_columns(tmp_path, rng):
    np.save(tmp_path / "x.npy", rng.normal(1e6, 1, (4, 3, 3, 2)))
    q = ",".join(str(p) for p in range(0, 101, 5))
    table = run_cli("stats", tmp_path / "x.npy", "--percentiles", q, "--bins", "0").stdout
    assert max(map(len, table.splitlines())) <= 80
    assert all(f"p{p}" in table for p in range(0, 101, 5))


def sklearn_photos(folder: Path) -> Path:
    """scikit-learn's two sample photographs (JPEG), copied into `folder`."""
    datasets = pytest.importorskip("sklearn.datasets")
    images = Path(datasets.__file__).parent / "images"
    folder.mkdir()
    for name in ("china.jpg", "flower.jpg"):
        shutil.copy(images / name, folder / name)
    return folder


def test_photographs(tmp_path):
    import tifffile
    from PIL import Image

    photos = sklearn_photos(tmp_path / "photos")
    pixels = np.concatenate([np.asarray(Image.open(p)).reshape(-1, 3) for p in sorted(photos.iterdir())])
    done = run_cli("stats", photos, "--percentiles", "1,50,99", "--format", "json", "--bins", "0")
    for channel, row in enumerate(percentiles_of(json.loads(done.stdout))):
        assert list(row.values()) == np.percentile(pixels[:, channel], [1.0, 50.0, 99.0]).tolist()
    out = tmp_path / "stretched"
    run_cli("normalize", photos, "-o", out, "--per", "channel", "--percentiles", "1", "99", "--ext", "tiff",
            "--dtype", "float32", "-q")
    low, high = np.percentile(pixels, [1.0, 99.0], axis=0)
    got = np.concatenate([tifffile.imread(out / f"{p.stem}.tiff").reshape(-1, 3)
                          for p in sorted(photos.iterdir())])
    np.testing.assert_allclose(got, np.clip((pixels - low) / (high - low), 0, 1), rtol=1e-6, atol=1e-7)


# -- standardize --robust ---------------------------------------------------------------------
@pytest.mark.parametrize("quantile_range", [(25.0, 75.0), (10.0, 90.0), (0.0, 100.0)])
@pytest.mark.parametrize("scope", ["global", "channel"])
def test_robust_is_sklearns_robust_scaler(tmp_path, rng, small_blocks, quantile_range, scope):
    preprocessing = pytest.importorskip("sklearn.preprocessing")
    x = rng.gamma(2.0, 3.0, (9, 4, 5, 3))
    x[..., 2] = 4.0  # a constant channel: a zero range, which scikit-learn scales by 1
    np.save(tmp_path / "x.npy", x)
    run_cli("standardize", tmp_path / "x.npy", "-o", tmp_path / "r.npy", "--robust", "--per", scope,
            "--quantile-range", *quantile_range, "--dtype", "float64", "-q")
    flat = x.reshape(-1, 3) if scope == "channel" else x.reshape(-1, 1)
    want = preprocessing.RobustScaler(quantile_range=quantile_range).fit_transform(flat).reshape(x.shape)
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), want, rtol=1e-12, atol=1e-12)


def test_robust_saved_reapplied_and_inverted(tmp_path, rng):
    preprocessing = pytest.importorskip("sklearn.preprocessing")
    train, test = rng.normal(5, 2, (20, 4, 4, 2)), rng.normal(6, 3, (5, 4, 4, 2))
    np.save(tmp_path / "train.npy", train)
    np.save(tmp_path / "test.npy", test)
    run_cli("standardize", tmp_path / "train.npy", "-o", tmp_path / "r.npy", "--robust", "--per", "channel",
            "--save-stats", tmp_path / "fit.json", "--dtype", "float64", "-q")
    saved = json.loads((tmp_path / "fit.json").read_text())
    assert saved["percentiles"]["q"] == [25.0, 50.0, 75.0] and saved["map"] == "robust"
    run_cli("standardize", tmp_path / "test.npy", "-o", tmp_path / "t.npy", "--stats-from", tmp_path / "fit.json",
            "--dtype", "float64", "-q")
    scaler = preprocessing.RobustScaler().fit(train.reshape(-1, 2))
    np.testing.assert_allclose(np.load(tmp_path / "t.npy"), scaler.transform(test.reshape(-1, 2)).reshape(test.shape),
                               rtol=1e-12, atol=1e-12)
    run_cli("standardize", tmp_path / "t.npy", "-o", tmp_path / "back.npy", "--stats-from", tmp_path / "fit.json",
            "--inverse", "--dtype", "float64", "-q")
    np.testing.assert_allclose(np.load(tmp_path / "back.npy"), test, rtol=1e-12, atol=1e-12)


# -- normalize --percentiles --------------------------------------------------------------------
def csbdeep_normalize(x, pmin, pmax, axis=None, clip=True):
    """CSBDeep's normalize(x, pmin, pmax): (x - p_lo) / (p_hi - p_lo), over `axis` (None: all)."""
    low = np.percentile(x, pmin, axis=axis, keepdims=True)
    high = np.percentile(x, pmax, axis=axis, keepdims=True)
    y = (x - low) / (high - low)
    return np.clip(y, 0, 1) if clip else y


@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("scope, axis", [("global", None), ("channel", (0, 1, 2)), ("sample", (1, 2, 3))])
def test_percentile_stretch_is_csbdeeps_normalize(tmp_path, rng, small_blocks, scope, axis, clip):
    x = rng.normal(100, 30, (6, 5, 5, 2)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    run_cli("normalize", tmp_path / "x.npy", "-o", tmp_path / "n.npy", "--per", scope, "--percentiles", "1", "99.8",
            "--dtype", "float64", "-q", *([] if clip else ["--no-clip"]))
    want = csbdeep_normalize(x.astype(np.float64), 1, 99.8, axis, clip)
    np.testing.assert_allclose(np.load(tmp_path / "n.npy"), want, rtol=1e-12, atol=1e-12)


def test_stretch_range_saved_and_inverted(tmp_path, rng):
    x = rng.integers(0, 65536, (8, 6, 6, 3), dtype=np.uint16)
    np.save(tmp_path / "x.npy", x)
    run_cli("normalize", tmp_path / "x.npy", "-o", tmp_path / "n.npy", "--per", "channel", "--percentiles", "2", "99",
            "--range", "-1", "1", "--save-stats", tmp_path / "fit.json", "--dtype", "float64", "-q")
    low, high = np.percentile(x, [2.0, 99.0], axis=(0, 1, 2))
    want = np.clip((x - low) / (high - low) * 2 - 1, -1, 1)
    np.testing.assert_allclose(np.load(tmp_path / "n.npy"), want, rtol=1e-12, atol=1e-12)
    run_cli("normalize", tmp_path / "n.npy", "-o", tmp_path / "back.npy", "--stats-from", tmp_path / "fit.json",
            "--inverse", "--dtype", "float64", "-q")
    inside = (x >= low) & (x <= high)
    np.testing.assert_allclose(np.load(tmp_path / "back.npy")[inside], x[inside], rtol=1e-9)
    # the percentiles of a stats run, reapplied
    run_cli("stats", tmp_path / "x.npy", "--percentiles", "2,50,99", "--save-stats", tmp_path / "s.json", "-q")
    run_cli("normalize", tmp_path / "x.npy", "-o", tmp_path / "m.npy", "--percentiles", "2", "99", "--range", "-1",
            "1", "--stats-from", tmp_path / "s.json", "--dtype", "float64", "-q")
    np.testing.assert_allclose(np.load(tmp_path / "m.npy"), want, rtol=1e-12, atol=1e-12)


# -- refusals ---------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["stats", "x.npy", "--percentiles", "101"], "not a percentile in [0, 100]"),
    (["stats", "x.npy", "--percentiles", "-1,50"], "not a percentile in [0, 100]"),
    (["stats", "x.npy", "--median", "--quantile-method", "exact"], "'exact' is not one of"),
    (["stats", "x.npy", "--median", "--per", "pixel", "--save-stats", "s.json"], "percentiles --per pixel"),
    (["standardize", "x.npy", "-o", "out.npy", "--robust", "--per", "pixel"], "percentiles --per pixel"),
    (["normalize", "x.npy", "-o", "out.npy", "--percentiles", "1", "99", "--per", "pixel"], "percentiles --per pixel"),
    (["normalize", "x.npy", "-o", "out.npy", "--percentiles", "99", "1"], "LO must be below HI"),
    (["normalize", "x.npy", "-o", "out.npy", "--no-clip"], "--no-clip goes with --percentiles"),
    (["standardize", "x.npy", "-o", "out.npy", "--quantile-range", "25", "75"], "--quantile-range goes with"),
])
def test_bad_quantile_options_are_usage_errors(chdir, args, message):
    np.save("x.npy", np.arange(24.0).reshape(2, 3, 4, 1))
    done = run_cli(*args, ok=False)
    assert done.exit_code == 2 and message in done.stderr
    assert sorted(os.listdir(".")) == ["x.npy"]


def test_merge_stats_refuses_percentiles(chdir):
    np.save("x.npy", np.arange(24.0).reshape(2, 3, 4, 1))
    run_cli("stats", "x.npy", "--median", "--save-stats", "a.json", "-q")
    run_cli("stats", "x.npy", "--save-stats", "b.json", "-q")
    done = run_cli("merge-stats", "b.json", "a.json", "-o", "all.json", ok=False)
    assert done.exit_code == 1
    assert done.stderr.splitlines() == [done.stderr.strip()] and "cannot be merged exactly" in done.stderr
    assert "(a.json)" in done.stderr and not os.path.exists("all.json")


def test_booleans_have_no_percentiles(chdir):
    np.save("b.npy", np.ones((3, 2, 2, 1), bool))
    done = run_cli("normalize", "b.npy", "-o", "out.npy", "--percentiles", "1", "99", ok=False)
    assert done.exit_code == 1 and done.stderr.startswith("error: holds booleans") and "(b.npy)" in done.stderr
    assert len(done.stderr.splitlines()) == 1 and sorted(os.listdir(".")) == ["b.npy"]


def test_stats_from_without_the_percentiles_is_refused(chdir):
    np.save("x.npy", np.arange(24.0).reshape(2, 3, 4, 1))
    run_cli("stats", "x.npy", "--per", "global", "--save-stats", "s.json", "-q")
    done = run_cli("standardize", "x.npy", "-o", "r.npy", "--robust", "--stats-from", "s.json", ok=False)
    assert done.exit_code == 1 and "holds no percentile 25, 50, 75" in done.stderr
    assert not os.path.exists("r.npy")


# -- a real subprocess on a real cluster ---------------------------------------------------------
def test_percentiles_on_a_dask_cluster(tmp_path, rng):
    pytest.importorskip("distributed")
    x = rng.normal(0, 1, (40, 16, 16, 2)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "NO_COLOR": "1"}
    with dask_cluster(tmp_path / "dask-logs") as (address, _):
        done = subprocess.run([sys.executable, "-m", "normcli", "stats", "x.npy", "--percentiles", QS, "--format",
                               "json", "--engine", "dask", "--scheduler", address], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert_numpy(json.loads(done.stdout), x, "NHWC", "channel", "linear")
        done = subprocess.run([sys.executable, "-m", "normcli", "standardize", "x.npy", "-o", "r.npy", "--robust",
                               "--dtype", "float64", "-q", "--engine", "dask", "--scheduler", address], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    low, median, high = np.percentile(x, [25.0, 50.0, 75.0])
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), (x - median) / (high - low), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype, scope, options, passes", [
    ("float32", "global", (), ["measuring", "percentiles"]),
    ("float32", "channel", (), ["measuring", "percentiles"]),
    ("float32", "sample", (), ["measuring"]),
    ("int64", "global", (), ["measuring", "percentiles"]),
    ("uint8", "global", (), ["measuring"]),
    ("float32", "global", ("--bins", "5"), ["measuring", "histograms", "percentiles"]),
])
def test_the_statistics_pass_takes_the_first_quantile_pass(tmp_path, monkeypatch, dtype, scope, options, passes):
    """float32 (and any 32-bit type, or a narrow range of a 64-bit one) takes one pass after the
    statistics pass, per-sample quantiles and 8-bit value counts none: counted as the passes run."""
    from normcli import passes as driver, reduction

    seen = []
    real = reduction.reduce

    def counted(engine, a_pass, blocks, progress=None):
        seen.append(a_pass.name)
        return real(engine, a_pass, blocks, progress)

    monkeypatch.setattr(reduction, "reduce", counted)
    monkeypatch.setattr(driver, "reduce", counted)
    monkeypatch.setattr(Dataset, "block_bytes", 1 << 16)
    rng = np.random.default_rng(8)
    shape = (400, 16, 16, 3)  # more values per key than a pass collects (Request.collect_limit)
    x = dataset(dtype, rng, shape) if dtype != "int64" else rng.integers(-500, 500, shape)
    np.save(tmp_path / "x.npy", x)
    doc = json.loads(run_cli("stats", tmp_path / "x.npy", "--per", scope, "--bins", "0", *options,
                             "--percentiles", QS, "--format", "json").stdout)
    assert seen == passes
    assert_numpy(doc, x, "NHWC", scope, "linear")
