"""The saved-statistics file: write/read round trips, validation, check_options/check_fits, and
merging shards (Chan et al.) against one run over everything."""

from __future__ import annotations

import copy
import json
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from normcli import statsfile
from normcli.errors import StatsFileError, UsageMismatch
from normcli.moments import Moments
from normcli.passes import measure
from normcli.plans import ScalePlan
from normcli.sinks import Outputs
from normcli.sources import open_dataset
from normcli.statsfile import StatsFile
from normcli.transforms import zscore

from helpers import fresh_path, save, transform



def fitted(folder, x, scope, *, layout=None, ddof=0, ignore_nan=False, extra=None) -> StatsFile:
    with open_dataset([save(folder, x)], layout=layout) as dataset:
        stats = measure(dataset, scope, bins=0, ignore_nan=ignore_nan)
    return StatsFile(stats.scope, stats.layout, stats.sample_shape, stats.moments, ddof, list(stats.inputs),
                     extra or {})


def write_read(folder, stats: StatsFile):
    path = str(fresh_path(folder, "stats", ".json"))
    with Outputs() as outputs:
        statsfile.write(path, stats, outputs)
    return path, statsfile.read(path)


def strict_json(path):
    """The file as JSON, refusing NaN/Infinity (which are not JSON)."""
    def refuse(name):
        raise AssertionError(f"{name} in a JSON file")

    with open(path) as f:
        return json.load(f, parse_constant=refuse)


def assert_same_moments(a: Moments, b: Moments):
    np.testing.assert_array_equal(a.count, b.count)
    for name in ("mean", "m2", "min", "max"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.fixture
def images(rng):
    return rng.normal(0.0, 1.0, (14, 3, 4, 2)) * np.array([1.0, 5.0]) + np.array([-2.0, 30.0])


# ------------------------------------------------------------------------------ round trip
@pytest.mark.parametrize("scope", ["global", "channel", "sample", "pixel"])
@pytest.mark.parametrize("ddof", [0, 1])
def test_write_read_round_trip(tmp_path, images, scope, ddof):
    stats = fitted(tmp_path, images, scope, ddof=ddof)
    path, back = write_read(tmp_path, stats)
    assert (back.per, back.layout, back.sample_shape, back.ddof, back.inputs) == \
        (scope, "NHWC", (3, 4, 2), ddof, stats.inputs)
    assert_same_moments(back.moments, stats.moments)  # floats survive JSON exactly
    doc = strict_json(path)
    assert doc["normcli_stats"] == 1
    keys = {"global": 1, "channel": 2, "sample": 14, "pixel": 24}[scope]
    assert np.asarray(doc["mean"]).size == keys
    np.testing.assert_allclose(np.asarray(doc["var"]).reshape(-1),
                               np.asarray(doc["m2"]).reshape(-1) / (np.asarray(doc["count"]).reshape(-1) - ddof),
                               rtol=1e-15)


@pytest.mark.parametrize("layout,shape", [("NHWC", (6, 3, 4, 2)), ("NCHW", (6, 2, 3, 4)), ("NHW", (6, 3, 4)),
                                          ("NC", (6, 5))])
def test_pixel_arrays_are_nested_like_one_sample(tmp_path, rng, layout, shape):
    x = rng.normal(size=shape) + np.arange(np.prod(shape[1:])).reshape(shape[1:])  # every position its own mean
    stats = fitted(tmp_path, x, "pixel", layout=layout)
    path, back = write_read(tmp_path, stats)
    doc = strict_json(path)
    for name, expected in (("mean", x.mean(axis=0)), ("min", x.min(axis=0)), ("max", x.max(axis=0)),
                           ("var", x.var(axis=0)), ("count", np.full(shape[1:], len(x)))):
        value = np.asarray(doc[name])
        assert value.shape == shape[1:], name
        np.testing.assert_allclose(value, expected, rtol=1e-12, err_msg=name)
    # Read back, the statistics are the ones measured, key for key (whatever the layout).
    assert_same_moments(back.moments, stats.moments)


def test_pixel_file_applied_to_nchw_test_data_uses_the_right_positions(tmp_path, rng):
    """fit per pixel on NCHW train data, save, read, apply: each position gets its own statistics."""
    shape = (20, 2, 3, 4)
    offsets = np.arange(24.0).reshape(shape[1:]) * 3.0
    train = rng.normal(size=shape) + offsets
    test = rng.normal(size=(5, *shape[1:])) + offsets
    _, saved = write_read(tmp_path, fitted(tmp_path, train, "pixel", layout="NCHW"))
    out = tmp_path / "test_z.npy"
    with open_dataset([save(tmp_path, test)], layout=saved.layout) as dataset:
        statsfile.check_fits(saved, dataset, "train.json")
        transform(dataset, ScalePlan(saved.per, zscore, fitted=saved.moments), str(out), dtype="float64", bins=0)
    expected = (test - train.mean(axis=0)) / train.std(axis=0)
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-12, atol=1e-12)


