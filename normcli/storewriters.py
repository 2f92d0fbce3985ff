"""Chunked store outputs: `-o out.zarr` (a Zarr v3 directory store) and `-o out.h5` (an HDF5 dataset).

Both are written under the temporary name the run's Outputs staged (a folder for Zarr, a file for
HDF5) and committed with the rest. A Zarr output's chunks are whole blocks of the pass (their
sample runs are the largest that every block boundary allows), so each thread, process or Dask
worker writes its own chunks and no two ever write the same one. HDF5 cannot take concurrent
writers: its blocks come back to the driver, which writes them in order, one block in memory at
a time (as a .npy stream on stdout is written).

Every chunk is written, fill values included (write_empty_chunks), so that normcli reads its
outputs back; and every chunk carries a checksum (zstd's, HDF5's fletcher32) by default, so that
damage is found where it is read.
"""

from __future__ import annotations

import errno
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from normcli.errors import OutputError, UsageMismatch
from normcli.sinks import STORE_SUFFIXES, Encoder, OutputSpec, _naming_target
from normcli.stores import _require, is_zarr

# --compressor NAME: what each store can compress its chunks with; the first is the default.
ZARR_COMPRESSORS = ("zstd", "blosc", "gzip", "none")
HDF5_COMPRESSORS = ("gzip", "lzf", "none")  # what every HDF5 reader has, without plugins


def chunk_rows(starts: Sequence[int], samples: int) -> int:
    """The samples per chunk that make every block whole chunks: the greatest common divisor of the
    blocks' `starts` (the last chunk may be cut by the array's end); all `samples` for one block."""
    return math.gcd(*starts) if len(starts) > 1 else max(samples, 1)


