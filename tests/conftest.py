"""Shared fixtures: small deterministic datasets written into tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

# CI (CI=true) runs the same examples every time, so that a red run always means a change did it;
# the examples found locally (random seeds, a saved database) keep searching.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def write_image(path: Path, array: np.ndarray) -> Path:
    """Write one image with the library a user would have used (Pillow, tifffile, or our 16-bit PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(path, array)
    elif suffix == ".png" and array.dtype == np.uint16 and array.ndim == 3 and array.shape[-1] > 1:
        from normcli.png16 import write_png16

        write_png16(path, array)
    else:
        from PIL import Image

        Image.fromarray(array).save(path)
    return path


def run_cli(*args, ok=True):
    """Invoke the CLI through Click's runner; an unexpected Python exception fails the test with its traceback."""
    from click.testing import CliRunner

    from normcli.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    if ok:
        assert result.exit_code == 0, result.stderr
    return result


@pytest.fixture
def chdir(tmp_path, monkeypatch):
    """Run the test inside its tmp_path, so relative file names land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def image_tree(tmp_path, rng) -> Path:
    """A nested folder: 8-bit RGB PNGs of two sizes, in class subfolders."""
    root = tmp_path / "images"
    for name, (h, w) in {"a/0.png": (12, 10), "a/1.png": (12, 10), "b/2.png": (7, 9), "b/c/3.png": (12, 10)}.items():
        write_image(root / name, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return root


@pytest.fixture
def tutorial_npy(tmp_path) -> Path:
    from normcli.tutorial import tutorial_dataset

    path = tmp_path / "data.npy"
    np.save(path, tutorial_dataset(n=50, size=8, seed=3))
    return path


@pytest.fixture(params=["numpy", "compiled"])
def kernel_path(request, monkeypatch):
    """Runs a test with the numpy kernels and again with the compiled ones (normcli.compiled, forced
    on from the first block), where numba is installed and NORMCLI_COMPILED is not 0."""
    if request.param == "compiled":
        pytest.importorskip("numba")
        if os.environ.get("NORMCLI_COMPILED") == "0":
            pytest.skip("NORMCLI_COMPILED=0: the numpy kernels only")
        from normcli import compiled

        monkeypatch.setenv("NORMCLI_COMPILED", "1")
        if compiled.kernel("flat_sums", 0) is None:
            pytest.fail("numba is installed but the compiled kernels did not load")
    else:
        monkeypatch.setenv("NORMCLI_COMPILED", "0")
    return request.param