def test_nan_and_inf_become_null_and_come_back(tmp_path, images):
    x = images.copy()
    x[..., 1] = np.nan  # channel 1 has no finite value at all
    x[0, 0, 0, 0] = np.inf
    stats = fitted(tmp_path, x, "channel", ignore_nan=True)
    assert stats.moments.count[1] == 0 and np.isnan(stats.moments.mean[1])
    path, back = write_read(tmp_path, stats)
    doc = strict_json(path)
    for name in ("mean", "var", "min", "max"):
        assert doc[name][1] is None, name
        assert doc[name][0] is not None, name
    assert doc["count"] == [int((np.isfinite(x[..., 0])).sum()), 0]
    assert np.isnan(back.moments.mean[1])
    assert back.moments.min[1] == np.inf and back.moments.max[1] == -np.inf  # empty: the identities of min/max
    np.testing.assert_array_equal(back.moments.mean[:1], stats.moments.mean[:1])
    assert np.isfinite(back.moments.max[0]) and back.moments.max[0] == np.nanmax(np.where(np.isinf(x), np.nan, x)[..., 0])


def test_batchnorm_running_statistics_round_trip(tmp_path, images):
    running = {"running_mean": np.array([0.25, -3.5]), "running_var": np.array([1.5, 0.125]),
               "momentum": "cumulative", "batches": 3}
    stats = fitted(tmp_path, images, "channel", extra=running)
    path, back = write_read(tmp_path, stats)
    assert strict_json(path)["running_mean"] == [0.25, -3.5]
    np.testing.assert_array_equal(back.extra["running_mean"], running["running_mean"])
    np.testing.assert_array_equal(back.extra["running_var"], running["running_var"])
    assert back.extra["momentum"] == "cumulative" and back.extra["batches"] == 3


def test_write_refuses_an_existing_file_without_force_and_leaves_no_temp(tmp_path, images):
    stats = fitted(tmp_path, images, "global")
    path = tmp_path / "s.json"
    path.write_text("keep")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(Exception, match="already exists"), Outputs() as outputs:
        statsfile.write(str(path), stats, outputs)
    assert path.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == before
    with Outputs() as outputs:
        statsfile.write(str(path), stats, outputs, force=True)
    assert statsfile.read(str(path)).per == "global"
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# ------------------------------------------------------------------------------ validation
def valid_doc(tmp_path, images, scope="channel"):
    path, _ = write_read(tmp_path, fitted(tmp_path, images, scope))
    return strict_json(path)