def _zarr_compressors(name: str):
    codecs = _require("zarr", "zarr", name).codecs
    return {"zstd": lambda: [codecs.ZstdCodec(level=3, checksum=True)],
            "blosc": lambda: [codecs.BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")],
            "gzip": lambda: [codecs.GzipCodec(level=5)],
            "none": lambda: None}


def check_compressor(kind: str, compressor: str | None) -> str:
    """The compressor a store output uses: `compressor`, else its default; a usage error where the
    store has no such codec."""
    choices = ZARR_COMPRESSORS if kind == "zarr" else HDF5_COMPRESSORS
    if compressor is None:
        return choices[0]
    if compressor not in choices:
        raise UsageMismatch(f"--compressor {compressor}: {'Zarr' if kind == 'zarr' else 'HDF5'} outputs take "
                            f"{', '.join(choices)}")
    return compressor


def hdf5_key(key: str | None) -> str:
    """The dataset path an HDF5 output is written at: `key` (--output-key, else --key, else "data")
    without empty steps; a usage error where it names no dataset (only slashes, or a step . or ..)."""
    steps = [step for step in (key or "data").split("/") if step]
    if not steps or any(step in (".", "..") for step in steps):
        raise UsageMismatch(f"output key {key}: an HDF5 output needs a dataset path such as data or group/data")
    return "/".join(steps)


def check_store_target(target: str, force: bool) -> None:
    """An existing target is refused unless --force, and --force replaces only a store of the same kind
    (a Zarr folder, an HDF5 file), never a folder or file that is something else."""
    path = Path(target)
    if not path.exists() and not path.is_symlink():
        return
    if not force:
        raise OutputError("already exists; pass --force to replace it", target)
    kind = STORE_SUFFIXES[path.suffix.lower()]
    same = is_zarr(path) if kind == "zarr" else path.is_file()
    if not same or (kind == "zarr" and not path.is_dir()):
        raise OutputError(f"exists and is not a{' Zarr store' if kind == 'zarr' else 'n HDF5 file'}; --force replaces "
                          "only what this run writes", target)


@dataclass(frozen=True)
class ZarrWriter(Encoder):
    """Samples written as whole chunks of a Zarr array in the staged folder, by whichever thread,
    process or worker holds them (the file system must be shared)."""

    positional = True
    path: str = ""
    rows: int = 1  # samples per chunk
    samples: int = 0

    @_naming_target
    def write(self, encoded: np.ndarray, start: int, names=None, profiles=None) -> None:
        end = start + len(encoded)
        if start % self.rows or (end % self.rows and end != self.samples):
            # two workers would rewrite one chunk, each with the other's samples missing
            raise OutputError(f"samples {start}..{end - 1} are not whole chunks of {self.rows}", self.target)
        if not os.path.isdir(self.path):
            # discarded: zarr would make the folder anew (the engine stops its tasks before a discard,
            # so no write is under way while the folder goes)
            raise FileNotFoundError(errno.ENOENT, "the staged output is gone", self.path)
        zarr = _require("zarr", "zarr", self.target)
        zarr.open_array(store=zarr.storage.LocalStore(self.path), mode="r+")[start:end] = encoded


def create_zarr(path: str, spec: OutputSpec, shape: tuple, rows: int, *, clip: bool = False) -> ZarrWriter:
    """An empty Zarr v3 array in the staged folder `path`, chunked by `rows` samples with the codec of
    `spec` (checked: check_compressor), and its writer."""
    zarr = _require("zarr", "zarr", spec.target)
    zarr.create_array(zarr.storage.LocalStore(path), shape=shape, chunks=(rows, *shape[1:]), dtype=spec.dtype,
                      compressors=_zarr_compressors(spec.target)[spec.compressor](), fill_value=0,
                      config={"write_empty_chunks": True})
    return ZarrWriter(spec.dtype, clip, spec.target, spec.scale, spec.clamp, path=path, rows=rows, samples=shape[0])


@dataclass(frozen=True)
class Hdf5Writer(Encoder):
    """Samples written by the driver, in order, into a dataset of the staged HDF5 file (HDF5 takes one
    writer at a time): `write` puts one block at its position."""

    positional = False
    path: str = ""
    key: str = "data"

    @_naming_target
    def write(self, encoded: np.ndarray, start: int, names=None, profiles=None) -> None:
        h5py = _require("h5py", "hdf5", self.target)
        with _Hdf5File(self.path) as raw, h5py.File(raw, "r+") as file:
            file[self.key][start:start + len(encoded)] = encoded
        raw.raise_error()


class _Hdf5File(io.FileIO):
    """The staged file as HDF5 writes it (h5py's file-object driver), keeping a failed write (a full
    disk) to be raised once HDF5 is done: HDF5 itself, told of one, crashes the process as it closes
    the file. Every write after the first failure is dropped; the file is discarded anyway."""

    error: OSError | None = None

    def __init__(self, path: str, mode: str = "r+"):
        super().__init__(path, mode)

    def write(self, data) -> int:
        if self.error is None:
            try:
                return super().write(data)
            except OSError as error:
                self.error = error
        return memoryview(data).nbytes

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                return super().truncate(size)
            except OSError as error:
                self.error = error
        return self.tell() if size is None else size

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


def create_hdf5(path: str, spec: OutputSpec, shape: tuple, rows: int, *, clip: bool = False) -> Hdf5Writer:
    """An empty dataset `spec.key` (groups made as its path says) in the staged file `path`, chunked by `rows`
    samples with the codec of `spec`, shuffle and a fletcher32 checksum where it is compressed; and its writer."""
    h5py = _require("h5py", "hdf5", spec.target)
    compressed = spec.compressor != "none"
    with _Hdf5File(path) as raw, h5py.File(raw, "w") as file:
        file.create_dataset(spec.key, shape=shape, dtype=spec.dtype, chunks=(rows, *shape[1:]),
                            compression=spec.compressor if compressed else None, shuffle=compressed,
                            fletcher32=compressed)
    raw.raise_error()
    return Hdf5Writer(spec.dtype, clip, spec.target, spec.scale, spec.clamp, path=path, key=spec.key)
