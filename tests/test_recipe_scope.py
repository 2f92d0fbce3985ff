"""docs/ARCHITECTURE.md's "Add a scope", followed in the test alone: one more Scope in
scopes.SCOPES, and `stats --per` it runs end to end (table, JSON, CSV, --save-stats, merge-stats)
and its saved statistics apply with `standardize --stats-from`.

The scope is added the way editing scopes.py adds it: in a fresh process, to SCOPES, before
anything of normcli reads the scopes (the --per choices, run.py, reports, saved files).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

# A scope per position (a row and column of an image) across samples and channels.
PROGRAM = """
import sys
from normcli import scopes

scopes.SCOPES["position"] = scopes.Scope("position", (scopes.SAMPLES, scopes.CHANNELS))
from normcli.cli import main

sys.argv[0] = "normcli"
main()
"""
ENV = {**os.environ, "NO_COLOR": "1", "COLUMNS": "100"}
CHANNEL_AXIS = {"NHWC": 3, "NCHW": 1}
REL = 1e-12


def normcli_with_position_scope(*args, cwd) -> str:
    result = subprocess.run([sys.executable, "-c", PROGRAM, *map(str, args)], cwd=cwd, capture_output=True,
                            text=True, timeout=120, env=ENV)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def reference(x: np.ndarray, layout: str) -> dict:
    """Each position's statistics over the samples and channels, shaped (H, W), in float64 numpy."""
    axes = (0, CHANNEL_AXIS[layout])
    x = x.astype(np.float64)
    mean = x.mean(axis=axes)
    return {"count": np.full(mean.shape, x.shape[0] * x.shape[axes[1]]), "mean": mean, "var": x.var(axis=axes),
            "std": x.std(axis=axes), "min": x.min(axis=axes), "max": x.max(axis=axes)}


@pytest.fixture(params=["NHWC", "NCHW"])
def data(request, tmp_path, rng):
    layout = request.param
    shape = (7, 3, 4, 2) if layout == "NHWC" else (7, 2, 3, 4)  # 3 rows, 4 columns, 2 channels
    x = rng.normal(5.0, 2.0, shape)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "a.npy", x[:3])
    np.save(tmp_path / "b.npy", x[3:])
    return layout, x


def test_json_has_one_row_of_values_shaped_like_the_positions(tmp_path, data):
    layout, x = data
    report = json.loads(normcli_with_position_scope("stats", "x.npy", "--layout", layout, "--per", "position",
                                                    "--format", "json", cwd=tmp_path))
    assert report["per"] == "position"
    (row,) = report["rows"]
    assert row["key"] == "position"
    for name, expected in reference(x, layout).items():
        np.testing.assert_allclose(np.array(row[name]), expected, rtol=REL, err_msg=name)
        assert np.shape(row[name]) == (3, 4)
    assert sum(row["histogram"]["counts"]) == x.size  # one histogram of all values
    assert row["histogram"]["edges"][0] == x.min() and row["histogram"]["edges"][-1] == x.max()


def test_csv_has_a_line_per_position_named_by_row_and_column(tmp_path, data):
    layout, x = data
    text = normcli_with_position_scope("stats", "x.npy", "--layout", layout, "--per", "position", "--format", "csv",
                                       cwd=tmp_path)
    lines = list(csv.DictReader(io.StringIO(text)))
    expected = reference(x, layout)
    assert [line["key"] for line in lines] == [f"{i}:{j}" for i in range(3) for j in range(4)]
    for line in lines:
        i, j = map(int, line["key"].split(":"))
        assert int(line["count"]) == expected["count"][i, j]
        for name in ("mean", "std", "var", "min", "max"):
            assert float(line[name]) == pytest.approx(expected[name][i, j], rel=REL), (line["key"], name)


def test_table_shows_the_lowest_and_highest_over_the_positions(tmp_path, data):
    layout, x = data
    text = normcli_with_position_scope("stats", "x.npy", "--layout", layout, "--per", "position", cwd=tmp_path)
    lines = text.splitlines()
    assert lines[0].endswith(f"{layout}, per position (12 positions)")
    expected = reference(x, layout)
    for which, pick in (("lowest", np.min), ("highest", np.max)):
        (row,) = [line.split() for line in lines if line.startswith(which)]
        assert row[1:] == [f"{int(pick(expected['count'])):,}",
                           *(f"{pick(expected[name]):.6g}" for name in ("mean", "std", "var", "min", "max"))]
    assert any(line.strip().startswith(f"all values: 30 bins, {x.size:,} values") for line in lines)


def test_saved_statistics_merge_and_apply_to_other_data(tmp_path, data, rng):
    layout, x = data
    run = normcli_with_position_scope
    run("stats", "x.npy", "--layout", layout, "--per", "position", "--save-stats", "all.json", "--quiet", cwd=tmp_path)
    saved = json.loads((tmp_path / "all.json").read_text())
    expected = reference(x, layout)
    assert (saved["per"], saved["layout"], saved["sample_shape"]) == ("position", layout, list(x.shape[1:]))
    for name in ("count", "mean", "var", "min", "max"):
        np.testing.assert_allclose(np.array(saved[name]), expected[name], rtol=REL, err_msg=name)

    run("stats", "a.npy", "--layout", layout, "--per", "position", "--save", "a.json", "--quiet", cwd=tmp_path)
    run("stats", "b.npy", "--layout", layout, "--per", "position", "--save", "b.json", "--quiet", cwd=tmp_path)
    run("merge-stats", "a.json", "b.json", "-o", "merged.json", cwd=tmp_path)
    merged = json.loads((tmp_path / "merged.json").read_text())
    for name in ("count", "mean", "var", "min", "max"):
        np.testing.assert_allclose(np.array(merged[name]), expected[name], rtol=1e-15, err_msg=name)

    y = rng.normal(-1.0, 3.0, x.shape)
    np.save(tmp_path / "y.npy", y)
    run("standardize", "y.npy", "-o", "z.npy", "--stats-from", "all.json", "--quiet", cwd=tmp_path)
    axes = (0, CHANNEL_AXIS[layout])
    z = (y - np.expand_dims(expected["mean"], axes)) / np.expand_dims(expected["std"], axes)
    np.testing.assert_allclose(np.load(tmp_path / "z.npy"), z.astype(np.float32), rtol=1e-6, atol=1e-6)