BROKEN = {
    "schema version": (lambda d: d.update(normcli_stats=2), "schema"),
    "no schema": (lambda d: d.pop("normcli_stats"), "schema"),
    "unknown scope": (lambda d: d.update(per="channels"), "unknown scope"),
    "unknown layout": (lambda d: d.update(layout="NWHC"), "layout"),
    "short mean": (lambda d: d.update(mean=d["mean"][:1]), "'mean' has 1 values where the scope has 2"),
    "long max": (lambda d: d.update(max=d["max"] + [1.0]), "'max' has 3 values"),
    "missing m2": (lambda d: d.pop("m2"), "m2"),
    "text count": (lambda d: d.update(count=["many", "more"]), "malformed"),
    "shape vs layout": (lambda d: d.update(sample_shape=[3, 4]), "sample_shape"),
    "shape not a list": (lambda d: d.update(sample_shape=5), "malformed"),
    "ragged": (lambda d: d.update(mean=[[1.0, 2.0], [3.0]]), "malformed"),
    "running_var length": (lambda d: d.update(running_mean=[0.0, 0.0], running_var=[1.0]), "running_var"),
    "range reversed": (lambda d: d.update(range=[1.0, 0.0]), "'range' is [1.0, 0.0]"),
    "range of text": (lambda d: d.update(range=["a", 1]), "'range'"),
    "shifted_mean short": (lambda d: d.update(shifted_mean=d["shifted_mean"][:1]), "'shifted_mean' has 1 values"),
    "shift NaN": (lambda d: d.update(shift=[None, 0.0]), "'shift' or 'shifted_mean' holds NaN"),
    "sum of floats": (lambda d: d.update(sum=[1.5, 2.0], sum_squares=[3, 4]), "whole numbers"),
    "sum_squares too small": (lambda d: d.update(sum=[1000, 1000], sum_squares=[1, 1]), "'sum_squares' is below"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_defective_files_are_one_line_stats_file_errors(tmp_path, images, case):
    mutate, message = BROKEN[case]
    doc = copy.deepcopy(valid_doc(tmp_path, images))
    mutate(doc)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(StatsFileError) as info:
        statsfile.read(str(path))
    text = str(info.value)
    assert message in text
    assert "\n" not in text and str(path) in text


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2, 3]", "null", "\"normcli\""])
def test_not_a_stats_file(tmp_path, content):
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(StatsFileError) as info:
        statsfile.read(str(path))
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(StatsFileError, match="no such"):
        statsfile.read(str(tmp_path / "absent.json"))


def test_pixel_file_needs_a_fixed_sample_shape(tmp_path, images):
    doc = valid_doc(tmp_path, images, "pixel")
    doc["sample_shape"] = [None, 4, 2]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(StatsFileError, match="fixed sample shape"):
        statsfile.read(str(path))


# ------------------------------------------------------------------------------ check_options / check_fits
def test_check_options(tmp_path, images):
    _, saved = write_read(tmp_path, fitted(tmp_path, images, "channel"))
    statsfile.check_options(saved, "s.json", per=None, layout=None)
    statsfile.check_options(saved, "s.json", per="channel", layout="nhwc")  # agreeing is fine
    with pytest.raises(UsageMismatch, match="--per pixel contradicts"):
        statsfile.check_options(saved, "s.json", per="pixel", layout=None)
    with pytest.raises(UsageMismatch, match="--layout NCHW contradicts"):
        statsfile.check_options(saved, "s.json", per=None, layout="NCHW")


def test_check_fits(tmp_path, images, rng):
    _, channel = write_read(tmp_path, fitted(tmp_path, images, "channel"))
    _, pixel = write_read(tmp_path, fitted(tmp_path, images, "pixel"))
    _, sample = write_read(tmp_path, fitted(tmp_path, images, "sample"))
    with open_dataset([save(tmp_path, rng.normal(size=(3, 3, 4, 2)))]) as same:
        statsfile.check_fits(channel, same, "c.json")
        statsfile.check_fits(pixel, same, "p.json")
        with pytest.raises(StatsFileError, match="cannot be applied"):
            statsfile.check_fits(sample, same, "s.json")
    with open_dataset([save(tmp_path, rng.normal(size=(3, 3, 4, 3)))]) as three_channels:
        with pytest.raises(StatsFileError, match="2 channels, but the data has 3") as info:
            statsfile.check_fits(channel, three_channels, "c.json")
        assert "\n" not in str(info.value) and "c.json" in str(info.value)
        with pytest.raises(StatsFileError, match="shape"):
            statsfile.check_fits(pixel, three_channels, "p.json")
    with open_dataset([save(tmp_path, rng.normal(size=(3, 5, 4, 2)))]) as taller:
        statsfile.check_fits(channel, taller, "c.json")  # per channel: any image size
        with pytest.raises(StatsFileError, match=r"\[3, 4, 2\].*\[5, 4, 2\]"):
            statsfile.check_fits(pixel, taller, "p.json")
    with open_dataset([save(tmp_path, rng.normal(size=(3, 2, 3, 4)))], layout="NCHW") as nchw:
        with pytest.raises(StatsFileError, match="layout NHWC"):
            statsfile.check_fits(channel, nchw, "c.json")


# ------------------------------------------------------------------------------ merge
def shard_files(folder, shards, scope, layout=None):
    return [write_read(folder, fitted(folder, s, scope, layout=layout)) for s in shards]


