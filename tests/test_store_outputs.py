"""Zarr and HDF5 outputs (-o out.zarr, -o out.h5): read back with zarr and h5py, they hold the bytes
of the same run's -o out.npy, on every engine (a real `dask scheduler` and workers for Zarr); their
chunks are whole blocks; the output rules hold (temporary name, --save-stats together, --force only
over a store of the same kind, nothing left after a failure)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from refusals import assert_message, snapshot, workspace  # noqa: F401  (the fixture)
from test_safety_faults import mounts, normcli  # noqa: F401  (mounts: the fixture, a small tmpfs)

zarr = pytest.importorskip("zarr", reason="the Zarr outputs need the [zarr] extra")
h5py = pytest.importorskip("h5py", reason="the HDF5 outputs need the [hdf5] extra")

from normcli.sources import Dataset  # noqa: E402

SMALL_BLOCKS = 4096  # bytes: the data below spans many blocks
TRANSFORMS = {
    "normalize": ["normalize", "--per", "channel"],
    "standardize": ["standardize", "--per", "sample"],
    "batchnorm": ["batchnorm", "--batch-size", "7", "--shuffle", "--seed", "3"],
    "groupnorm": ["groupnorm", "--groups", "3"],
    "uint8": ["normalize", "--dtype", "uint8"],
}


def read_back(path: Path, key: str = "data") -> np.ndarray:
    """The array a store output holds, as zarr or h5py read it."""
    if path.suffix == ".zarr":
        return zarr.open_array(str(path), mode="r")[...]
    with h5py.File(path, "r") as file:
        return file[key][...]


def chunks(path: Path, key: str = "data") -> tuple:
    if path.suffix == ".zarr":
        return zarr.open_array(str(path), mode="r").chunks
    with h5py.File(path, "r") as file:
        return file[key].chunks


def assert_holds_the_npy(store: Path, npy: Path, key: str = "data") -> None:
    expected = np.load(npy)
    found = read_back(store, key)
    assert found.dtype == expected.dtype and found.shape == expected.shape
    assert found.tobytes() == expected.tobytes()


@pytest.fixture
def data(tmp_path, rng):
    x = 5e3 + rng.normal(0.0, 40.0, (45, 6, 5, 3))
    np.save(tmp_path / "x.npy", x)
    return tmp_path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    pytest.importorskip("distributed", reason="the Dask engine needs the [dask] extra")
    from helpers import dask_cluster

    with dask_cluster(tmp_path_factory.mktemp("dask-logs")) as (address, _):
        yield address


def engine_args(engine: str, request) -> list[str]:
    if engine == "dask":
        return ["--scheduler", request.getfixturevalue("cluster")]
    return ["--engine", engine, "--workers", "2"]


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("engine", ["threads", "processes", "dask"])
def test_a_store_output_holds_the_npy_output(data, monkeypatch, request, engine, transform, suffix):
    monkeypatch.setattr(Dataset, "block_bytes", SMALL_BLOCKS)
    command = TRANSFORMS[transform]
    run_cli(*command, data / "x.npy", "-o", data / "o.npy", "-q")
    result = run_cli(*command, data / "x.npy", "-o", data / f"o{suffix}", "-q", *engine_args(engine, request))
    assert_holds_the_npy(data / f"o{suffix}", data / "o.npy")
    assert result.stderr == ""  # -q: no closing line
    assert sorted(p.name for p in data.iterdir()) == sorted(["o.npy", f"o{suffix}", "x.npy"])  # no temporaries


def test_zarr_chunks_are_whole_blocks_and_the_closing_line_names_the_store(data, monkeypatch):
    monkeypatch.setattr(Dataset, "block_bytes", SMALL_BLOCKS)
    from normcli.sources import open_dataset

    with open_dataset([str(data / "x.npy")]) as dataset:
        starts = [block.start for block in dataset.blocks()]
    result = run_cli("standardize", data / "x.npy", "-o", data / "o.zarr", "--compressor", "blosc")
    rows = chunks(data / "o.zarr")[0]
    assert len(starts) > 1 and all(start % rows == 0 for start in starts) and rows == starts[1]
    assert result.stdout.splitlines()[-1] == f"wrote {data / 'o.zarr'} (45 samples, float32, blosc)"
    result = run_cli("standardize", data / "x.npy", "-o", data / "o.h5", "--key", "g/z", "--compressor", "lzf")
    assert result.stdout.splitlines()[-1] == f"wrote {data / 'o.h5'} (45 samples, float32, lzf, key g/z)"
    with h5py.File(data / "o.h5", "r") as file:
        assert file["g/z"].compression == "lzf"


@pytest.mark.parametrize("compressor", ["zstd", "blosc", "gzip", "none"])
def test_every_zarr_compressor(data, compressor):
    run_cli("normalize", data / "x.npy", "-o", data / "o.npy", "-q")
    run_cli("normalize", data / "x.npy", "-o", data / "o.zarr", "-q", "--compressor", compressor)
    assert_holds_the_npy(data / "o.zarr", data / "o.npy")
    codecs = zarr.open_array(str(data / "o.zarr"), mode="r").compressors
    assert (len(codecs) == 0) if compressor == "none" else (compressor in type(codecs[0]).__name__.lower())


@pytest.mark.parametrize("compressor", ["gzip", "lzf", "none"])
def test_every_hdf5_compressor(data, compressor):
    run_cli("normalize", data / "x.npy", "-o", data / "o.npy", "-q")
    run_cli("normalize", data / "x.npy", "-o", data / "o.hdf5", "-q", "--compressor", compressor)
    assert_holds_the_npy(data / "o.hdf5", data / "o.npy")
    with h5py.File(data / "o.hdf5", "r") as file:
        assert file["data"].compression == (None if compressor == "none" else compressor)


def test_a_store_output_is_read_back_as_an_input(data):
    run_cli("standardize", data / "x.npy", "-o", data / "o.npy", "-q")
    for out in ("o.zarr", "o.h5"):
        run_cli("standardize", data / "x.npy", "-o", data / out, "-q")
        assert json.loads(run_cli("stats", data / out, "--format", "json").stdout)["rows"] == \
            json.loads(run_cli("stats", data / "o.npy", "--format", "json").stdout)["rows"]


def test_an_output_key_names_the_output_array_and_the_input_keeps_its_own(data):
    """--key picks the input's array; --output-key the output's (.h5, .npz), which is otherwise the
    input's key: an HDF5 dataset converts into another file, at another path."""
    with h5py.File(data / "in.h5", "w") as file:
        file.create_dataset("scans/raw", data=np.load(data / "x.npy"), chunks=(10, 6, 5, 3))
    run_cli("standardize", data / "x.npy", "-o", data / "o.npy", "-q")
    result = run_cli("standardize", data / "in.h5", "--key", "/scans/raw", "-o", data / "o.h5",
                     "--output-key", "z/unit")
    assert result.stdout.splitlines()[-1] == f"wrote {data / 'o.h5'} (45 samples, float32, gzip, key z/unit)"
    assert_holds_the_npy(data / "o.h5", data / "o.npy", key="z/unit")
    run_cli("standardize", data / "in.h5", "--key", "/scans/raw", "-o", data / "kept.h5", "-q")
    assert_holds_the_npy(data / "kept.h5", data / "o.npy", key="scans/raw")
    run_cli("standardize", data / "in.h5", "--key", "/scans/raw", "-o", data / "o.npz", "--output-key", "unit", "-q")
    with np.load(data / "o.npz") as archive:
        assert list(archive) == ["unit"] and archive["unit"].tobytes() == np.load(data / "o.npy").tobytes()


