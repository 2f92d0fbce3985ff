"""Array inputs: a .npy file, an .npz member or spooled stdin (ArrayPart), and a folder of .npy
samples (ArrayFolderPart).

Samples are read with explicit reads into fresh buffers (never np.load of the whole file, never a
memmap whose touched pages would count in RSS), and a header is checked against the bytes its file
really holds before anything is allocated.
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from normcli.errors import InputError, from_os_error
from normcli.layout import Layout
from normcli.parts import OpenOptions, Part, Piece

# A Fortran-order .npz member cannot be read by samples (zip members are not seekable), so it is
# read whole: up to this size, else refused with a hint.
FORTRAN_NPZ_MAX_BYTES = 256 << 20
# What a damaged .npz member raises while it is read: bad CRC, corrupt deflate, unknown compression.
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError)


class SampleArrays(Part):
    """A part that reads samples by position and by index: its blocks are slices of whole samples of
    about the byte budget, its pieces a slice where the indices follow each other, else a pick."""

    sample_bytes: int

    def read(self, start: int, count: int) -> np.ndarray:
        """Samples start..start+count."""
        raise NotImplementedError

    def read_indices(self, indices: Sequence[int]) -> np.ndarray:
        """The samples at `indices`, in that order."""
        raise NotImplementedError

    def blocks(self, max_bytes: int) -> list[Piece]:
        per_block = max(1, max_bytes // max(self.sample_bytes, 1))
        return [ArraySlice(self, start, min(per_block, self.n_samples - start))
                for start in range(0, self.n_samples, per_block)]

    def layout_doubt(self, layout: Layout) -> str | None:
        if layout.name != "NHWC":
            return None
        _, c_first, _, c_last = (self.n_samples, *self.sample_shape)
        if c_first in (1, 3, 4) and c_last not in (1, 2, 3, 4):
            return (f"{self.name} has shape {(self.n_samples, *self.sample_shape)}, which looks like NCHW; "
                    "it is read as NHWC (the default for 4 axes): pass --layout NCHW if the channels come first")
        return None

    def piece(self, local: Sequence[int]) -> Piece:
        local = list(local)
        if local == list(range(local[0], local[0] + len(local))):
            return ArraySlice(self, local[0], len(local))
        return ArrayPick(self, tuple(local))


@dataclass(frozen=True)
class ArraySlice(Piece):
    """Samples `start`..`start + count` of one array input."""

    part: SampleArrays
    start: int
    count: int

    def read(self) -> np.ndarray:
        return self.part.read(self.start, self.count)


@dataclass(frozen=True)
class ArrayPick(Piece):
    """Samples of one array input at `indices`, in that order (shuffled batches)."""

    part: SampleArrays
    indices: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.indices)

    def read(self) -> np.ndarray:
        return self.part.read_indices(self.indices)


class ArrayPart(SampleArrays):
    """One .npy file, .npz member or spooled stdin: samples read straight from the file."""

    def __init__(self, name: str, path: str, member: str | None = None, *, spooled: bool = False):
        self.name = name
        self.path = os.path.abspath(path)  # blocks are read by workers that may not share our cwd
        self.member = member
        self.key = member[:-4] if member else None
        self.spooled = spooled  # the file is stdin's spool, which closing removes
        try:
            with self._open() as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                header = read_header(f)
                self.offset = f.tell()
        except OSError:
            raise  # what the system said, about this file
        except _ZIP_ERRORS as exc:
            raise InputError(f"damaged .npz member {member}: {exc}", name) from None
        except Exception as exc:  # numpy's header parser raises ValueError, SyntaxError, tokenize errors...
            raise InputError(f"not a .npy array: {exc}", name) from None
        shape, fortran_order, dtype = header
        check_array_header(shape, fortran_order, dtype, self._data_size(), name, member=member)
        self.fortran_order = fortran_order
        self.dtype = dtype.newbyteorder("=") if dtype.byteorder not in "=|" else dtype
        self.file_dtype = dtype
        self.n_samples = shape[0]
        self.sample_shape = tuple(shape[1:])
        self.ndim = len(shape)
        self.sample_bytes = math.prod(self.sample_shape) * dtype.itemsize  # Python ints: a hostile header cannot overflow them

    def _open(self):
        if self.member is None:
            return open(self.path, "rb")
        return zipfile.ZipFile(self.path).open(self.member)

    def _data_size(self) -> int:
        """The bytes after the header that the file (or the .npz member, uncompressed) really holds."""
        if self.member is None:
            return os.path.getsize(self.path) - self.offset
        with zipfile.ZipFile(self.path) as archive:
            return archive.getinfo(self.member).file_size - self.offset

    def _fortran_whole(self) -> np.ndarray:
        """A Fortran-order array: mapped from a .npy, read from an .npz member (its size checked at open)."""
        if self.member is not None:  # zip members cannot be mapped
            try:
                with np.load(self.path, allow_pickle=False) as archive:
                    return archive[self.member[:-4]]
            except _ZIP_ERRORS as exc:
                raise InputError(f"damaged .npz member {self.member}: {exc}", self.name) from None
        return np.load(self.path, mmap_mode="r", allow_pickle=False)

    def _truncated(self) -> InputError:
        return InputError("file ends before its header says it should (truncated?)", self.name)

    def _fill(self, f, out: np.ndarray) -> np.ndarray:
        """Read `out` from the file's current position, whole."""
        try:
            if out.nbytes and f.readinto(memoryview(out.reshape(-1)).cast("B")) != out.nbytes:
                raise self._truncated()
        except _ZIP_ERRORS as exc:
            raise InputError(f"damaged .npz member {self.member}: {exc}", self.name) from None
        except OSError as error:  # a read error (EIO) names no file of its own
            raise from_os_error(error, self.name, InputError) from None
        return self._finish(out)

    def _finish(self, raw: np.ndarray) -> np.ndarray:
        return raw.astype(self.dtype) if raw.dtype != self.dtype else raw

    def read(self, start: int, count: int) -> np.ndarray:
        """Samples start..start+count, read straight from the file."""
        if self.fortran_order:
            # A Fortran-order file keeps samples apart; rare enough for a mapped read.
            return np.ascontiguousarray(self._fortran_whole()[start:start + count])
        with self._open() as f:
            f.seek(self.offset + start * self.sample_bytes)  # zip members seek by decompressing up to there
            return self._fill(f, np.empty((count, *self.sample_shape), dtype=self.file_dtype))

    def read_indices(self, indices) -> np.ndarray:
        """The samples at `indices` (in that order), each read on its own (for shuffled batches)."""
        if self.fortran_order:
            return self._finish(np.ascontiguousarray(self._fortran_whole()[list(indices)]))
        return np.stack([self.read(int(i), 1)[0] for i in indices]) if len(indices) else \
            np.empty((0, *self.sample_shape), self.dtype)

    def close(self) -> None:
        if self.spooled:
            try:
                os.unlink(self.path)
            except OSError:
                pass