@pytest.mark.parametrize("scope", ["global", "channel", "pixel"])
def test_merge_of_shards_equals_one_run(tmp_path, images, rng, scope):
    x = np.concatenate([images, rng.normal(3.0, 2.0, (9, 3, 4, 2))])
    shards = [x[:4], x[4:5], x[5:17], x[17:]]
    files = shard_files(tmp_path, shards, scope)
    merged = statsfile.merge(files)
    whole = fitted(tmp_path, x, scope).moments
    np.testing.assert_array_equal(merged.moments.count, whole.count)
    np.testing.assert_allclose(merged.moments.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(merged.moments.var(), whole.var(), rtol=1e-12)
    np.testing.assert_array_equal(merged.moments.min, whole.min)
    np.testing.assert_array_equal(merged.moments.max, whole.max)
    axes = {"global": None, "channel": (0, 1, 2), "pixel": 0}[scope]
    np.testing.assert_allclose(merged.moments.var(), np.reshape(x.var(axis=axes), -1), rtol=1e-12)
    assert merged.inputs == [name for _, f in files for name in f.inputs] and len(merged.inputs) == len(shards)
    assert (merged.per, merged.layout, merged.sample_shape) == (scope, "NHWC", (3, 4, 2))
    # The merged file writes and reads like any other.
    _, back = write_read(tmp_path, merged)
    assert_same_moments(back.moments, merged.moments)


def naive_merge_var(files):
    """What a sum / sum-of-squares merge computes: catastrophic cancellation at a large offset."""
    n = s = ss = 0.0
    for _, f in files:
        count, mean, var = f.moments.count[0], f.moments.mean[0], f.moments.var()[0]
        n += count
        s += count * mean
        ss += count * (var + mean * mean)
    return ss / n - (s / n) ** 2


def test_merge_at_a_1e6_offset_beats_a_naive_merge(tmp_path, rng):
    offset = 1e6
    noise = rng.normal(0.0, 1.0, (3000, 4, 4))
    x = offset + noise
    truth = (x - offset).var()  # x - 1e6 is exact for these values: a reference without cancellation
    files = shard_files(tmp_path, [x[:700], x[700:1900], x[1900:]], "global")
    merged = statsfile.merge(files).moments.var()[0]
    merged_error = abs(merged - truth) / truth
    naive_error = abs(naive_merge_var(files) - truth) / truth
    assert merged_error <= 1e-8
    assert naive_error > 1e-8  # the naive merge misses the contract's bound...
    assert naive_error > 1000 * max(merged_error, np.finfo(float).eps)  # ...by orders of magnitude


def test_merge_refuses_what_does_not_merge(tmp_path, images, rng):
    (a_name, a), (_, b) = shard_files(tmp_path, [images[:5], images[5:]], "channel")
    _, pixel = write_read(tmp_path, fitted(tmp_path, images, "pixel"))
    _, other_pixel = write_read(tmp_path, fitted(tmp_path, rng.normal(size=(4, 4, 3, 2)), "pixel"))
    _, sample = write_read(tmp_path, fitted(tmp_path, images, "sample"))
    _, three = write_read(tmp_path, fitted(tmp_path, rng.normal(size=(4, 3, 4, 3)), "channel"))
    _, ddof1 = write_read(tmp_path, fitted(tmp_path, images, "channel", ddof=1))
    for files, message in (([("a", a), ("p", pixel)], "per pixel differs"),
                           ([("s", sample), ("a", a)], "per-sample"),
                           ([("a", a), ("t", three)], "shape differs"),
                           ([("p", pixel), ("q", other_pixel)], "shape differs"),
                           ([("a", a), ("d", ddof1)], "ddof 1 differs")):
        with pytest.raises(StatsFileError, match=message):
            statsfile.merge(files)
    assert statsfile.merge([(a_name, a), ("b", b)]).moments.count.sum() == images.size


def test_merge_of_images_of_different_sizes_keeps_the_varying_dimension_open(tmp_path, rng):
    small, tall = rng.normal(size=(3, 4, 5, 2)), rng.normal(size=(2, 6, 5, 2))
    merged = statsfile.merge(shard_files(tmp_path, [small, tall], "channel"))
    assert merged.sample_shape == (None, 5, 2)
    pooled = np.concatenate([small.reshape(-1, 2), tall.reshape(-1, 2)])
    np.testing.assert_allclose(merged.moments.var(), pooled.var(axis=0), rtol=1e-12)
    path, back = write_read(tmp_path, merged)
    assert strict_json(path)["sample_shape"] == [None, 5, 2] and back.sample_shape == (None, 5, 2)


# ------------------------------------------------------------------ merges as exact as one run
def exact_mean_var(values) -> tuple[float, float]:
    fractions = [Fraction(v) for v in values]
    mean = sum(fractions) / len(fractions)
    return float(mean), float(sum((f - mean) ** 2 for f in fractions) / len(fractions))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.sampled_from([0.0, 1e9, -1e12]), seed=st.integers(0, 2**32 - 1),
       sizes=st.lists(st.integers(1, 120), min_size=2, max_size=6), data=st.data())