def test_sample_writes_stores_too(tmp_path):
    run_cli("sample", tmp_path / "s.npy", "-n", "20", "--size", "4")
    for out in ("s.zarr", "s.h5"):
        result = run_cli("sample", tmp_path / out, "-n", "20", "--size", "4")
        assert_holds_the_npy(tmp_path / out, tmp_path / "s.npy")
        assert result.stdout.startswith(f"wrote {tmp_path / out} (20 samples, float64, ")


def test_save_stats_commits_with_the_store(data):
    run_cli("standardize", data / "x.npy", "-o", data / "o.zarr", "--save-stats", data / "s.json", "-q")
    run_cli("standardize", data / "x.npy", "-o", data / "o.npy", "--save-stats", data / "n.json", "-q")
    assert (data / "s.json").read_text() == (data / "n.json").read_text()
    assert_holds_the_npy(data / "o.zarr", data / "o.npy")


@pytest.mark.parametrize("out", ["o.zarr", "o.h5"])
def test_force_replaces_a_store_of_the_same_kind_whole(data, out):
    run_cli("normalize", data / "x.npy", "-o", data / "o.npy", "-q")
    small = data / "small.npy"
    np.save(small, np.zeros((2, 3)))
    run_cli("normalize", small, "-o", data / out, "-q")
    run_cli("normalize", data / "x.npy", "-o", data / out, "-q", "--force")
    assert_holds_the_npy(data / out, data / "o.npy")
    if out.endswith(".zarr"):  # nothing of the old array is left among the new one's chunks
        assert all(len(key.split("/")) in (1, 5) for key in
                   (p.relative_to(data / out).as_posix() for p in (data / out).rglob("*") if p.is_file()))


