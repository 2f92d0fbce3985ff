"""Zarr and HDF5 inputs: the same numbers as the same data in a .npy, on every engine, read in runs
of whole chunks; hostile stores refused with one line, nothing written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_cli
from refusals import workspace  # noqa: F401  (the fixture)

zarr = pytest.importorskip("zarr", reason="the Zarr tests need the [zarr] extra")
h5py = pytest.importorskip("h5py", reason="the HDF5 tests need the [hdf5] extra")
import numcodecs  # noqa: E402  (zarr's own dependency)

from normcli import zarrfiles  # noqa: E402
from normcli.errors import InputError  # noqa: E402
from normcli.stores import CHUNK_ROW_MAX_BYTES, Hdf5Part, ZarrPart  # noqa: E402


def zarr_store(path: Path, x: np.ndarray, chunks: tuple, *, zarr_format: int = 3, zip_store: bool = False,
               name: str | None = None, **options) -> Path:
    """`x` as a Zarr array at `path` (a directory, or a zip file), at `name` inside a group if given."""
    store = zarr.storage.ZipStore(path, mode="w") if zip_store else zarr.storage.LocalStore(path)
    try:
        if name is None:
            array = zarr.create_array(store, shape=x.shape, chunks=chunks, dtype=x.dtype, zarr_format=zarr_format,
                                      **options)
        else:
            group = zarr.open_group(store, mode="w", zarr_format=zarr_format)
            array = group.create_array(name, shape=x.shape, chunks=chunks, dtype=x.dtype, **options)
        array[...] = x
    finally:
        store.close()
    return path


def hdf5_file(path: Path, x: np.ndarray, key: str = "data", **options) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset(key, data=x, **options)
    return path


def report(*args) -> dict:
    """A --format json report without its inputs (which name the file)."""
    result = json.loads(run_cli(*args, "--format", "json").stdout)
    result.pop("inputs", None)
    if "before" in result:
        for side in ("before", "after"):
            result[side].pop("inputs")
        result.pop("output")
    return result


@pytest.fixture
def x(rng):
    return (1e6 + rng.normal(0.0, 3.0, (23, 6, 5, 3))).astype(np.float32)


STORES = {
    "zarr v3": lambda p, x: zarr_store(p / "a.zarr", x, (4, 3, 5, 3), compressors=zarr.codecs.BloscCodec()),
    "zarr v2": lambda p, x: zarr_store(p / "a.zarr", x.astype(">f4"), (5, 6, 5, 3), zarr_format=2),
    "zarr v3 zip": lambda p, x: zarr_store(p / "a.zip", x, (7, 6, 5, 3), zip_store=True,
                                           compressors=zarr.codecs.ZstdCodec()),
    "zarr v3 sharded": lambda p, x: zarr_store(p / "a.zarr", x, (2, 6, 5, 3), shards=(4, 6, 5, 3)),
    "zarr group member": lambda p, x: zarr_store(p / "g.zarr", x, (3, 6, 5, 3), name="deep/data") / "deep/data",
    "hdf5 gzip": lambda p, x: hdf5_file(p / "a.h5", x, chunks=(4, 3, 5, 3), compression="gzip"),
    "hdf5 contiguous": lambda p, x: hdf5_file(p / "a.hdf5", x, "/group/x"),
}


@pytest.mark.parametrize("kind", STORES)
def test_stats_equal_the_same_data_as_npy(tmp_path, x, kind):
    np.save(tmp_path / "x.npy", x)
    store = STORES[kind](tmp_path, x)
    for scope in ("channel", "pixel"):
        assert report("stats", store, "--per", scope) == report("stats", tmp_path / "x.npy", "--per", scope)


@pytest.mark.parametrize("kind", ["zarr v2", "hdf5 gzip"])
def test_transforms_write_what_the_npy_gives(tmp_path, x, kind):
    np.save(tmp_path / "x.npy", x)
    store = STORES[kind](tmp_path, x)
    for command, options in [("standardize", ["--per", "channel"]),
                             ("batchnorm", ["--batch-size", "5", "--shuffle", "--seed", "2"])]:
        outputs = []
        for source in (store, tmp_path / "x.npy"):
            out = tmp_path / f"{command}-{Path(source).name}.npy"
            run_cli(command, source, "-o", out, "--dtype", "float64", *options)
            outputs.append(out.read_bytes())
        assert outputs[0] == outputs[1]


@pytest.mark.parametrize("dtype", ["uint8", "int16", ">u2", "float64", "<f2"])
def test_every_dtype_normcli_reads(tmp_path, rng, dtype):
    x = rng.integers(0, 200, (9, 4, 3)).astype(dtype)
    np.save(tmp_path / "x.npy", x)
    zarr_store(tmp_path / "a.zarr", x, (2, 4, 3), zarr_format=2)
    hdf5_file(tmp_path / "a.h5", x, chunks=(3, 2, 3))
    want = report("stats", tmp_path / "x.npy", "--per", "global")
    assert report("stats", tmp_path / "a.zarr", "--per", "global") == want
    assert report("stats", tmp_path / "a.h5", "--per", "global") == want


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("zip_store", [False, True])
def test_key_picks_the_array_of_a_group(tmp_path, x, zarr_format, zip_store):
    np.save(tmp_path / "x.npy", x)
    store = zarr_store(tmp_path / ("g.zip" if zip_store else "g.zarr"), x, (5, 6, 5, 3), zarr_format=zarr_format,
                       zip_store=zip_store, name="scans/raw")
    want = report("stats", tmp_path / "x.npy")
    assert report("stats", store, "--key", "scans/raw") == want
    assert report("stats", store) == want  # its only array
    if not zip_store:
        assert report("stats", store / "scans" / "raw") == want  # the array's own folder


@pytest.mark.parametrize("codec", ["Blosc", "Zstd", "LZ4"])
def test_hdf5_filters_of_hdf5plugin(tmp_path, x, codec):
    hdf5plugin = pytest.importorskip("hdf5plugin", reason="part of the [hdf5] extra")
    np.save(tmp_path / "x.npy", x)
    store = hdf5_file(tmp_path / "p.h5", x, chunks=(4, 6, 5, 3), **getattr(hdf5plugin, codec)())
    close(report("stats", store, "--engine", "processes", "--workers", "2"), report("stats", tmp_path / "x.npy"))


def test_an_hdf5_filter_no_one_here_decodes_is_refused_at_open(workspace):
    with h5py.File(workspace.root / "f.h5", "w") as f:
        f.create_dataset("d", data=np.zeros((4, 2)), chunks=(2, 2), compression=32767, allow_unknown_filter=True)
    workspace.refused("stats", "f.h5", contains="dataset /d is compressed with HDF5 filter 32767 (unnamed), which "
                                                "neither h5py nor hdf5plugin decodes here")


def test_layout_rules_are_those_of_npy(tmp_path, x):
    nchw = np.ascontiguousarray(np.moveaxis(x, -1, 1))
    np.save(tmp_path / "x.npy", nchw)
    store = zarr_store(tmp_path / "a.zarr", nchw, (4, 3, 6, 5))
    assert report("stats", store, "--layout", "NCHW") == report("stats", tmp_path / "x.npy", "--layout", "NCHW")
    result = run_cli("stats", store, "--layout", "NHW", ok=False)
    assert result.exit_code == 2 and "--layout NHW needs 3 axes" in result.stderr


@pytest.mark.parametrize("kind", ["zarr v3", "hdf5 gzip"])
def test_a_shape_that_looks_like_nchw_warns_as_for_npy(tmp_path, x, kind):
    nchw = np.ascontiguousarray(np.moveaxis(x, -1, 1))[..., :5]  # (23, 3, 6, 5): channels first, it seems
    np.save(tmp_path / "x.npy", nchw)
    store = STORES[kind](tmp_path, nchw.copy()) if kind.startswith("hdf5") else \
        zarr_store(tmp_path / "a.zarr", nchw, (4, 3, 6, 5))
    warned = [run_cli("stats", source, "--bins", "0").stderr for source in (store, tmp_path / "x.npy")]
    assert "which looks like NCHW" in warned[1]
    assert warned[0] == warned[1].replace(str(tmp_path / "x.npy"), str(store))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 40), rows=st.integers(1, 9), budget=st.integers(1, 4000), hdf5=st.booleans())
def test_blocks_are_runs_of_whole_chunks(tmp_path_factory, n, rows, budget, hdf5):
    """Every block starts on a chunk boundary and holds whole chunks (the last one may be cut by the
    array's end), so no chunk is read by two blocks; together they read the array, in order."""
    folder = tmp_path_factory.mktemp("blocks")
    x = np.arange(n * 6, dtype=np.int32).reshape(n, 3, 2)
    part = (Hdf5Part(str(hdf5_file(folder / "a.h5", x, chunks=(rows, 3, 2), maxshape=(None, 3, 2)))) if hdf5 else
            ZarrPart(str(zarr_store(folder / "a.zarr", x, (rows, 2, 2)))))
    blocks = part.blocks(budget)
    for block in blocks:
        assert block.start % rows == 0 and (block.count % rows == 0 or block.start + block.count == n)
        assert block.count * 24 <= max(budget, rows * 24)
    np.testing.assert_array_equal(np.concatenate([block.read() for block in blocks]), x)
    np.testing.assert_array_equal(part.read_indices([5 % n, 0, n - 1, 0]), x[[5 % n, 0, n - 1, 0]])


# Stores that zarrfiles.py reads from their chunk files, without zarr: (zarr_format, dtype, options).
PLAIN = {
    "v3, keys c/0/0": (3, "<f4", {"compressors": None}),
    "v3, keys c.0.0, big-endian, zstd": (3, "f8", {"chunk_key_encoding": {"name": "default", "separator": "."},
                                                   "serializer": zarr.codecs.BytesCodec(endian="big")}),
    "v3, v2 keys 0.0, gzip": (3, "int16", {"chunk_key_encoding": {"name": "v2", "separator": "."},
                                           "compressors": zarr.codecs.GzipCodec()}),
    "v3, v2 keys 0/0, blosc": (3, "uint8", {"chunk_key_encoding": {"name": "v2", "separator": "/"},
                                            "compressors": zarr.codecs.BloscCodec(shuffle="bitshuffle")}),
    "v2, keys 0.0, big-endian": (2, ">u2", {"compressors": None}),
    "v2, keys 0/0, blosc": (2, "<f8", {"chunk_key_encoding": {"name": "v2", "separator": "/"},
                                       "compressors": numcodecs.Blosc(shuffle=numcodecs.Blosc.SHUFFLE)}),
    "v2, zstd (zarr's default), booleans": (2, "bool", {}),
}


@pytest.mark.parametrize("kind", PLAIN)
@pytest.mark.parametrize("chunks", [(4, 3, 5), (4, 5, 7)])  # the last chunk cut along every axis, or samples only
def test_plain_arrays_are_read_from_their_files_as_zarr_reads_them(tmp_path, rng, kind, chunks):
    zarr_format, dtype, options = PLAIN[kind]
    x = rng.normal(0.0, 1000.0, (11, 5, 7))
    x = (x > 0) if dtype == "bool" else x.astype(dtype)
    store = str(zarr_store(tmp_path / "a.zarr", x, chunks, zarr_format=zarr_format, **options))
    part = ZarrPart(store)
    assert part.files is not None  # read without zarr
    want = zarr.open_array(store, mode="r")[...]
    read = part.files.read  # itself: part.read would hide its mistakes, reading again with zarr
    for got, expected in ((np.concatenate([read(b.start, b.count) for b in part.blocks(1)]), want),
                          (read(3, 6), want[3:9]), (read(10, 1), want[10:])):
        assert got.dtype.newbyteorder("=") == want.dtype.newbyteorder("=")
        assert got.tobytes() == expected.astype(got.dtype).tobytes()
    assert np.concatenate([block.read() for block in part.blocks(1)]).tobytes() == want.astype(part.dtype).tobytes()


@pytest.mark.parametrize("kind,options", [
    ("v2, Fortran order", {"zarr_format": 2, "order": "F"}),
    ("v2, a filter", {"zarr_format": 2, "filters": [numcodecs.Delta(dtype="f4")]}),
    ("v3, a checksum codec", {"compressors": [zarr.codecs.ZstdCodec(), zarr.codecs.Crc32cCodec()]}),
    ("v3, sharded", {"shards": (8, 6, 5, 3)}),
])
def test_other_arrays_are_read_by_zarr(tmp_path, x, kind, options):
    np.save(tmp_path / "x.npy", x)
    store = zarr_store(tmp_path / "a.zarr", x, (4, 6, 5, 3), **options)
    assert ZarrPart(str(store)).files is None
    close(report("stats", store), report("stats", tmp_path / "x.npy"))


@pytest.mark.parametrize("compressors", [None, zarr.codecs.BloscCodec()])
def test_a_plain_store_is_read_without_importing_zarr(tmp_path, x, compressors):
    """(Importing zarr and its event loop cost more than the reads: benchmarks/RESULTS.md.)"""
    store = zarr_store(tmp_path / "a.zarr", x, (4, 6, 5, 3), compressors=compressors)
    code = ("import sys; from normcli.stores import ZarrPart; part = ZarrPart(sys.argv[1]); "
            "[block.read() for block in part.blocks(4096)]; print('zarr' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, str(store)], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_parts_pickle_small_and_without_handles(tmp_path, x):
    import pickle

    for kind in ("zarr v3", "hdf5 gzip"):
        part = (ZarrPart if kind.startswith("zarr") else Hdf5Part)(str(STORES[kind](tmp_path, x)))
        piece = part.blocks(1 << 20)[0]
        assert len(pickle.dumps(piece)) < 1000
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(piece)).read(), piece.read())


