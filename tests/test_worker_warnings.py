"""Warnings raised where the work runs (an engine's worker threads) reach the user as the same one
line as on the main thread; bool input (numpy's 0/1) through stats, normalize and standardize."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from conftest import run_cli
from helpers import save


@pytest.fixture
def bools(tmp_path):
    x = np.random.default_rng(0).random((50, 4, 4, 1)) > 0.3
    return x, save(tmp_path, x)


def _row(result) -> dict:
    (row,) = json.loads(result.stdout)["rows"]
    return row


@pytest.mark.parametrize("engine", ["threads", "processes"])
def test_stats_of_bools_is_the_stats_of_their_0_1_values_without_a_warning(bools, engine):
    x, path = bools
    values = x.astype(np.float64).reshape(-1)
    result = run_cli("stats", path, "--per", "global", "--format", "json", "--engine", engine, "--workers", "2")
    row = _row(result)
    assert result.stderr == ""  # numpy's own histogram of bools would warn of its conversion
    assert (row["count"], row["min"], row["max"]) == (values.size, 0, 1)
    assert row["mean"] == pytest.approx(np.count_nonzero(x) / x.size, rel=1e-15)  # the fraction true
    assert row["var"] == pytest.approx(values.var(), rel=1e-14)
    assert row["histogram"]["counts"] == np.histogram(values, 30, range=(0, 1))[0].tolist()


@pytest.mark.parametrize("command, expected", [
    ("normalize", lambda v: v),  # min 0, max 1: the values themselves
    ("standardize", lambda v: (v - v.mean()) / v.std()),
])
def test_bools_normalize_and_standardize_as_their_0_1_values(tmp_path, bools, command, expected):
    x, path = bools
    out = tmp_path / "o.npy"
    result = run_cli(command, path, "-o", out, "--dtype", "float64", "-q")
    assert result.stderr == ""
    np.testing.assert_allclose(np.load(out), expected(x.astype(np.float64)), rtol=0, atol=1e-12)


def test_a_warning_on_a_worker_thread_is_one_line(tmp_path, monkeypatch):
    """A worker thread has no click context of its own: its warning is shown as the main thread's."""
    from normcli import statspass

    measure_block = statspass.measure_block

    def warning_measure(*args, **kwargs):
        warnings.warn("a worker's warning", RuntimeWarning)
        return measure_block(*args, **kwargs)

    monkeypatch.setattr(statspass, "measure_block", warning_measure)
    path = save(tmp_path, np.arange(24.0).reshape(6, 4))
    result = run_cli("stats", path, "--per", "global", "--format", "json", "--engine", "threads", "--workers", "2")
    assert result.stderr == "warning: RuntimeWarning: a worker's warning\n"
    assert _row(result)["mean"] == 11.5


def test_a_warning_in_a_pool_process_is_the_same_one_line(tmp_path):
    """A pool process shares the driver's stderr: its warning there is the driver's one line, not
    Python's file:line form with the source line under it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import warnings; from normcli.engine import ProcessEngine\n"
            "with ProcessEngine(1) as engine: list(engine.map(warnings.warn, [\"a pool process's warning\"]))")
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(root)})
    assert (result.returncode, result.stderr) == (0, "warning: UserWarning: a pool process's warning\n")