# -- refusals: one line, its exit code, nothing written, no temporaries ----------------------------
def _store_input() -> None:
    np.save("x.npy", np.random.default_rng(0).normal(size=(30, 4, 4, 3)))


@pytest.mark.parametrize("out", ["o.zarr", "o.h5"])
def test_an_existing_store_needs_force(workspace, out):
    _store_input()
    run_cli("normalize", "x.npy", "-o", out, "-q")
    workspace.refused("standardize", "x.npy", "-o", out, contains=f"already exists; pass --force to replace it ({out})")


@pytest.mark.parametrize("out,make,kind", [
    ("o.zarr", lambda p: (p.mkdir(), (p / "notes.txt").write_text("mine")), "a Zarr store"),
    ("o.zarr", lambda p: p.write_text("mine"), "a Zarr store"),
    ("o.h5", lambda p: (p.mkdir(), (p / "notes.txt").write_text("mine")), "an HDF5 file"),
])
def test_force_never_replaces_something_else(workspace, out, make, kind):
    _store_input()
    make(Path(out))
    workspace.refused("normalize", "x.npy", "-o", out, "--force",
                      contains=f"exists and is not {kind}; --force replaces only what this run writes ({out})")


@pytest.mark.parametrize("args,contains", [
    (["-o", "o.zarr", "--compressor", "lzf"], "--compressor lzf: Zarr outputs take zstd, blosc, gzip, none"),
    (["-o", "o.h5", "--compressor", "zstd"], "--compressor zstd: HDF5 outputs take gzip, lzf, none"),
    (["-o", "o.npy", "--compressor", "gzip"], "--compressor picks the codec of a .zarr or .h5 output"),
    (["-o", "o.zarr", "--ext", "png"], "--ext picks the file type inside an output folder"),
    (["-o", "o.h5", "--key", "/"], "output key /: an HDF5 output needs a dataset path such as data or group/data"),
    (["-o", "o.h5", "--output-key", "a/../b"], "output key a/../b: an HDF5 output needs a dataset path"),
    (["-o", "o.npy", "--output-key", "x"], "--output-key names the array of an .npz or .h5 output; o.npy is a npy output"),
    (["-o", "o.zarr", "--output-key", "x"], "o.zarr is a zarr output (one array at the store's root)"),
])
def test_usage_errors(workspace, args, contains):
    _store_input()
    workspace.refused("normalize", "x.npy", *args, code=2, contains=contains)


