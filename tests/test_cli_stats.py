"""`normcli stats`, `merge-stats`, `sample` and `demo` through Click's CliRunner.

Every expected number is computed here with float64 numpy from the data the test wrote.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re

import numpy as np
import pytest

from conftest import run_cli as run, write_image
from helpers import reference_rows

REPORT_KEYS = {"inputs", "samples", "sample_shape", "dtype", "layout", "per", "rows"}
ROW_KEYS = {"key", "count", "mean", "std", "var", "min", "max"}
STATS_FILE_KEYS = {"normcli_stats", "per", "layout", "sample_shape", "count", "mean", "m2", "var", "min", "max",
                   "ddof", "inputs"}


def one_error_line(result, exit_code=1):
    assert result.exit_code == exit_code
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


@pytest.fixture
def nhwc(chdir):
    """(7, 5, 4, 3) float64, channels with different offsets and spreads; saved as x.npy."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(7, 5, 4, 3)) * np.array([1.0, 4.0, 0.5]) + np.array([10.0, -3.0, 100.0])
    np.save("x.npy", x)
    return x


# -- reference statistics ---------------------------------------------------------
def keyed_rows(x: np.ndarray, per: str, layout: str = "NHWC"):
    """(the report's row keys, [values of each key])."""
    rows = reference_rows(x, layout, per)
    return (["all"] if per == "global" else [str(k) for k in range(len(rows))]), rows


