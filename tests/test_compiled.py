"""normcli.compiled: when the compiled kernels are used, and the numpy fallback when they cannot be.

The kernels' numbers are tested in test_moments.py and test_histogram_kernel.py, which run every
test on both paths (the `kernel_path` fixture)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import run_cli
from normcli import compiled


@pytest.fixture
def fresh(monkeypatch):
    """normcli.compiled as in a new process: nothing loaded, nothing seen."""
    monkeypatch.setattr(compiled, "_ready", {})
    monkeypatch.setattr(compiled, "_numba", None)
    monkeypatch.setattr(compiled, "_seen", 0)
    monkeypatch.setattr(compiled, "_warm", None)


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(3).normal(5.0, 2.0, (40, 16, 16, 3)).astype(np.float32))
    return path


def stats(path, *args):
    return json.loads(run_cli("stats", path, "--per", "channel", "--format", "json", *args).stdout)


def test_without_numba_the_numpy_kernels_give_the_numbers_and_debug_says_why(fresh, monkeypatch, data):
    monkeypatch.setenv("NORMCLI_COMPILED", "0")
    want = stats(data)
    monkeypatch.setenv("NORMCLI_COMPILED", "1")
    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` raises ImportError
    assert stats(data) == want
    assert compiled.kernel("flat_sums", 0) is None
    monkeypatch.setattr(compiled, "_ready", {})
    monkeypatch.setattr(compiled, "_numba", None)
    result = run_cli("stats", data, "--debug", "--format", "json")
    assert result.stderr.startswith("note: compiled kernels off (numba not importable")
    monkeypatch.setattr(compiled, "_ready", {})
    monkeypatch.setattr(compiled, "_numba", None)
    assert "note:" not in run_cli("stats", data, "--format", "json").stderr


def test_no_writable_cache_folder_means_the_numpy_kernels(fresh, monkeypatch, tmp_path):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "file" / "cache"))  # under a file: cannot be made
    monkeypatch.setenv("NORMCLI_COMPILED", "1")
    assert compiled.kernel("flat_sums", 0) is None


def test_small_inputs_stay_on_numpy_until_the_threshold(fresh, monkeypatch):
    monkeypatch.delenv("NORMCLI_COMPILED", raising=False)
    monkeypatch.setattr(compiled, "_warm", False)
    loads = []
    monkeypatch.setattr(compiled, "_compile", lambda name: loads.append(name))
    assert compiled.kernel("flat_sums", compiled.COLD_BYTES - 1) is None and not loads
    compiled.kernel("flat_sums", 1)
    assert loads == ["flat_sums"]


def test_a_warm_cache_lowers_the_threshold(fresh, monkeypatch):
    monkeypatch.delenv("NORMCLI_COMPILED", raising=False)
    monkeypatch.setattr(compiled, "_warm", True)
    loads = []
    monkeypatch.setattr(compiled, "_compile", lambda name: loads.append(name))
    compiled.kernel("flat_sums", compiled.WARM_BYTES)
    assert loads == ["flat_sums"]


def test_a_small_run_never_imports_numba(data):
    env = {k: v for k, v in os.environ.items() if k != "NORMCLI_COMPILED"}
    code = ("import sys; from click.testing import CliRunner; from normcli.cli import cli; "
            f"r = CliRunner().invoke(cli, ['stats', {str(data)!r}]); assert r.exit_code == 0, r.output; "
            "print('numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_forced_compiled_kernels_give_the_numpy_histograms(monkeypatch, data):
    pytest.importorskip("numba")
    if os.environ.get("NORMCLI_COMPILED") == "0":
        pytest.skip("NORMCLI_COMPILED=0: the numpy kernels only")
    monkeypatch.setenv("NORMCLI_COMPILED", "0")
    want = stats(data)
    monkeypatch.setenv("NORMCLI_COMPILED", "1")
    got = stats(data)
    assert [r["histogram"] for r in got["rows"]] == [r["histogram"] for r in want["rows"]]
    for g, w in zip(got["rows"], want["rows"]):
        assert g["count"] == w["count"] and g["min"] == w["min"] and g["max"] == w["max"]
        np.testing.assert_allclose([g["mean"], g["var"]], [w["mean"], w["var"]], rtol=1e-12)