def refused_run(place: Path, out: Path, *args, contains: str) -> None:
    """A real normcli process (its own $TMPDIR) that fails: one line, exit 1, nothing beside the
    output or in $TMPDIR, the input as it was."""
    tmpdir = place / "tmpdir"
    tmpdir.mkdir()
    before = snapshot(place / "in")
    result = normcli(*args, "-o", out, "-q", cwd=place / "in", tmpdir=tmpdir)
    assert_message(result.returncode, result.stderr, 1, contains=contains)
    assert list(out.parent.iterdir()) == [] and list(tmpdir.iterdir()) == []
    assert snapshot(place / "in") == before


@pytest.fixture
def place(tmp_path):
    """An input (4.6 MB of float64: more than the 1 MiB tmpfs holds, and many blocks) and a copy with
    NaN in a late sample."""
    (tmp_path / "in").mkdir()
    x = np.random.default_rng(0).normal(size=(3000, 8, 8, 3))
    np.save(tmp_path / "in" / "x.npy", x)
    x[2_500, 1, 1, 0] = np.nan
    np.save(tmp_path / "in" / "nan.npy", x)
    return tmp_path


@pytest.mark.parametrize("out", ["o.zarr", "o.h5"])
@pytest.mark.parametrize("engine", ["threads", "processes", "dask"])
def test_a_failing_block_leaves_nothing(place, engine, out):
    """NaN passed through (--ignore-nan) cannot be stored as uint8: that block fails on its worker;
    the --save-stats file, which would fit, is not written either."""
    (place / "out").mkdir()
    refused_run(place, place / "out" / out, "normalize", "nan.npy", "--dtype", "uint8", "--clip", "--ignore-nan",
                "--save-stats", place / "out" / "s.json", "--engine", engine, "--workers", "2",
                contains=f"NaN cannot be stored as uint8; write a float output ({place / 'out' / out})")


@pytest.mark.parametrize("out", ["o.zarr", "o.h5"])
@pytest.mark.parametrize("engine", ["threads", "processes", "dask"])
def test_a_full_disk_leaves_nothing(place, mounts, engine, out):  # noqa: F811  (mounts: the fixture)
    full = mounts("full", "size=1m")
    refused_run(place, full / out, "normalize", "x.npy", "--dtype", "float64", "--compressor", "none",
                "--engine", engine, "--workers", "2", contains=f"No space left on device ({full / out})")


def _blocks_landed(folder: Path) -> bool:
    """Whether the temporary store in `folder` holds written blocks: chunk files (Zarr), bytes (HDF5)."""
    try:
        return any(sum(1 for _ in p.rglob("c/*")) > 20 if p.is_dir() else p.stat().st_size > 16384
                   for p in folder.iterdir())
    except FileNotFoundError:  # a chunk renamed into place as it was looked at
        return False


@pytest.mark.parametrize("out", ["o.zarr", "o.h5"])
@pytest.mark.parametrize("engine", ["threads", "processes"])
def test_ctrl_c_mid_write_leaves_nothing(tmp_path, engine, out):
    """A real SIGINT to the process group while blocks land in the temporary store (HDF5's writes run
    off the main thread, so the signal never raises inside HDF5): one line, exit 130, nothing left."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from test_safety_faults import ENV

    (tmp_path / "out").mkdir()
    (tmp_path / "tmpdir").mkdir()
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(8_000, 4, 4, 1)))
    process = subprocess.Popen([sys.executable, "-m", "normcli", "batchnorm", "--batch-size", "2", "-q",
                                str(tmp_path / "x.npy"), "-o", str(tmp_path / "out" / out), "--engine", engine,
                                "--workers", "2"], env={**ENV, "TMPDIR": str(tmp_path / "tmpdir")},
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        while process.poll() is None and not _blocks_landed(tmp_path / "out"):
            time.sleep(0.02)
        assert process.poll() is None, process.stderr.read()  # still writing when the signal lands
        os.killpg(process.pid, signal.SIGINT)
        stderr = process.communicate(timeout=120)[1]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert_message(process.returncode, stderr, 130, contains="interrupted; nothing was written")
    assert list((tmp_path / "out").iterdir()) == [] and list((tmp_path / "tmpdir").iterdir()) == []
