"""Zarr arrays of the plainest layout read straight from their chunk files, without the `zarr`
package: importing it and its one event-loop thread cost a store more than its reads
(benchmarks/RESULTS.md).

Plain, per the Zarr v2 and v3 specs: a directory array with a regular grid of chunks, C order, a
numeric dtype, no filters, transposes, sharding or storage transformers, and at most one
compressor of blosc, zstd or gzip, decoded by numcodecs (the library zarr decodes them with; it
releases the GIL). `ChunkFiles.find` answers None for anything else, and for an array whose files
are fewer than its chunks: stores.ZarrPart then opens it with zarr, which reads or refuses it as
before. Its reads raise on anything unexpected (a missing or damaged chunk), for ZarrPart to read
the block again with zarr, which says what is wrong.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import json
import math
import os
from dataclasses import dataclass

import numpy as np

_COMPRESSORS = ("blosc", "zstd", "gzip")
# What a v3 compressor's configuration may hold, as zarr validates it (each value's test).
_V3_CONFIG = {
    "blosc": {"typesize": lambda v: _int(v) and v > 0, "clevel": lambda v: _int(v) and 0 <= v <= 9,
              "blocksize": lambda v: _int(v) and v >= 0,
              "cname": {"lz4", "lz4hc", "blosclz", "zstd", "snappy", "zlib"}.__contains__,
              "shuffle": {"noshuffle", "shuffle", "bitshuffle"}.__contains__},
    "zstd": {"level": lambda v: _int(v) and -131072 <= v <= 22, "checksum": lambda v: isinstance(v, bool)},
    "gzip": {"level": lambda v: _int(v) and 0 <= v <= 9},
}
_V3_KEYS = {"zarr_format", "node_type", "shape", "data_type", "chunk_grid", "chunk_key_encoding", "fill_value",
            "codecs", "attributes", "dimension_names", "storage_transformers"}
_V2_KEYS = {"zarr_format", "shape", "chunks", "dtype", "compressor", "fill_value", "order", "filters",
            "dimension_separator"}
_V3_DTYPES = {f"{kind}{bits}" for kind, sizes in (("int", (8, 16, 32, 64)), ("uint", (8, 16, 32, 64)),
                                                 ("float", (16, 32, 64))) for bits in sizes} | {"bool"}
_NON_FINITE = ("NaN", "Infinity", "-Infinity")


def _int(value) -> bool:
    return type(value) is int


def _ints(value, least: int) -> bool:
    return isinstance(value, list) and all(_int(v) and v >= least for v in value)


@dataclass(frozen=True)
class ChunkFiles:
    """The chunk files of a plain Zarr array in `folder`: their grid, how each is named and decoded."""

    folder: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype  # as the chunks hold it (byte order included)
    prefix: str  # before a chunk's coordinates in its key: "c" + separator (v3's default encoding), or ""
    separator: str
    compressor: dict | None  # a numcodecs codec's configuration

    @classmethod
    def find(cls, folder: str) -> ChunkFiles | None:
        """The array in `folder` if it is plain and has a file for each chunk, else None."""
        if importlib.util.find_spec("zarr") is None:
            return None  # reading Zarr needs the [zarr] extra, plain or not: zarr's opener says so
        metadata = [name for name in ("zarr.json", ".zarray", ".zgroup") if os.path.exists(os.path.join(folder, name))]
        if metadata not in (["zarr.json"], [".zarray"]):
            return None  # a group, or metadata of two kinds: zarr decides
        try:
            meta = _json(os.path.join(folder, metadata[0]))
            found = _v3(folder, meta) if metadata == ["zarr.json"] else _v2(folder, meta)
        except (OSError, ValueError, TypeError, RecursionError):  # unreadable, not JSON, a list where a name goes
            return None
        if found is None or (found.compressor and importlib.util.find_spec("numcodecs") is None):
            return None
        return found if found._whole() else None

    def _whole(self) -> bool:
        """Whether the folder holds at least a file for each chunk (as stores._count_chunks counts them)."""
        needed = math.prod(math.ceil(n / c) for n, c in zip(self.shape, self.chunks))
        held = 0
        for _, _, files in os.walk(self.folder):
            held += sum(name not in ("zarr.json", ".zarray", ".zgroup", ".zattrs") for name in files)
            if held >= needed:
                return True
        return held >= needed

    def read(self, start: int, count: int) -> np.ndarray:
        """Samples start..start+count, from every chunk they touch (each read once), in the file dtype."""
        out = np.empty((count, *self.shape[1:]), self.dtype)
        rows = self.chunks[0]
        codec = self.compressor and importlib.import_module("numcodecs").get_codec(dict(self.compressor))
        grid = [range(start // rows, (start + count - 1) // rows + 1)]
        grid += [range(math.ceil(n / c)) for n, c in zip(self.shape[1:], self.chunks[1:])]
        for coords in itertools.product(*grid):
            first = coords[0] * rows
            lo, hi = max(first, start), min(first + rows, start + count)
            target, source = [slice(lo - start, hi - start)], [slice(lo - first, hi - first)]
            for at, size, n in zip(coords[1:], self.chunks[1:], self.shape[1:]):
                end = min((at + 1) * size, n)
                target.append(slice(at * size, end))
                source.append(slice(0, end - at * size))
            region = out[tuple(target)]
            if codec or region.shape != self.chunks or not region.flags.c_contiguous:
                region[...] = self._chunk(coords, codec)[tuple(source)]
            else:
                self._chunk(coords, None, region)  # straight from the file: the array's own samples, whole
        return out

    def _chunk(self, coords: tuple[int, ...], codec, into: np.ndarray | None = None) -> np.ndarray:
        """The chunk at `coords`, decoded, read into `into` if given (uncompressed chunks only)."""
        key = self.prefix + self.separator.join(map(str, coords))
        expected = math.prod(self.chunks) * self.dtype.itemsize
        try:
            with open(os.path.join(self.folder, *key.split("/")), "rb") as file:
                if codec is None:
                    if os.fstat(file.fileno()).st_size != expected:
                        raise UnreadableChunk(f"chunk {key} is not {expected} bytes long")
                    chunk = np.empty(self.chunks, self.dtype) if into is None else into
                    if file.readinto(memoryview(chunk).cast("B")) != expected:
                        raise UnreadableChunk(f"chunk {key} was cut short while it was read")
                    return chunk
                encoded = file.read()
        except OSError as error:
            raise UnreadableChunk(f"chunk {key}: {error}") from error
        try:
            data = codec.decode(encoded)
        except Exception as error:  # a codec's own complaint, of whatever class it raises
            raise UnreadableChunk(f"chunk {key} does not decode: {error}") from error
        if memoryview(data).nbytes != expected:
            raise UnreadableChunk(f"chunk {key} decodes to {memoryview(data).nbytes} bytes, not {expected}")
        return np.frombuffer(data, self.dtype).reshape(self.chunks)


class UnreadableChunk(Exception):
    """A chunk file missing, of the wrong size, or that does not decode: zarr reads the block again
    and says what is wrong in its own words (a bug here is not one of these, and is not hidden)."""


def _json(path: str) -> dict:
    with open(path, "rb") as file:
        meta = json.loads(file.read())
    if not isinstance(meta, dict):
        raise ValueError("not an object")
    return meta


def _grid(shape, chunks) -> bool:
    return _ints(shape, 0) and _ints(chunks, 1) and 1 <= len(shape) == len(chunks)


def _fill(value, dtype: np.dtype) -> bool:
    """Whether `value` is a fill value zarr takes for `dtype` as it is (never read: only checked)."""
    if dtype.kind == "b":
        return isinstance(value, bool)
    if dtype.kind == "f":
        return value in _NON_FINITE or (isinstance(value, (int, float)) and not isinstance(value, bool))
    return _int(value) and np.iinfo(dtype).min <= value <= np.iinfo(dtype).max


def _v3(folder: str, meta: dict) -> ChunkFiles | None:
    grid, encoding, codecs = meta.get("chunk_grid"), meta.get("chunk_key_encoding"), meta.get("codecs")
    if not (meta.keys() <= _V3_KEYS and meta.get("zarr_format") == 3 and meta.get("node_type") == "array"
            and meta.get("data_type") in _V3_DTYPES and meta.get("storage_transformers", []) == []
            and isinstance(meta.get("attributes", {}), dict) and isinstance(grid, dict)
            and grid.get("name") == "regular" and isinstance(grid.get("configuration"), dict)
            and grid["configuration"].keys() == {"chunk_shape"} and isinstance(encoding, dict)
            and encoding.keys() <= {"name", "configuration"} and isinstance(codecs, list) and 1 <= len(codecs) <= 2
            and all(isinstance(c, dict) and c.keys() <= {"name", "configuration"} for c in codecs)):
        return None
    shape, chunks = meta.get("shape"), grid["configuration"]["chunk_shape"]
    names = meta.get("dimension_names")
    if not _grid(shape, chunks) or not (names is None or (isinstance(names, list) and len(names) == len(shape)
                                                          and all(n is None or isinstance(n, str) for n in names))):
        return None
    dtype = np.dtype(meta["data_type"])
    separator = {"default": "/", "v2": "."}.get(encoding.get("name"))
    bytes_codec = codecs[0]
    endian = bytes_codec.get("configuration", {})
    if (separator is None or not _fill(meta.get("fill_value"), dtype) or bytes_codec.get("name") != "bytes"
            or not isinstance(endian, dict) or not endian.keys() <= {"endian"}
            or endian.get("endian", None if dtype.itemsize > 1 else "little") not in ("little", "big")):
        return None
    configuration = encoding.get("configuration", {})
    if not isinstance(configuration, dict) or not configuration.keys() <= {"separator"}:
        return None
    separator = configuration.get("separator", separator)
    compressor = None
    if len(codecs) == 2:
        name, config = codecs[1].get("name"), codecs[1].get("configuration", {})
        tests = _V3_CONFIG.get(name)
        if tests is None or not isinstance(config, dict) or not all(k in tests and tests[k](v)
                                                                     for k, v in config.items()):
            return None
        compressor = {"id": name}  # the frames these codecs write say how to decode them
    if separator not in ("/", "."):
        return None
    byte_order = ">" if endian.get("endian") == "big" else "<"
    return ChunkFiles(folder, tuple(shape), tuple(chunks), dtype.newbyteorder(byte_order) if dtype.itemsize > 1
                      else dtype, "c" + separator if encoding["name"] == "default" else "", separator, compressor)


def _v2(folder: str, meta: dict) -> ChunkFiles | None:
    compressor, code = meta.get("compressor"), meta.get("dtype")
    if not (meta.keys() <= _V2_KEYS and meta.get("zarr_format") == 2 and meta.get("order") == "C"
            and meta.get("filters") is None and meta.get("dimension_separator", ".") in (".", "/", None)
            and _grid(meta.get("shape"), meta.get("chunks")) and isinstance(code, str)
            and (compressor is None or (isinstance(compressor, dict) and compressor.get("id") in _COMPRESSORS))):
        return None
    try:
        dtype = np.dtype(code)
    except TypeError:
        return None
    if dtype.str != code or dtype.kind not in "biuf" or not (meta.get("fill_value") is None
                                                              or _fill(meta["fill_value"], dtype)):
        return None
    if compressor is not None:
        try:  # zarr reads a v2 compressor by this same call
            importlib.import_module("numcodecs").get_codec(dict(compressor))
        except Exception:  # an unknown option, a value numcodecs refuses
            return None
    return ChunkFiles(folder, tuple(meta["shape"]), tuple(meta["chunks"]), dtype, "",
                      meta.get("dimension_separator") or ".", compressor)