def check_array_header(shape: tuple, fortran_order: bool, dtype: np.dtype, available: int, name: str, *,
                       member: str | None = None) -> None:
    """Refuse, before anything is allocated, a .npy header that normcli cannot read or that the file
    cannot back: negative or too many dimensions, non-numeric dtypes, samples of no values, and a byte
    count (Python integers: no overflow) beyond the `available` bytes the file really holds."""
    if dtype.hasobject:
        raise InputError("holds Python objects, which normcli never unpickles", name)
    if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "biuf":
        what = "structured" if dtype.fields is not None or dtype.subdtype is not None else {
            "c": "complex", "S": "byte-string", "U": "string", "V": "void", "M": "datetime",
            "m": "timedelta"}.get(dtype.kind, "non-numeric")
        raise InputError(f"holds {what} values (dtype {dtype.str}); normcli reads booleans, integers and "
                         "real floats", name)
    if any(d < 0 for d in shape):
        raise InputError(f"its header claims a negative dimension, shape {shape}", name)
    if len(shape) not in (1, 2, 3, 4):
        raise InputError(f"array of shape {shape}: normcli wants 1 to 4 axes, samples first", name)
    if shape[0] and not math.prod(shape[1:]):
        raise InputError(f"its samples hold no values, shape {shape}", name)
    needed = math.prod(shape) * dtype.itemsize
    if needed > available:
        raise InputError(f"its header claims shape {shape} of {dtype.name}, {needed:,} bytes, but the file "
                         f"holds {max(available, 0):,} (truncated or damaged)", name)
    if fortran_order and member is not None and needed > FORTRAN_NPZ_MAX_BYTES:
        raise InputError(f"a Fortran-order .npz member is read whole, and this one holds {needed / 2**20:,.0f} MiB "
                         f"(limit {FORTRAN_NPZ_MAX_BYTES >> 20} MiB); save it in C order "
                         "(np.ascontiguousarray) or as .npy", name)


class ArrayFolderPart(SampleArrays):
    """A folder of .npy files, each one sample (what `-o FOLDER --ext npy` writes), sorted by
    relative path as an image folder is: the samples must agree in shape and dtype."""

    npy_files = True

    def __init__(self, name: str, files: list[tuple[Path, str]]):
        self.name = name
        self.files = [ArrayPart(str(path), str(path)) for path, _ in files]
        self.relpaths = [relpath for _, relpath in files]
        first = self.files[0]
        for part in self.files:
            if (part.n_samples, *part.sample_shape) != (first.n_samples, *first.sample_shape) or \
                    part.dtype != first.dtype:
                raise InputError(f"a sample of shape {(part.n_samples, *part.sample_shape)} and dtype {part.dtype}, "
                                 f"where {first.name} has {(first.n_samples, *first.sample_shape)} and {first.dtype}; "
                                 "the .npy files of a folder are samples of one shape and dtype", part.name)
        self.n_samples = len(self.files)
        self.sample_shape = (first.n_samples, *first.sample_shape)
        self.dtype = first.dtype
        self.ndim = 1 + len(self.sample_shape)
        self.sample_bytes = first.sample_bytes * first.n_samples

    def read(self, start: int, count: int) -> np.ndarray:
        return self.read_indices(range(start, start + count))

    def read_indices(self, indices) -> np.ndarray:
        """The samples at `indices` (in that order), each file read whole."""
        samples = [self.files[i].read(0, self.files[i].n_samples) for i in indices]
        return np.stack(samples) if samples else np.empty((0, *self.sample_shape), self.dtype)

    def names(self) -> list[str]:
        return list(self.relpaths)


def open_npy(name: str, options: OpenOptions) -> ArrayPart:
    return ArrayPart(name, name)


def open_npz(name: str, options: OpenOptions) -> ArrayPart:
    return ArrayPart(name, name, npz_member(name, options.key))


def npz_member(name: str, key: str | None) -> str:
    """The .npz member that holds the array `key` (or the only array), as the zip names it."""
    try:
        with zipfile.ZipFile(name) as archive:
            members = [m for m in archive.namelist() if m.endswith(".npy")]
    except zipfile.BadZipFile:
        raise InputError("not a valid .npz archive", name) from None
    keys = [m[:-4] for m in members]
    if key is None:
        if len(keys) != 1:
            raise InputError(f"holds {len(keys)} arrays ({', '.join(keys)}); pick one with --key", name)
        key = keys[0]
    if key not in keys:
        raise InputError(f"has no array '{key}'; it holds {', '.join(keys) or 'none'}", name)
    return key + ".npy"