def close(a, b) -> None:
    """Reports alike: integers and strings exactly, floats within 1e-12 relative (a store's blocks are
    whole chunks, which may cut the samples elsewhere than a .npy's blocks: another merge order)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            close(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            close(u, v)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-12, abs=0)
    else:
        assert a == b


@pytest.mark.parametrize("engine", ["threads", "processes"])
def test_engines_read_the_store_themselves(tmp_path, x, engine, monkeypatch):
    from normcli.sources import Dataset

    monkeypatch.setattr(Dataset, "block_bytes", 4096)  # the blocks of every dataset opened from now
    np.save(tmp_path / "x.npy", x)
    for kind in ("zarr v3 zip", "hdf5 gzip"):
        store = STORES[kind](tmp_path, x)
        close(report("stats", store, "--engine", engine, "--workers", "2"),
              report("stats", tmp_path / "x.npy", "--engine", engine, "--workers", "2"))


def test_a_dask_cluster_reads_a_zarr_store(tmp_path, x):
    pytest.importorskip("distributed", reason="the Dask tests need the [dask] extra")
    from helpers import dask_cluster

    np.save(tmp_path / "x.npy", x)
    store = STORES["zarr v3"](tmp_path, x)
    with dask_cluster(tmp_path / "dask-logs") as (address, _):
        dask = ["--engine", "dask", "--scheduler", address]
        assert report("stats", store, "--per", "sample", *dask) == report("stats", tmp_path / "x.npy", "--per", "sample")
        run_cli("standardize", store, "-o", tmp_path / "z.npy", *dask)
    run_cli("standardize", tmp_path / "x.npy", "-o", tmp_path / "n.npy")
    assert (tmp_path / "z.npy").read_bytes() == (tmp_path / "n.npy").read_bytes()


def test_a_real_process_reads_both_stores(tmp_path, x):
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "NO_COLOR": "1"}
    outputs = []
    for source in (STORES["zarr v2"](tmp_path, x), STORES["hdf5 contiguous"](tmp_path, x), tmp_path / "x.npy"):
        result = subprocess.run([sys.executable, "-m", "normcli", "stats", str(source), "--format", "csv"],
                                capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1] == outputs[2]


# -- hostile stores ------------------------------------------------------------------------------------
def small(folder: Path, **options) -> Path:
    return zarr_store(folder / "s.zarr", np.arange(40.0).reshape(10, 4), (3, 4), **options)


def edit_metadata(store: Path, **changes) -> None:
    path = store / "zarr.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def refuse_everywhere(workspace, store, contains: str, *options):
    """stats and a transform with -o both refuse, leaving nothing."""
    workspace.refused("stats", store, *options, contains=contains)
    workspace.refused("standardize", store, *options, "-o", "out.npy", "--save-stats", "fit.json", contains=contains)


def test_a_missing_chunk_is_refused_not_read_as_fill_value(workspace):
    store = small(workspace.root)
    (store / "c" / "1" / "0").unlink()
    refuse_everywhere(workspace, "s.zarr", "holds 3 of the 4 chunks its shape (10, 4) needs; normcli does not "
                                           "count Zarr's fill value 0.0 for the missing ones as data")


def test_a_missing_chunk_hidden_by_a_stray_file_is_found_where_it_is_read(workspace):
    store = small(workspace.root)
    (store / "c" / "2" / "0").rename(store / "c" / "stray")
    refuse_everywhere(workspace, "s.zarr", "chunk c/2/0 (samples 6..) is missing; normcli does not count Zarr's "
                                           "fill value 0.0 for it as data")


def test_a_store_zarr_wrote_without_empty_chunks_is_refused_with_the_way_out(workspace):
    x = np.zeros((6, 2))
    x[:3] = 1.0
    zarr_store(workspace.root / "z.zarr", x, (3, 2), fill_value=0.0)  # zarr leaves the chunk of zeros out
    workspace.refused("stats", "z.zarr", contains="(write_empty_chunks=True writes every chunk) (z.zarr)")
    zarr_store(workspace.root / "full.zarr", x, (3, 2), fill_value=0.0, config={"write_empty_chunks": True})
    assert report("stats", "full.zarr")["rows"][0]["mean"] == 0.5


def test_a_chunk_left_out_of_a_shard_is_refused(workspace):
    x = np.ones((10, 4))
    x[4:6] = 0.0  # an inner chunk of only the fill value, which zarr leaves out of its shard
    zarr_store(workspace.root / "sh.zarr", x, (2, 4), shards=(4, 4), fill_value=0.0)
    refuse_everywhere(workspace, "sh.zarr", "shard c/1/0 (samples 4..) lacks some of its chunks")
    x[4:6] = 2.0  # the last shard's second inner chunk lies past the array's end: never written, not needed
    zarr_store(workspace.root / "whole.zarr", x, (2, 4), shards=(4, 4), fill_value=0.0)
    assert report("stats", "whole.zarr", "--per", "global")["rows"][0]["max"] == 2.0


def test_a_huge_claimed_shape_with_no_chunks_is_refused_at_once(workspace):
    store = small(workspace.root)
    edit_metadata(store, shape=[10**15, 4])
    refuse_everywhere(workspace, "s.zarr", "holds 4 of the 333,333,333,333,334 chunks")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
@pytest.mark.parametrize("compressors", [zarr.codecs.ZstdCodec(), None])
def test_a_corrupt_chunk_is_refused(workspace, damage, compressors):
    """(A blosc chunk cut short can still decode, into wrong values: only a checksum codec, such as
    Zarr v3's crc32c, would tell; zstd frames know their length.)"""
    store = small(workspace.root, compressors=compressors)
    chunk = store / "c" / "1" / "0"
    chunk.write_bytes(b"\x00not zstd" * 3 if damage == "garbage" else chunk.read_bytes()[:-5])
    refuse_everywhere(workspace, "s.zarr", "a chunk is damaged")


def test_only_a_chunk_that_cannot_be_read_sends_a_block_back_to_zarr(workspace, monkeypatch):
    """The direct read gives way to zarr (which says what is wrong) for a damaged chunk only: a
    mistake of its own is raised, not hidden behind zarr's slower read of the same block."""
    store = small(workspace.root, compressors=zarr.codecs.ZstdCodec())
    part = ZarrPart(str(store))
    (store / "c" / "1" / "0").write_bytes(b"\x00not zstd")
    with pytest.raises(zarrfiles.UnreadableChunk, match="does not decode"):
        part.files.read(0, 10)
    with pytest.raises(InputError, match="a chunk is damaged"):
        part.read(0, 10)
    monkeypatch.setattr(zarrfiles.ChunkFiles, "_chunk", lambda *args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        part.read(0, 10)


def test_a_corrupt_hdf5_chunk_is_refused(workspace, rng):
    path = hdf5_file(workspace.root / "c.h5", rng.normal(size=(12, 50)), chunks=(4, 50), compression="gzip")
    with h5py.File(path, "r") as f:
        chunk = f["data"].id.get_chunk_info(1)
    with open(path, "r+b") as f:
        f.seek(chunk.byte_offset + 10)
        f.write(b"\xff" * 40)
    refuse_everywhere(workspace, "c.h5", "a chunk is damaged")


def test_metadata_whose_dtype_lies_is_refused(workspace):
    store = small(workspace.root)  # float64 chunks, uncompressed
    edit_metadata(store, data_type="int16", fill_value=0)
    refuse_everywhere(workspace, "s.zarr", "a chunk is damaged")


@pytest.mark.parametrize("changes", [{"data_type": {"name": "float64"}}, {"chunk_key_encoding": {"name": ["v2"]}},
                                     {"codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                                                 {"name": "zstd", "configuration": {"level": [3]}}]}])
def test_metadata_of_the_wrong_types_is_refused_by_zarr(workspace, changes):
    edit_metadata(small(workspace.root), **changes)
    workspace.refused("stats", "s.zarr", contains="cannot open as Zarr")


def test_metadata_whose_chunk_shape_lies_is_refused(workspace):
    store = small(workspace.root)  # chunks of (3, 4)
    edit_metadata(store, shape=[10, 8], chunk_grid={"name": "regular", "configuration": {"chunk_shape": [3, 8]}})
    refuse_everywhere(workspace, "s.zarr", "a chunk is damaged")


def test_chunks_too_large_to_read_whole_are_refused(workspace):
    rows = CHUNK_ROW_MAX_BYTES // 8 + 1
    zarr.create_array(str(workspace.root / "big.zarr"), shape=(rows, 1), chunks=(rows, 1), dtype="f8")
    workspace.refused("stats", "big.zarr", contains="limit 512 MiB); rechunk it with fewer samples per chunk")


def test_string_and_object_arrays_are_refused(workspace):
    zarr.create_array(str(workspace.root / "s.zarr"), shape=(3,), dtype=str)[:] = ["a", "b", "c"]
    workspace.refused("stats", "s.zarr", contains="holds Python objects, which normcli never unpickles")
    with h5py.File(workspace.root / "s.h5", "w") as f:
        f["names"] = np.array([b"a", b"bc"])
    workspace.refused("stats", "s.h5", contains="holds byte-string values (dtype |S2)")


def test_groups_with_no_array_or_several_are_refused(workspace):
    group = zarr.open_group(str(workspace.root / "g.zarr"), mode="w")
    group.create_group("empty")
    workspace.refused("stats", "g.zarr", contains="error: it holds no arrays (g.zarr)")
    group.create_array("a", shape=(2,), dtype="u1")
    group.create_array("empty/b", shape=(2,), dtype="u1")
    workspace.refused("stats", "g.zarr", contains="it holds 2 arrays (a, empty/b); pick one with --key")
    workspace.refused("stats", "g.zarr", "--key", "nothing", contains="has no Zarr array nothing")
    with h5py.File(workspace.root / "g.h5", "w") as f:
        f.create_group("only/groups")
    workspace.refused("stats", "g.h5", contains="error: holds no datasets (g.h5)")
    workspace.refused("stats", "g.h5", "--key", "/only", contains="/only is a group, not a dataset")


def test_hdf5_reads_only_what_the_file_holds(workspace):
    root = workspace.root
    hdf5_file(root / "other.h5", np.arange(6.0))
    with h5py.File(root / "links.h5", "w") as f:
        f["inner"] = np.arange(4.0)
        f["outer"] = h5py.ExternalLink("other.h5", "/data")
        f["via"] = h5py.SoftLink("/outer")
        f.create_dataset("raw", shape=(4,), dtype="f8", external=[("raw.bin", 0, 32)])
        layout = h5py.VirtualLayout(shape=(6,), dtype="f8")
        layout[:] = h5py.VirtualSource("other.h5", "data", shape=(6,))
        f.create_virtual_dataset("virtual", layout)
    (root / "raw.bin").write_bytes(np.arange(4.0).tobytes())
    assert report("stats", "links.h5", "--key", "/inner")["rows"][0]["mean"] == 1.5
    workspace.refused("stats", "links.h5", "--key", "/outer", contains="/outer is an external link to other.h5")
    workspace.refused("stats", "links.h5", "--key", "via", contains="via leads to another file")
    workspace.refused("stats", "links.h5", "--key", "raw", contains="dataset /raw keeps its data in external files")
    workspace.refused("stats", "links.h5", "--key", "virtual", contains="dataset /virtual is virtual")
    workspace.refused("stats", "links.h5", contains="holds 3 datasets (/inner, /raw, /virtual); pick one with --key")


def test_unwritten_hdf5_storage_is_refused(workspace):
    with h5py.File(workspace.root / "u.h5", "w") as f:
        f.create_dataset("chunked", shape=(10**12, 4), chunks=(100, 4), dtype="f4")[:100] = 1.0
        f.create_dataset("plain", shape=(5, 4), dtype="f4")
    workspace.refused("stats", "u.h5", "--key", "chunked",
                      contains="dataset /chunked holds 1 of the 10,000,000,000 chunks its shape (1000000000000, 4) needs")
    workspace.refused("stats", "u.h5", "--key", "plain", contains="dataset /plain was never written")


def test_not_a_store_at_all(workspace):
    (workspace.root / "fake.h5").write_bytes(b"not hdf5 at all")
    workspace.refused("stats", "fake.h5", contains="not a readable HDF5 file")
    (workspace.root / "bad.zarr").mkdir()
    (workspace.root / "bad.zarr" / "zarr.json").write_text("{not json")
    workspace.refused("stats", "bad.zarr", contains="cannot open as Zarr")


@pytest.mark.parametrize("module,extra,store", [("zarr", "zarr", "s.zarr"), ("h5py", "hdf5", "s.h5")])
def test_without_the_extra_one_line_names_it(workspace, monkeypatch, module, extra, store):
    small(workspace.root)
    hdf5_file(workspace.root / "s.h5", np.arange(3.0))
    monkeypatch.setitem(sys.modules, module, None)  # what `import` does when the package is absent
    workspace.refused("stats", store, contains=f"needs {module} (normcli's [{extra}] extra): pip install ")


def test_inputs_are_left_as_they_were(tmp_path, x):
    from refusals import snapshot

    store = STORES["zarr v3"](tmp_path, x)
    before = snapshot(store)
    run_cli("standardize", store, "-o", tmp_path / "out.npy")
    assert snapshot(store) == before
    shutil.rmtree(store)


# -- outputs: the writers, as a sink would drive them --------------------------------------------------
from normcli.sinks import OutputSpec  # noqa: E402
from normcli.storewriters import (check_compressor, check_store_target, chunk_rows, create_hdf5,  # noqa: E402
                                  create_zarr)


def store_spec(target: str, dtype: str, compressor: str, key: str = "data") -> OutputSpec:
    kind = "zarr" if target.endswith(".zarr") else "hdf5"
    return OutputSpec(target, kind, np.dtype(dtype), compressor=check_compressor(kind, compressor), key=key)


def write_blocks(writer, x: np.ndarray, starts: list[int], pool=None) -> None:
    """Encode and write `x` in blocks beginning at `starts`, on `pool` (in any order) or here, in order."""
    ends = starts[1:] + [len(x)]
    jobs = [(x[a:b], a) for a, b in zip(starts, ends)]
    if pool is None:
        for block, start in jobs:
            writer.write(writer.encode(block)[0], start)
    else:
        list(pool.map(_write_one, [writer] * len(jobs), *zip(*reversed(jobs))))


def _write_one(writer, block, start):
    writer.write(writer.encode(block)[0], start)


@pytest.mark.parametrize("starts,rows", [([0, 4, 8], 4), ([0, 6, 10, 16], 2), ([0], 23), ([0, 7, 14, 21], 7)])
def test_chunk_rows_make_every_block_whole_chunks(starts, rows):
    assert chunk_rows(starts, 23) == rows
    assert all(start % rows == 0 for start in starts)


@pytest.mark.parametrize("compressor", ["zstd", "blosc", "gzip", "none"])
@pytest.mark.parametrize("pool_kind", ["threads", "processes"])
def test_zarr_writers_on_many_workers_write_what_normcli_reads_back(tmp_path, x, compressor, pool_kind):
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    starts = list(range(0, len(x), 6))
    folder = tmp_path / ".out.zarr.tmp"
    folder.mkdir()
    writer = create_zarr(str(folder), store_spec("out.zarr", "float32", compressor), x.shape,
                         chunk_rows(starts, len(x)))
    with (ThreadPoolExecutor if pool_kind == "threads" else ProcessPoolExecutor)(2) as pool:
        write_blocks(writer, x, starts, pool)
    np.testing.assert_array_equal(zarr.open_array(str(folder), mode="r")[:], x)
    assert ZarrPart(str(folder)).read(0, len(x)).tobytes() == x.tobytes()  # every chunk stored, none missing


def test_a_zarr_writer_refuses_a_block_that_is_not_whole_chunks(tmp_path, x):
    folder = tmp_path / "o.zarr"
    folder.mkdir()
    writer = create_zarr(str(folder), store_spec("o.zarr", "float32", "zstd"), x.shape, 6)
    with pytest.raises(Exception, match=r"samples 3..8 are not whole chunks of 6 \(o.zarr\)"):
        writer.write(x[3:9], 3)
    writer.write(x[18:], 18)  # the last chunk, cut by the array's end


def test_a_zarr_writer_never_recreates_a_discarded_output(tmp_path, x):
    folder = tmp_path / "o.zarr"
    folder.mkdir()
    writer = create_zarr(str(folder), store_spec("o.zarr", "float32", "zstd"), x.shape, 6)
    shutil.rmtree(folder)
    with pytest.raises(Exception):
        writer.write(x[:6], 0)
    assert not folder.exists()


@pytest.mark.parametrize("compressor", ["gzip", "lzf", "none"])
def test_the_hdf5_writer_writes_in_order_on_the_driver(tmp_path, x, compressor):
    path = tmp_path / ".out.h5.tmp"
    path.touch()  # as Outputs.stage leaves it
    starts = list(range(0, len(x), 5))
    writer = create_hdf5(str(path), store_spec("out.h5", "float64", compressor, key="group/data"), x.shape,
                         chunk_rows(starts, len(x)))
    assert not writer.positional  # its blocks come back to the driver
    write_blocks(writer, x, starts)
    assert Hdf5Part(str(path), "/group/data").read(0, len(x)).tobytes() == x.astype(np.float64).tobytes()


def test_compressor_and_target_rules(tmp_path):
    assert check_compressor("zarr", None) == "zstd" and check_compressor("hdf5", None) == "gzip"
    with pytest.raises(Exception, match="HDF5 outputs take gzip, lzf, none"):
        check_compressor("hdf5", "blosc")
    zarr_store(tmp_path / "old.zarr", np.zeros(3), (3,))
    (tmp_path / "notes.zarr").mkdir()
    check_store_target(str(tmp_path / "new.zarr"), force=False)
    check_store_target(str(tmp_path / "old.zarr"), force=True)
    with pytest.raises(Exception, match="already exists; pass --force"):
        check_store_target(str(tmp_path / "old.zarr"), force=False)
    with pytest.raises(Exception, match="exists and is not a Zarr store; --force replaces only what this run writes"):
        check_store_target(str(tmp_path / "notes.zarr"), force=True)