def assert_row_matches(row, values, ddof=0, bins=30, hist_range=None):
    values = values.astype(np.float64)
    assert row["count"] == values.size
    np.testing.assert_allclose(row["mean"], values.mean(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(row["var"], values.var(ddof=ddof), rtol=1e-12)
    np.testing.assert_allclose(row["std"], values.std(ddof=ddof), rtol=1e-12)
    assert row["min"] == values.min()
    assert row["max"] == values.max()
    if bins:
        lo, hi = hist_range or (values.min(), values.max())
        counts, edges = np.histogram(values, bins, range=(lo, hi))
        assert row["histogram"]["counts"] == counts.tolist()
        np.testing.assert_allclose(row["histogram"]["edges"], edges, rtol=1e-12)
    else:
        assert "histogram" not in row


# -- table -------------------------------------------------------------------------
def test_table_has_header_rows_and_histograms(nhwc):
    result = run("stats", "x.npy")
    out = result.stdout
    header = out.splitlines()[0]
    for part in ("x.npy", f"{len(nhwc)} samples", "5×4×3", "float64", "NHWC", "per channel"):
        assert part in header
    assert re.search(r"^key\s+count\s+mean\s+std\s+var\s+min\s+max\s*$", out, re.M)
    keys, values = keyed_rows(nhwc, "channel")
    for key, v in zip(keys, values):
        line = next(line for line in out.splitlines() if line.split()[:1] == [key])
        cells = line.split()
        assert cells[1] == f"{v.size:,}"
        assert float(cells[2]) == pytest.approx(v.mean(), rel=1e-5)
        assert float(cells[4]) == pytest.approx(v.var(), rel=1e-5)
        assert f"channel {key}: 30 bins" in out
    histogram_lines = [line for line in out.splitlines() if set(line.strip()) <= set("▁▂▃▄▅▆▇█ ") and line.strip()]
    assert len(histogram_lines) >= 3 * 5  # five lines of bars per channel
    assert result.stderr == ""


def test_table_bins_0_has_no_histogram(nhwc):
    out = run("stats", "x.npy", "--bins", "0").stdout
    assert "bins" not in out
    assert not any(ch in out for ch in "▁▂▃▄▅▆▇█")


# -- json ------------------------------------------------------------------------------
@pytest.mark.parametrize("per", ["global", "channel", "sample"])
def test_json_rows_match_numpy(nhwc, per):
    doc = json.loads(run("stats", "x.npy", "--per", per, "--format", "json").stdout)
    assert set(doc) == REPORT_KEYS
    assert doc["inputs"] == ["x.npy"]
    assert doc["samples"] == nhwc.shape[0]
    assert doc["sample_shape"] == list(nhwc.shape[1:])
    assert doc["dtype"] == "float64"
    assert doc["layout"] == "NHWC"
    assert doc["per"] == per
    keys, values = keyed_rows(nhwc, per)
    assert [row["key"] for row in doc["rows"]] == keys
    for row, v in zip(doc["rows"], values):
        assert set(row) == ROW_KEYS | {"histogram"}
        assert_row_matches(row, v)


def test_json_default_scope_is_channel(nhwc):
    doc = json.loads(run("stats", "x.npy", "--format", "json").stdout)
    assert doc["per"] == "channel"
    assert len(doc["rows"]) == nhwc.shape[-1]


def test_json_pixel_values_are_nested_like_one_sample(nhwc):
    doc = json.loads(run("stats", "x.npy", "--per", "pixel", "--format", "json").stdout)
    assert set(doc) == REPORT_KEYS
    (row,) = doc["rows"]
    assert set(row) == ROW_KEYS | {"histogram"}
    assert row["key"] == "pixel"
    assert np.array(row["count"]).shape == nhwc.shape[1:]
    assert (np.array(row["count"]) == len(nhwc)).all()
    np.testing.assert_allclose(np.array(row["mean"]), nhwc.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(np.array(row["var"]), nhwc.var(axis=0), rtol=1e-12)
    np.testing.assert_allclose(np.array(row["std"]), nhwc.std(axis=0), rtol=1e-12)
    np.testing.assert_array_equal(np.array(row["min"]), nhwc.min(axis=0))
    np.testing.assert_array_equal(np.array(row["max"]), nhwc.max(axis=0))
    # The pixel row's histogram is over every value.
    counts, edges = np.histogram(nhwc, 30, range=(nhwc.min(), nhwc.max()))
    assert row["histogram"]["counts"] == counts.tolist()
    np.testing.assert_allclose(row["histogram"]["edges"], edges, rtol=1e-12)


def test_json_nchw_layout_channels_and_pixel_shape(chdir):
    x = np.random.default_rng(1).normal(size=(4, 3, 5, 6)) + np.arange(3)[None, :, None, None] * 10
    np.save("c.npy", x)
    doc = json.loads(run("stats", "c.npy", "--layout", "NCHW", "--format", "json").stdout)
    assert doc["layout"] == "NCHW"
    keys, values = keyed_rows(x, "channel", "NCHW")
    assert [r["key"] for r in doc["rows"]] == keys
    for row, v in zip(doc["rows"], values):
        assert_row_matches(row, v)
    doc = json.loads(run("stats", "c.npy", "--layout", "NCHW", "--per", "pixel", "--format", "json").stdout)
    np.testing.assert_allclose(np.array(doc["rows"][0]["mean"]), x.mean(axis=0), rtol=1e-12)


def test_json_ddof_1(nhwc):
    doc = json.loads(run("stats", "x.npy", "--per", "global", "--ddof", "1", "--format", "json").stdout)
    assert_row_matches(doc["rows"][0], nhwc.ravel(), ddof=1)


def test_json_bins_0_has_no_histogram_key(nhwc):
    for per in ("global", "channel", "sample", "pixel"):
        doc = json.loads(run("stats", "x.npy", "--per", per, "--bins", "0", "--format", "json").stdout)
        assert all("histogram" not in row for row in doc["rows"])
        assert all(set(row) == ROW_KEYS for row in doc["rows"])


@pytest.mark.parametrize("bins", [1, 7])
def test_json_range_sets_histogram_edges(nhwc, bins):
    lo, hi = 0.0, 12.0  # cuts channel 0 (mean 10) and leaves channel 2 (mean 100) out entirely
    doc = json.loads(run("stats", "x.npy", "--range", lo, hi, "--bins", bins, "--format", "json").stdout)
    _, values = keyed_rows(nhwc, "channel")
    for row, v in zip(doc["rows"], values):
        assert_row_matches(row, v, bins=bins, hist_range=(lo, hi))
    assert sum(doc["rows"][2]["histogram"]["counts"]) == 0


def test_range_must_be_increasing(nhwc):
    result = run("stats", "x.npy", "--range", 3, 1, ok=False)
    assert result.exit_code == 2
    assert "--range" in result.stderr


def test_json_integer_input_is_exact(chdir):
    x = np.random.default_rng(3).integers(0, 256, (9, 6, 5, 2), dtype=np.uint8)
    np.save("u8.npy", x)
    doc = json.loads(run("stats", "u8.npy", "--per", "channel", "--format", "json").stdout)
    assert doc["dtype"] == "uint8"
    for row, v in zip(doc["rows"], keyed_rows(x, "channel")[1]):
        assert_row_matches(row, v)


# -- csv ---------------------------------------------------------------------------------
@pytest.mark.parametrize("per", ["global", "channel", "sample"])
def test_csv_matches_numpy(nhwc, per):
    out = run("stats", "x.npy", "--per", per, "--format", "csv").stdout
    table = list(csv.reader(io.StringIO(out)))
    assert table[0] == ["key", "count", "mean", "std", "var", "min", "max"]
    keys, values = keyed_rows(nhwc, per)
    assert [r[0] for r in table[1:]] == keys
    for r, v in zip(table[1:], values):
        assert int(r[1]) == v.size
        np.testing.assert_allclose([float(c) for c in r[2:]], [v.mean(), v.std(), v.var(), v.min(), v.max()],
                                   rtol=1e-12, atol=1e-12)


def test_csv_pixel_has_a_line_per_position_and_channel(nhwc):
    out = run("stats", "x.npy", "--per", "pixel", "--format", "csv").stdout
    table = list(csv.reader(io.StringIO(out)))[1:]
    assert len(table) == np.prod(nhwc.shape[1:])
    mean = nhwc.mean(axis=0)
    for r in table:
        h, w, c = map(int, r[0].split(":"))
        assert float(r[2]) == pytest.approx(mean[h, w, c], rel=1e-12)


# -- torchvision ------------------------------------------------------------------------
def parse_normalize(line: str):
    m = re.fullmatch(r"Normalize\(mean=\(([^)]*)\), std=\(([^)]*)\)\)", line.strip())
    assert m, line
    return ([float(v) for v in m.group(1).split(",") if v.strip()],
            [float(v) for v in m.group(2).split(",") if v.strip()])


def test_torchvision_pools_all_pixels_of_uint8_rgb(chdir):
    rng = np.random.default_rng(5)
    images = []
    # Images of different sizes and brightness: the pooled std is far from the mean of per-image stds.
    for i, (h, w) in enumerate([(6, 8), (9, 5), (6, 8), (4, 4)]):
        image = (rng.integers(0, 40, (h, w, 3)) + i * 60 + np.array([0, 5, 10])).astype(np.uint8)
        write_image(chdir / "rgb" / f"{i}.png", image)
        images.append(image)
    line = run("stats", "rgb", "--format", "torchvision").stdout
    mean, std = parse_normalize(line)
    pooled = np.concatenate([im.reshape(-1, 3) for im in images]).astype(np.float64) / 255
    np.testing.assert_allclose(mean, pooled.mean(axis=0), atol=5.1e-5)
    np.testing.assert_allclose(std, pooled.std(axis=0), atol=5.1e-5)
    averaged = np.mean([(im.reshape(-1, 3) / 255).std(axis=0) for im in images], axis=0)
    assert (np.abs(np.array(std) - averaged) > 1e-2).all()


def test_torchvision_uint16_scales_by_65535(chdir):
    x = np.random.default_rng(2).integers(0, 65536, (5, 4, 4, 1), dtype=np.uint16)
    np.save("u16.npy", x)
    mean, std = parse_normalize(run("stats", "u16.npy", "--format", "torchvision").stdout)
    assert mean == pytest.approx([x.mean() / 65535], abs=5.1e-5)
    assert std == pytest.approx([x.std() / 65535], abs=5.1e-5)


def test_torchvision_float_is_not_scaled(nhwc):
    mean, std = parse_normalize(run("stats", "x.npy", "--format", "torchvision").stdout)
    _, values = keyed_rows(nhwc, "channel")
    np.testing.assert_allclose(mean, [v.mean() for v in values], atol=5.1e-5)
    np.testing.assert_allclose(std, [v.std() for v in values], atol=5.1e-5)


def test_torchvision_refuses_other_scopes(nhwc):
    result = run("stats", "x.npy", "--format", "torchvision", "--per", "global", ok=False)
    assert result.exit_code == 2


# -- image folders -------------------------------------------------------------------------
@pytest.fixture
def mixed_folder(chdir):
    """Gray and RGB PNGs of different sizes; returns the RGB view of each, in sorted order."""
    rng = np.random.default_rng(11)
    spec = {"a.png": ((5, 7), 1), "b.png": ((6, 4), 3), "sub/c.png": ((5, 7), 3), "sub/d.png": ((3, 3), 1)}
    views = []
    for name, ((h, w), c) in sorted(spec.items()):
        image = rng.integers(0, 256, (h, w) if c == 1 else (h, w, c), dtype=np.uint8)
        write_image(chdir / "mixed" / name, image)
        views.append(np.repeat(image[..., None], 3, axis=-1) if c == 1 else image)
    return views


def test_folder_gray_and_rgb_of_mixed_sizes_with_mode_rgb(mixed_folder):
    doc = json.loads(run("stats", "mixed", "--mode", "rgb", "--format", "json").stdout)
    assert doc["samples"] == 4
    assert doc["sample_shape"] == [None, None, 3]
    assert doc["dtype"] == "uint8"
    pooled = np.concatenate([v.reshape(-1, 3) for v in mixed_folder])
    for c, row in enumerate(doc["rows"]):
        assert_row_matches(row, pooled[:, c])
    doc = json.loads(run("stats", "mixed", "--mode", "rgb", "--per", "sample", "--format", "json").stdout)
    for row, v in zip(doc["rows"], mixed_folder):
        assert_row_matches(row, v.ravel())


def test_folder_mixed_channels_without_mode_is_an_error(mixed_folder):
    line = one_error_line(run("stats", "mixed", ok=False))
    assert "--mode" in line and "mixed" in line


def test_folder_per_pixel_on_mixed_sizes_is_a_clear_error(mixed_folder):
    line = one_error_line(run("stats", "mixed", "--mode", "rgb", "--per", "pixel", ok=False))
    assert "pixel" in line and "size" in line and "(mixed)" in line


def test_image_tree_fixture_channels(image_tree, monkeypatch):
    monkeypatch.chdir(image_tree.parent)
    from PIL import Image

    files = sorted(image_tree.rglob("*.png"), key=lambda p: p.relative_to(image_tree).as_posix())
    pooled = np.concatenate([np.asarray(Image.open(p)).reshape(-1, 3) for p in files])
    doc = json.loads(run("stats", "images", "--format", "json").stdout)
    for c, row in enumerate(doc["rows"]):
        assert_row_matches(row, pooled[:, c])


# -- saved statistics and merge-stats ---------------------------------------------------
def test_save_writes_stats_file_and_merge_stats_merges(nhwc):
    np.save("a.npy", nhwc[:3])
    np.save("b.npy", nhwc[3:] + 1e6)  # a different offset: merging must not lose the variance
    run("stats", "a.npy", "--save", "a.json", "--quiet")
    result = run("stats", "b.npy", "--save", "b.json")
    assert "b.npy" in result.stdout  # --save still prints the report
    saved = json.loads(open("a.json").read())
    assert STATS_FILE_KEYS <= set(saved)
    assert saved["normcli_stats"] == 1 and saved["per"] == "channel" and saved["layout"] == "NHWC"
    assert saved["sample_shape"] == [5, 4, 3]
    assert saved["inputs"] == ["a.npy"]
    np.testing.assert_allclose(saved["mean"], nhwc[:3].reshape(-1, 3).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(saved["var"], nhwc[:3].reshape(-1, 3).var(axis=0), rtol=1e-12)
    np.testing.assert_allclose(saved["m2"], nhwc[:3].reshape(-1, 3).var(axis=0) * 3 * 20, rtol=1e-12)

    result = run("merge-stats", "a.json", "b.json", "-o", "all.json")
    assert "all.json" in result.stdout
    merged = json.loads(open("all.json").read())
    both = np.concatenate([nhwc[:3], nhwc[3:] + 1e6]).reshape(-1, 3)
    assert STATS_FILE_KEYS <= set(merged)
    assert merged["inputs"] == ["a.npy", "b.npy"]
    assert merged["count"] == [len(both)] * 3
    np.testing.assert_allclose(merged["mean"], both.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(merged["var"], both.var(axis=0), rtol=1e-8)
    np.testing.assert_array_equal(merged["min"], both.min(axis=0))
    np.testing.assert_array_equal(merged["max"], both.max(axis=0))
    # The merged file applies like one fitted on everything.
    np.save("all.npy", both.reshape(-1, 5, 4, 3))
    run("standardize", "all.npy", "-o", "z.npy", "--stats-from", "all.json", "--quiet")
    np.testing.assert_allclose(np.load("z.npy"), ((both - both.mean(0)) / both.std(0)).reshape(-1, 5, 4, 3),
                               rtol=1e-5, atol=1e-5)


def test_save_refuses_existing_file_without_force(nhwc):
    run("stats", "x.npy", "--save", "s.json", "--quiet")
    before = open("s.json").read()
    result = run("stats", "x.npy", "--per", "global", "--save", "s.json", ok=False)
    assert "s.json" in one_error_line(result)
    assert open("s.json").read() == before
    run("stats", "x.npy", "--per", "global", "--save", "s.json", "--force", "--quiet")
    assert json.loads(open("s.json").read())["per"] == "global"


def test_merge_stats_pixel_scope(nhwc):
    np.save("a.npy", nhwc[:4])
    np.save("b.npy", nhwc[4:])
    run("stats", "a.npy", "--per", "pixel", "--save", "a.json", "-q")
    run("stats", "b.npy", "--per", "pixel", "--save", "b.json", "-q")
    run("merge-stats", "a.json", "b.json", "-o", "all.json")
    merged = json.loads(open("all.json").read())
    np.testing.assert_allclose(np.array(merged["mean"]), nhwc.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(np.array(merged["var"]), nhwc.var(axis=0), rtol=1e-10)


def test_merge_stats_refuses_different_scopes(nhwc):
    run("stats", "x.npy", "--per", "global", "--save", "g.json", "-q")
    run("stats", "x.npy", "--per", "channel", "--save", "c.json", "-q")
    line = one_error_line(run("merge-stats", "g.json", "c.json", "-o", "all.json", ok=False))
    assert "c.json" in line
    assert sorted(os.listdir(".")) == ["c.json", "g.json", "x.npy"]


# -- sample and demo ----------------------------------------------------------------------
def test_sample_npy_has_the_tutorial_statistics(chdir):
    result = run("sample", "out.npy", "-n", "200")
    assert "out.npy" in result.stdout
    data = np.load("out.npy")
    assert data.shape == (200, 32, 32, 1) and data.dtype == np.float64
    doc = json.loads(run("stats", "out.npy", "--per", "global", "--format", "json").stdout)
    row = doc["rows"][0]
    assert row["mean"] == pytest.approx(26, abs=1.0)
    assert row["var"] == pytest.approx(306, rel=0.05)
    assert row["mean"] == pytest.approx(data.mean(), rel=1e-12)
    out = run("stats", "out.npy", "--per", "global").stdout
    assert f"{data.mean():.6g}" in out and f"{data.var():.6g}" in out


def test_sample_seed_and_size(chdir):
    run("sample", "a.npy", "-n", "3", "--size", "5", "--channels", "2", "--seed", "4")
    run("sample", "b.npy", "-n", "3", "--size", "5", "--channels", "2", "--seed", "4")
    run("sample", "c.npy", "-n", "3", "--size", "5", "--channels", "2", "--seed", "5")
    a, b, c = np.load("a.npy"), np.load("b.npy"), np.load("c.npy")
    assert a.shape == (3, 5, 5, 2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sample_folder_writes_float32_tiffs_with_negatives(chdir):
    import tifffile

    run("sample", "ref.npy", "-n", "5")
    result = run("sample", "folder", "-n", "5")
    assert "folder" in result.stdout
    files = sorted(p.name for p in (chdir / "folder").iterdir())
    assert files == [f"{i:06d}.tiff" for i in range(5)]
    images = np.stack([tifffile.imread(chdir / "folder" / name) for name in files])
    assert images.dtype == np.float32
    assert images.shape[:3] == (5, 32, 32)
    assert (images < 0).any()
    np.testing.assert_array_equal(images.reshape(5, 32, 32, 1), np.load("ref.npy").astype(np.float32))
    assert not [p for p in chdir.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    # A trailing slash names the same folder.
    run("sample", "slash/", "-n", "2")
    assert len(list((chdir / "slash").iterdir())) == 2


def test_sample_refuses_existing_output(chdir):
    run("sample", "s.npy", "-n", "2")
    before = open("s.npy", "rb").read()
    line = one_error_line(run("sample", "s.npy", "-n", "3", ok=False))
    assert "s.npy" in line
    assert open("s.npy", "rb").read() == before
    run("sample", "s.npy", "-n", "3", "--force")
    assert np.load("s.npy").shape[0] == 3


def test_demo_shows_three_cases_and_the_difference(chdir):
    result = run("demo")
    out = result.stdout
    for case in ("Case 1", "Case 2", "Case 3"):
        assert case in out
    assert out.index("Case 1") < out.index("Case 2") < out.index("Case 3")
    flat = " ".join(out.split())
    m = re.search(r"max \|batch norm - standardize\| = ([0-9.e+-]+)", flat)
    assert m, flat
    assert 0 <= float(m.group(1)) < 1e-3
    assert "Traceback" not in result.stderr
    assert list(chdir.iterdir()) == []  # the demo writes only to its own temporary folder
