"""Chunked array stores as inputs: a Zarr array (a directory or zip store, Zarr v2 or v3) and an
HDF5 dataset, read with the `zarr` and `h5py` packages (extras [zarr], [hdf5], imported lazily).

A block is a run of whole store chunks along the sample axis, so no chunk is decompressed twice
and memory stays bounded by the block, whatever the store's size. A part holds only names (the
file, the array's path inside it), so its pieces pickle small and each thread, process or Dask
worker opens the store itself. A plain Zarr array in a directory is read from its chunk files by
zarrfiles.py, without importing zarr (whose import and event loop cost more than the reads); zarr
opens every other store, and reads again any block the files do not give, saying what is wrong.

A chunk that was never written is refused, not read: Zarr and HDF5 would return the fill value in
its place, and a statistics tool must not count values that no one wrote. (Zarr leaves out chunks
that hold only the fill value unless the array was written with write_empty_chunks=True.)
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import math
import os
import threading
import zipfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from normcli.errors import InputError
from normcli.arrayparts import ArraySlice, SampleArrays, check_array_header
from normcli.parts import OpenOptions
from normcli.zarrfiles import ChunkFiles, UnreadableChunk

# A block holds at least one run of chunks along the sample axis (every chunk of those samples),
# decompressed whole: a store whose chunk rows are larger than this is refused, as memory would be.
CHUNK_ROW_MAX_BYTES = 512 << 20
HDF5_SUFFIXES = (".h5", ".hdf5")
_ZARR_METADATA = ("zarr.json", ".zarray", ".zgroup")  # what marks a Zarr node (v3, v2 array, v2 group)
_OPENING = threading.Lock()  # a part's threads open its store once

# The package each extra installs, as pyproject.toml pins it.
_EXTRAS = {"zarr": ("zarr>=3.1",), "hdf5": ("h5py>=3.8", "hdf5plugin>=4.0")}


def _require(module: str, extra: str, name: str):
    """The optional package `module`, or a one-line error naming the extra that installs it (as the
    Dask engine's does: normcli is installed from a clone, so 'normcli[zarr]' would name no package)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        packages = " ".join(f"'{requirement}'" for requirement in _EXTRAS[extra])
        raise InputError(f"reading it needs {module} (normcli's [{extra}] extra): pip install {packages}, "
                         f"or pip install '.[{extra}]' in a clone of normcli", name) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


class StorePart(SampleArrays):
    """An array inside a store, read by sample ranges: what Zarr and HDF5 parts share. `rows` is
    how many samples one chunk holds along the sample axis (1 for unchunked storage)."""

    def __init__(self, name: str):
        self.name = name
        self.path = os.path.abspath(name)  # read by workers that may not share our working directory
        self._handle = None  # (what to close, the array): opened once per process by the first read

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handle": None}  # each process opens the store itself

    def _array(self):
        """The store's array, opened once by this process's first read of this part."""
        with _OPENING:
            if self._handle is None:
                self._handle = self._open()
            return self._handle[1]

    def close(self) -> None:
        """Close the store this process opened to read (a zip or HDF5 file stays open between blocks)."""
        with _OPENING:
            if self._handle is not None:
                self._handle[0].close()
                self._handle = None

    def _facts(self, array_path: str, shape: tuple, dtype: np.dtype, rows: int) -> None:
        """What the store's metadata says, checked before anything is allocated."""
        name = self.name
        self.array_path = array_path
        check_array_header(shape, False, dtype, math.inf, name)  # the bytes are checked chunk by chunk
        self.dtype = dtype.newbyteorder("=") if dtype.byteorder not in "=|" else dtype
        self.n_samples = shape[0]
        self.sample_shape = tuple(shape[1:])
        self.ndim = len(shape)
        self.sample_bytes = math.prod(self.sample_shape) * dtype.itemsize
        self.rows = rows
        row_bytes = rows * self.sample_bytes
        if row_bytes > CHUNK_ROW_MAX_BYTES:
            raise InputError(f"its chunks of {rows:,} samples make blocks of {row_bytes / 2**20:,.0f} MiB, read "
                             f"whole (limit {CHUNK_ROW_MAX_BYTES >> 20} MiB); rechunk it with fewer samples per chunk",
                             name)

    def blocks(self, max_bytes: int) -> list[ArraySlice]:
        """Every sample in order, in runs of whole chunk rows of about `max_bytes` (at least one row)."""
        per_block = max(1, max_bytes // max(self.rows * self.sample_bytes, 1)) * self.rows
        return [ArraySlice(self, start, min(per_block, self.n_samples - start))
                for start in range(0, self.n_samples, per_block)]

    def read(self, start: int, count: int) -> np.ndarray:
        """Samples start..start+count."""
        array = self._array()
        self._check_stored(array, start, count)
        return self._native(self._get(array, slice(start, start + count), start, count))

    def read_indices(self, indices: Sequence[int]) -> np.ndarray:
        """The samples at `indices`, in that order: each chunk they touch read once."""
        if not len(indices):
            return np.empty((0, *self.sample_shape), self.dtype)
        wanted, order = np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)
        array = self._array()
        for row in np.unique(wanted // self.rows):
            self._check_stored(array, int(row) * self.rows, 1)
        return self._native(self._get(array, wanted, int(wanted[0]), int(wanted[-1]) - int(wanted[0]) + 1))[order]

    def _get(self, array, selection, start: int, count: int) -> np.ndarray:
        try:
            return np.asarray(array[selection] if isinstance(selection, slice) else self._pick(array, selection))
        except Exception as error:  # a codec's, a file's or a shape's complaint: the chunk does not decode
            raise InputError(f"cannot read samples {start}..{start + count - 1}: a chunk is damaged "
                             f"({_first_line(error)})", self.name) from None

    def _native(self, data: np.ndarray) -> np.ndarray:
        return data.astype(self.dtype) if data.dtype != self.dtype else data

    def _check_stored(self, array, start: int, count: int) -> None:
        """Refuse a block where a chunk it needs was never written (the store would give fill values)."""


class ZarrPart(StorePart):
    """A Zarr array: a directory store (the array's own folder or a group holding it) or a zip store;
    `array_path` picks the array inside a group (--key, or its only array)."""

    def __init__(self, name: str, key: str | None = None):
        self.zip = not Path(name).is_dir()
        super().__init__(name)
        self.files = None if self.zip else _plain_array(self.path, key)
        if self.files is not None:
            self._facts((key or "").strip("/"), self.files.shape, self.files.dtype, self.files.chunks[0])
            self.storage = self.files.chunks
            return
        zarr = _require("zarr", "zarr", name)
        with self._opened_store() as store:
            array = _zarr_array(zarr, store, key, name)
            storage = array.shards or array.chunks  # what the store holds one object per: shards, else chunks
            self._facts(array.path, tuple(array.shape), np.dtype(array.dtype), storage[0])
            self.storage = tuple(storage)
            held = _count_chunks(store, array.path)
            needed = math.prod(math.ceil(n / c) for n, c in zip(array.shape, storage))
            if held < needed:
                refusal = _FILL_REFUSAL.format(fill=array.metadata.fill_value, them="the missing ones")
                raise InputError(f"holds {held:,} of the {needed:,} chunks its shape {tuple(array.shape)} needs; "
                                 f"{refusal}", name)

    def _store(self):
        zarr = _require("zarr", "zarr", self.name)  # on a worker, too: it may lack the extra
        try:
            return (zarr.storage.ZipStore(self.path, mode="r") if self.zip
                    else zarr.storage.LocalStore(self.path, read_only=True))
        except (OSError, zipfile.BadZipFile) as error:
            raise InputError(f"cannot open the Zarr store: {_first_line(error)}", self.name) from None

    @contextlib.contextmanager
    def _opened_store(self) -> Iterator:
        store = self._store()
        try:
            yield store
        finally:
            store.close()

    def _open(self) -> tuple:
        store = self._store()
        try:
            return store, importlib.import_module("zarr").open_array(store=store, path=self.array_path, mode="r")
        except Exception as error:  # gone or rewritten since this process's driver opened it
            store.close()
            raise InputError(f"cannot open the Zarr array: {_first_line(error)}", self.name) from None

    def read(self, start: int, count: int) -> np.ndarray:
        """Samples start..start+count: from the chunk files themselves where the array is plain; a
        block they do not give (a chunk missing, damaged) is read again by zarr, which says why."""
        if self.files is not None:
            with contextlib.suppress(UnreadableChunk):
                return self._native(self.files.read(start, count))
        return super().read(start, count)

    def _pick(self, array, indices: np.ndarray) -> np.ndarray:
        return array.get_orthogonal_selection((indices,))

    def _check_stored(self, array, start: int, count: int) -> None:
        from zarr.core.sync import sync

        first, last = start // self.rows, (start + count - 1) // self.rows
        grid = [range(first, last + 1)] + [range(math.ceil(n / c)) for n, c in zip(array.shape[1:], self.storage[1:])]
        store = array.store_path.store
        prefix = f"{array.path}/" if array.path else ""
        for coords in itertools.product(*grid):
            key = array.metadata.encode_chunk_key(coords)
            if not sync(store.exists(prefix + key)):
                raise InputError(f"chunk {key} (samples {coords[0] * self.rows}..) is missing; "
                                 f"{_FILL_REFUSAL.format(fill=array.metadata.fill_value, them='it')}", self.name)
            if array.shards and not _whole_shard(array, coords, key):
                raise InputError(f"shard {key} (samples {coords[0] * self.rows}..) lacks some of its chunks; "
                                 f"{_FILL_REFUSAL.format(fill=array.metadata.fill_value, them='them')}", self.name)


def _plain_array(root: str, key: str | None) -> ChunkFiles | None:
    """The array at `key` under `root` as chunk files, if it is plain (zarrfiles.py) and `key` names its
    folder plainly."""
    steps = (key or "").strip("/").split("/") if key and key.strip("/") else []
    if any(step in ("", ".", "..") for step in steps):
        return None
    return ChunkFiles.find(os.path.join(root, *steps))


def _whole_shard(array, shard: tuple[int, ...], key: str) -> bool:
    """Whether the shard at `shard` (its coordinates) holds every inner chunk that lies inside the array:
    its index marks a chunk that was left out (as zarr leaves out chunks of only the fill value)."""
    from zarr.codecs import ShardingCodec
    from zarr.core.sync import sync

    codec = next(c for c in array.metadata.codecs if isinstance(c, ShardingCodec))
    per_shard = tuple(s // c for s, c in zip(array.shards, array.chunks))
    index = sync(codec._load_shard_index_maybe(array.store_path / key, per_shard))  # zarr's own reader of it
    if index is None:
        return False
    inside = np.ones(per_shard, dtype=bool)
    for axis, (at, count, chunk, size) in enumerate(zip(shard, per_shard, array.chunks, array.shape)):
        beyond = (at * count + np.arange(count)) * chunk >= size  # inner chunks past the array's end are never written
        inside[(slice(None),) * axis + (beyond,)] = False
    return bool(index.get_full_chunk_map()[inside].all())


_FILL_REFUSAL = ("normcli does not count Zarr's fill value {fill} for {them} as data (write_empty_chunks=True "
                 "writes every chunk)")


def _zarr_array(zarr, store, key: str | None, name: str):
    """The array at `key` in the store, or the store's only array."""
    try:
        node = zarr.open(store=store, path=(key or "").strip("/"), mode="r")
    except (FileNotFoundError, KeyError) as error:
        raise InputError(f"has no Zarr array {key or 'at its root'} ({_first_line(error)})", name) from None
    except Exception as error:  # metadata zarr cannot parse (bad JSON, unknown codec or dtype)
        raise InputError(f"cannot open as Zarr: {_first_line(error)}", name) from None
    if isinstance(node, zarr.Array):
        return node
    arrays = [path for path, member in node.members(max_depth=None) if isinstance(member, zarr.Array)]
    if len(arrays) != 1:
        where = f"its group {key}" if key else "it"
        raise InputError(f"{where} holds {len(arrays)} arrays{' (' + ', '.join(arrays) + ')' if arrays else ''}; "
                         "pick one with --key" if arrays else f"{where} holds no arrays", name)
    return node[arrays[0]]


def _count_chunks(store, array_path: str) -> int:
    """How many objects other than metadata the store holds under the array (counted, not listed)."""
    from zarr.core.sync import sync

    prefix = f"{array_path}/" if array_path else ""

    async def count() -> int:
        held = 0
        async for key in store.list_prefix(prefix):
            held += key.rsplit("/", 1)[-1] not in (*_ZARR_METADATA, ".zattrs")
        return held

    return sync(count())


def is_zarr(path: Path) -> bool:
    """A folder holding Zarr metadata, or a .zip file holding it at its root."""
    if path.is_dir():
        return any((path / name).is_file() for name in _ZARR_METADATA)
    if path.suffix.lower() != ".zip":
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name in _ZARR_METADATA for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def open_zarr(name: str, options: OpenOptions) -> ZarrPart:
    """`options.key`: the array's path inside a group."""
    return ZarrPart(name, options.key)


class Hdf5Part(StorePart):
    """A dataset of an HDF5 file: `--key /group/dataset`, or the file's only dataset. Only what the
    file itself holds: external links, external raw storage and virtual datasets are refused."""

    def __init__(self, name: str, key: str | None = None):
        h5py = _require("h5py", "hdf5", name)
        super().__init__(name)
        with self._opened_file() as file:
            dataset = _hdf5_dataset(h5py, file, key, name)
            if dataset.is_virtual:
                raise InputError(f"dataset {dataset.name} is virtual (it maps other files); normcli reads only "
                                 "data the file holds", name)
            if dataset.id.get_create_plist().get_external_count():
                raise InputError(f"dataset {dataset.name} keeps its data in external files; normcli reads only "
                                 "data the file holds", name)
            if dataset.shape is None:
                raise InputError(f"dataset {dataset.name} holds no values (a null dataspace)", name)
            rows = dataset.chunks[0] if dataset.chunks else 1
            self._facts(dataset.name, tuple(dataset.shape), dataset.dtype, rows)
            _check_allocated(dataset, name)
            self.plugins = _needs_plugins(h5py, dataset, name)

    def _file(self):
        h5py = _require("h5py", "hdf5", self.name)  # on a worker, too: it may lack the extra
        if getattr(self, "plugins", False):
            importlib.import_module("hdf5plugin")  # registers its filters with HDF5, in this process too
        try:
            return h5py.File(self.path, "r")
        except OSError as error:
            raise InputError(f"not a readable HDF5 file ({_first_line(error)})", self.name) from None

    @contextlib.contextmanager
    def _opened_file(self) -> Iterator:
        with self._file() as file:
            yield file

    def _open(self) -> tuple:
        file = self._file()
        dataset = file.get(self.array_path)
        if dataset is None:
            file.close()
            raise InputError(f"has no dataset {self.array_path} any more", self.name)
        return file, dataset

    def _pick(self, dataset, indices: np.ndarray) -> np.ndarray:
        return dataset[indices]  # h5py wants increasing indices: read_indices hands them sorted, once each


def _hdf5_dataset(h5py, file, key: str | None, name: str):
    """The dataset at `key` (no step of its path an external link), or the file's only dataset."""
    if key is None:
        found: list[str] = []
        file.visititems(lambda path, node: found.append(path) if isinstance(node, h5py.Dataset) else None)
        if len(found) != 1:  # visititems follows hard links only: an external link is not counted
            raise InputError(f"holds {len(found)} datasets ({', '.join('/' + p for p in found)}); pick one with --key"
                             if found else "holds no datasets", name)
        key = found[0]
    steps = [step for step in key.split("/") if step]
    for depth in range(1, len(steps) + 1):
        where = "/" + "/".join(steps[:depth])
        link = file.get(where, getlink=True)
        if link is None:
            raise InputError(f"has no dataset {key}", name)
        if isinstance(link, h5py.ExternalLink):
            raise InputError(f"{where} is an external link to {link.filename}; normcli reads only data the file "
                             "holds", name)
    node = file.get("/" + "/".join(steps))
    if not isinstance(node, h5py.Dataset):
        raise InputError(f"{key} is a group, not a dataset" if node is not None else f"has no dataset {key}", name)
    if node.file.filename != file.filename:  # a soft link on to an external one
        raise InputError(f"{key} leads to another file; normcli reads only data the file holds", name)
    return node


# HDF5's own filters (deflate, shuffle, fletcher32, szip, nbit, scaleoffset) and h5py's LZF.
_H5PY_FILTERS = {1, 2, 3, 4, 5, 6, 32000}


def _needs_plugins(h5py, dataset, name: str) -> bool:
    """Whether the dataset's filters (blosc, zstd, lz4, ...) need hdf5plugin, which h5py lacks; a filter
    that neither decodes is refused here, not as a damaged chunk later."""
    plist = dataset.id.get_create_plist()
    filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
    if all(number in _H5PY_FILTERS for number, *_ in filters):
        return False
    with contextlib.suppress(ImportError):
        importlib.import_module("hdf5plugin")  # part of the [hdf5] extra
    for number, _, _, label in filters:
        if not h5py.h5z.filter_avail(number):
            raise InputError(f"dataset {dataset.name} is compressed with HDF5 filter {number} "
                             f"({label.decode(errors='replace') or 'unnamed'}), which neither h5py nor hdf5plugin "
                             "decodes here", name)
    return True


def _check_allocated(dataset, name: str) -> None:
    """Refuse a dataset whose storage was never (wholly) written: HDF5 would read its fill value."""
    refusal = "HDF5 reads unwritten storage as the fill value, which normcli does not count as data"
    if dataset.chunks:
        needed = math.prod(math.ceil(n / c) for n, c in zip(dataset.shape, dataset.chunks))
        held = dataset.id.get_num_chunks()
        if held < needed:
            raise InputError(f"dataset {dataset.name} holds {held:,} of the {needed:,} chunks its shape "
                             f"{dataset.shape} needs; {refusal}", name)
    elif dataset.size and dataset.id.get_storage_size() == 0:
        raise InputError(f"dataset {dataset.name} was never written; {refusal}", name)


def is_hdf5(path: Path) -> bool:
    return path.suffix.lower() in HDF5_SUFFIXES and path.is_file()


def open_hdf5(name: str, options: OpenOptions) -> Hdf5Part:
    """`options.key`: the dataset's path in the file."""
    return Hdf5Part(name, options.key)


# The input formats of this module, as sources.FORMATS takes them: (recognizer, opener).
FORMATS = [(is_zarr, open_zarr), (is_hdf5, open_hdf5)]