def test_merged_shards_are_as_exact_as_one_run(tmp_path, offset, seed, sizes, data):
    """Files keep their shift and the mean about it: merged in any order, shards give the exact
    variance to 1e-15 at any offset (the rounded means alone gave 2e-8 at 1e9)."""
    x = offset + np.random.default_rng(seed).normal(0.0, 1.0, (sum(sizes), 3))
    cuts = np.cumsum([0, *sizes])
    files = shard_files(tmp_path, [x[a:b] for a, b in zip(cuts[:-1], cuts[1:])], "global", layout="NC")
    order = data.draw(st.permutations(range(len(files))))
    merged = statsfile.merge([files[i] for i in order]).moments
    mean, var = exact_mean_var(x.reshape(-1).tolist())
    assert merged.count[0] == x.size
    assert abs(merged.var()[0] - var) <= 1e-15 * var
    assert abs(merged.mean[0] - mean) <= 1e-15 * max(abs(mean), 1.0)


def test_files_saved_without_a_source_still_read_and_merge(tmp_path, rng):
    """A file from before shifts and sums were saved: read, merged by Chan et al. on its means."""
    x = rng.normal(5.0, 2.0, (40, 3))
    (path_a, a), (path_b, b) = shard_files(tmp_path, [x[:15], x[15:]], "channel", layout="NC")
    for path in (path_a, path_b):
        doc = json.load(open(path))
        del doc["shift"], doc["shifted_mean"]
        json.dump(doc, open(path, "w"))
    old = [(p, statsfile.read(p)) for p in (path_a, path_b)]
    assert all(f.moments.source is None for _, f in old)
    merged = statsfile.merge(old).moments
    np.testing.assert_allclose(merged.var(), x.var(axis=0), rtol=1e-12)
    np.testing.assert_allclose(merged.mean, x.mean(axis=0), rtol=1e-12)
    mixed = statsfile.merge([old[0], (path_b, b)]).moments  # an old file with a new one
    np.testing.assert_allclose(mixed.var(), x.var(axis=0), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.int64, np.uint64, np.int32, np.uint8])
def test_integer_extremes_stay_integers_through_files_and_merges(tmp_path, dtype):
    info = np.iinfo(dtype)
    shards = [np.array([[info.max], [info.max - 1]], dtype), np.array([[info.min], [0]], dtype),
              np.array([[info.min + 1], [3]], dtype)]
    files = shard_files(tmp_path, shards, "channel", layout="NC")
    for path, f in files:
        doc = strict_json(path)
        assert all(isinstance(v, int) for v in doc["min"] + doc["max"] + doc["sum"] + doc["sum_squares"])
    merged = statsfile.merge(files)
    path, back = write_read(tmp_path, merged)
    doc = strict_json(path)
    values = [int(v) for s in shards for v in s.reshape(-1)]
    assert doc["min"] == [min(values)] and doc["max"] == [max(values)]
    assert doc["sum"] == [sum(values)] and doc["sum_squares"] == [sum(v * v for v in values)]
    n, s1, s2 = len(values), sum(values), sum(v * v for v in values)
    assert back.moments.mean[0] == s1 / n
    assert back.moments.var()[0] == (s2 * n - s1 * s1) / (n * n)


def test_int64_and_uint64_files_merge_to_exact_integers(tmp_path):
    files = shard_files(tmp_path, [np.array([[-2**63], [5]], np.int64), np.array([[2**64 - 1]], np.uint64)],
                        "channel", layout="NC")
    path, _ = write_read(tmp_path, statsfile.merge(files))
    doc = strict_json(path)
    assert doc["min"] == [-2**63] and doc["max"] == [2**64 - 1] and doc["sum"] == [2**64 - 1 - 2**63 + 5]
