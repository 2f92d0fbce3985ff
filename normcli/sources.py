"""Inputs -> a Dataset: shape, dtype and layout up front, then the samples in chunks.

Arrays are read with explicit reads into fresh buffers (never np.load of the whole file,
never a memmap whose touched pages would count in RSS); image folders are listed by
relative path, their headers read first, and decoded on every core in order.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import tempfile
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import BinaryIO, Callable, Iterator, Sequence

import numpy as np

from normcli.errors import InputError, NormcliWarning, UsageMismatch, from_os_error
from normcli.images import (IMAGE_EXTENSIONS, IMAGE_TYPES, MODES, ImageHeader, ReadOptions, close_frame_readers,
                            band_counts, convert_channels, counts_bands, decode, list_images, read_header)
from normcli.layout import LAYOUTS, Layout, resolve_layout
from normcli.engine import ordered_map

# Measured on 2 cores (benchmarks/): larger blocks fall out of cache, smaller ones pay overhead.
# With statistics merged on the workers, 2 MiB beat 1 MiB on 1 GiB of float32 (stats --bins 0
# 0.53 -> 0.42 s, 30 bins 1.25 -> 0.95 s, the default standardize report 3.2 -> 2.8 s) and 4 MiB
# (standardize 1.8 s).
CHUNK_BYTES = 2 << 20
# A Fortran-order .npz member cannot be read by samples (zip members are not seekable), so it is
# read whole: up to this size, else refused with a hint.
FORTRAN_NPZ_MAX_BYTES = 256 << 20
# What a damaged .npz member raises while it is read: bad CRC, corrupt deflate, unknown compression.
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError)


@dataclass
class Chunk:
    """Consecutive samples: `data` is shaped (n, *sample_shape); `names` are image paths; `alpha`
    the alpha channel (n, H, W, 1) of images whose alpha is passed through, not measured."""

    data: np.ndarray
    start: int
    names: list[str] | None = None
    alpha: np.ndarray | None = None
    profiles: list[bytes | None] | None = None  # each image's ICC profile, for image outputs


class ArrayPart:
    """One .npy file, .npz member or spooled stdin: samples read straight from the file."""

    def __init__(self, name: str, path: str, member: str | None = None):
        self.name = name
        self.path = os.path.abspath(path)  # blocks are read by workers that may not share our cwd
        self.member = member
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


class ArrayFolderPart:
    """A folder of .npy files, each one sample (what `-o FOLDER --ext npy` writes), sorted by
    relative path as an image folder is: the samples must agree in shape and dtype."""

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


def _folder_part(name: str, mode: str | None, options: ReadOptions):
    """A folder as an input: of images, or, where it holds none, of .npy samples. A folder with
    images is an image folder, whatever else it holds (as before arrays were read from folders)."""
    files = list_images(name, options, IMAGE_EXTENSIONS + (".npy",))
    images = [(path, relpath) for path, relpath in files if path.suffix.lower() != ".npy"]
    return ImagePart(name, mode, options, images) if images else ArrayFolderPart(name, files)


class ImagePart:
    """An image folder (read recursively, sorted by relative path) or a single image file."""

    def __init__(self, name: str, mode: str | None, options: ReadOptions = ReadOptions(),
                 files: list[tuple[Path, str]] | None = None):
        self.name = name
        self.mode = mode
        read = functools.partial(read_header, options=options)  # picklable, for any engine
        files = list_images(name, options) if files is None else files
        self.headers = [header for headers in ordered_map(read, files) for header in headers]
        self.n_samples = len(self.headers)
        first = self.headers[0]
        for header in self.headers[1:]:
            if header.dtype != first.dtype:
                raise InputError(
                    f"images differ in bit depth: {first.name} is {first.dtype}, "
                    f"{header.name} is {header.dtype}; convert them to one depth", name)
            if mode is None and header.channels != first.channels:
                raise InputError(
                    f"images differ in channels: {first.name} has {first.channels}, "
                    f"{header.name} has {header.channels}; use --mode gray|rgb|rgba to convert", name)
            if mode is None and header.alpha != first.alpha:
                with_alpha, without = (header, first) if header.alpha else (first, header)
                raise InputError(
                    f"{with_alpha.name} has alpha, {without.name} has {without.channels} colour channels; "
                    "use --mode rgb or rgba to convert", name)
        self.dtype = first.dtype
        channels = MODES[mode] if mode else first.channels
        heights = {h.height for h in self.headers}
        widths = {h.width for h in self.headers}
        self.sample_shape = (
            heights.pop() if len(heights) == 1 else None,
            widths.pop() if len(widths) == 1 else None,
            channels,
        )
        self.ndim = 4

    @property
    def decoder(self):
        """A picklable function of one header to its decoded image (what a block needs to read)."""
        return functools.partial(decode_image, mode=self.mode)

    @property
    def band_counter(self):
        """What counts one image's values per channel without decoding it to an array
        (images.band_counts), where its images need no conversion to a --mode; else None."""
        return band_counts if self.mode is None else None

    @property
    def alpha_channel(self) -> int | None:
        """The index of the alpha channel (the last), None when the images carry none."""
        alpha = self.mode == "rgba" if self.mode else self.headers[0].alpha
        return self.sample_shape[-1] - 1 if alpha else None

    @property
    def has_alpha(self) -> bool:
        return self.alpha_channel is not None


def decode_image(header: "ImageHeader", *, mode: str | None) -> np.ndarray:
    """One image as (H, W, C) in its own dtype, converted to `mode`'s channels if given."""
    image = decode(header)
    return convert_channels(image, MODES[mode]) if mode else image


# -- blocks: what any thread, process or cluster worker reads by itself ----------------------
@dataclass(frozen=True)
class ArrayRun:
    """Samples `start`..`start + count` of one array input."""

    part: ArrayPart
    start: int
    count: int

    def read(self) -> np.ndarray:
        return self.part.read(self.start, self.count)


@dataclass(frozen=True)
class ArrayPick:
    """Samples of one array input at `indices`, in that order (shuffled batches)."""

    part: ArrayPart
    indices: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.indices)

    def read(self) -> np.ndarray:
        return self.part.read_indices(self.indices)


@dataclass(frozen=True)
class FileRun(ArrayPick):
    """Samples of an array folder at `indices`, one file each: `names` are their output names."""

    part: ArrayFolderPart
    names: tuple[str, ...]


@dataclass(frozen=True)
class ImageRun:
    """Image files, decoded in order: `names` are their output names."""

    decode: Callable
    headers: tuple
    names: tuple[str, ...]
    count_bands: Callable | None = None  # header -> (channels, 256) value counts, for 8-bit stills

    @property
    def count(self) -> int:
        return len(self.headers)

    def read(self) -> np.ndarray:
        return _concatenated([self.decode(header)[None] for header in self.headers], str(self.headers[0].path))


def _concatenated(arrays: list[np.ndarray], where: str | None = None) -> np.ndarray:
    """Arrays of samples as one along the sample axis; samples of different sizes are refused."""
    if len({a.shape[1:] for a in arrays}) > 1:
        raise InputError("images of different sizes cannot form one batch; resize them first", where)
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


@dataclass(frozen=True)
class Block:
    """Consecutive positions `start`.. of a pass (samples, or a batch in its own order): a few
    pieces of inputs, read and cast to the dataset's dtype. Small and picklable."""

    pieces: tuple
    start: int
    dtype: np.dtype
    split_alpha: bool = False  # the last channel is alpha, passed through: read apart from the data

    @property
    def count(self) -> int:
        return sum(piece.count for piece in self.pieces)

    @property
    def names(self) -> list[str] | None:
        """The samples' output names where every piece is files (images, an array folder), else None."""
        if not all(isinstance(p, (ImageRun, FileRun)) for p in self.pieces):
            return None
        return [name for p in self.pieces for name in p.names]

    @property
    def profiles(self) -> list[bytes | None] | None:
        """The samples' ICC profiles where every piece is images, else None."""
        if not all(isinstance(p, ImageRun) for p in self.pieces):
            return None
        return [header.icc for p in self.pieces for header in p.headers]

    def band_counts(self) -> np.ndarray | None:
        """How often each value occurs per channel in this block's samples, (channels, 256), counted
        without arrays where every sample is an 8-bit still image that needs no conversion; else None."""
        if self.dtype != np.uint8 or not all(isinstance(p, ImageRun) and p.count_bands is not None
                                             and all(counts_bands(h) for h in p.headers) for p in self.pieces):
            return None
        counts = sum(p.count_bands(header) for p in self.pieces for header in p.headers)
        return counts[:-1] if self.split_alpha else counts

    def read(self) -> Chunk:
        data = _concatenated([piece.read() for piece in self.pieces])
        alpha = None
        if self.split_alpha:
            data, alpha = np.ascontiguousarray(data[..., :-1]), data[..., -1:]
        return Chunk(data if data.dtype == self.dtype else data.astype(self.dtype), self.start, self.names, alpha,
                     self.profiles)


def _same_size_runs(headers: list, max_bytes: int, itemsize: int) -> Iterator[list[int]]:
    """The indices of `headers` in runs of consecutive images of one size and about `max_bytes`."""
    run: list[int] = []
    run_bytes = 0
    for index, header in enumerate(headers):
        nbytes = header.height * header.width * header.channels * itemsize
        first = headers[run[0]] if run else None
        if run and ((header.height, header.width) != (first.height, first.width) or run_bytes + nbytes > max_bytes):
            yield run
            run, run_bytes = [], 0
        run.append(index)
        run_bytes += nbytes
    if run:
        yield run


@dataclass
class Dataset:
    """Samples along axis 0, from one or more inputs concatenated in order."""

    parts: list
    layout: Layout
    dtype: np.dtype
    sample_shape: tuple
    key: str | None = None
    _spools: list[str] = field(default_factory=list)
    _names: dict = field(default_factory=dict, repr=False)
    # Alpha is not a colour: unless asked to include it, the statistics and transforms cover the
    # colour channels (sample_shape) and alpha goes through unchanged (output_shape has it back).
    alpha_passed: bool = False

    @property
    def inputs(self) -> list[str]:
        return [part.name for part in self.parts]

    @property
    def n_samples(self) -> int:
        return sum(part.n_samples for part in self.parts)

    @property
    def channels(self) -> int:
        return self.layout.channels(self.sample_shape)

    @property
    def alpha_channel(self) -> int | None:
        """The channel that holds alpha (image inputs with LA, RGBA, PA, P with transparency, or 2/4-channel
        TIFF with alpha extrasamples; --mode rgba): the last. None for arrays, images without alpha, or
        inputs that disagree."""
        channels = {getattr(part, "alpha_channel", None) for part in self.parts}
        return channels.pop() if len(channels) == 1 else None

    @property
    def output_shape(self) -> tuple:
        """The shape of one output sample: the measured channels, and alpha where it is passed through."""
        if not self.alpha_passed:
            return self.sample_shape
        return (*self.sample_shape[:-1], self.sample_shape[-1] + 1)

    @property
    def has_alpha(self) -> bool:
        return self.alpha_channel is not None

    @property
    def uniform(self) -> bool:
        """Whether every sample has the same shape (needed by `pixel` and single-array outputs)."""
        return None not in self.sample_shape

    @property
    def array_folders(self) -> bool:
        """Whether every input is a folder of .npy samples."""
        return all(isinstance(part, ArrayFolderPart) for part in self.parts)

    @property
    def image_suffixes(self) -> set[str]:
        """The file types of the image inputs (lower case, with the dot)."""
        return {Path(h.relpath).suffix.lower() for part in self.parts if isinstance(part, ImagePart)
                for h in part.headers}

    def blocks(self, max_bytes: int = CHUNK_BYTES) -> list[Block]:
        """Every sample in order, as blocks of about `max_bytes` (at least one sample; images of
        one size each, since a block is one array)."""
        blocks: list[Block] = []
        start = 0
        for part in self.parts:
            if isinstance(part, ImagePart):
                for run in _same_size_runs(part.headers, max_bytes, part.dtype.itemsize):
                    blocks.append(self._block([self._piece(part, run)], start))
                    start += len(run)
            else:
                per_block = max(1, max_bytes // max(part.sample_bytes, 1))
                for local in range(0, part.n_samples, per_block):
                    count = min(per_block, part.n_samples - local)
                    blocks.append(self._block([self._piece(part, list(range(local, local + count)))], start))
                    start += count
        return blocks

    def batches(self, batch_size: int, order: np.ndarray | None = None) -> list[Block]:
        """Blocks of `batch_size` consecutive samples (the last may be short), or of the samples
        in `order`, across input boundaries."""
        total = self.n_samples
        blocks = []
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            indices = range(start, stop) if order is None else order[start:stop]
            blocks.append(self._block(self._pieces(indices), start))
        return blocks

    def _pieces(self, indices) -> list:
        """The samples at global `indices` as pieces: runs of one input each, in order."""
        pieces: list = []
        group: list[int] = []
        group_part = None
        for index in indices:
            part, local = self._locate(int(index))
            if part is not group_part and group:
                pieces.append(self._piece(group_part, group))
                group = []
            group_part = part
            group.append(local)
        if group:
            pieces.append(self._piece(group_part, group))
        return pieces

    def _piece(self, part, local: list[int]):
        if isinstance(part, ImagePart):
            names = self._names_in(part)
            # absolute paths: blocks are read by workers that may not share our working directory
            headers = tuple(replace(part.headers[i], path=part.headers[i].path.absolute()) for i in local)
            return ImageRun(part.decoder, headers, tuple(names[i] for i in local), part.band_counter)
        if isinstance(part, ArrayFolderPart):
            names = self._names_in(part)
            return FileRun(part, tuple(local), tuple(names[i] for i in local))
        if local == list(range(local[0], local[0] + len(local))):
            return ArrayRun(part, local[0], len(local))
        return ArrayPick(part, tuple(local))

    def _names_in(self, part) -> list[str]:
        """The output names of an image input's or array folder's files (worked out once: it stats the input)."""
        key = id(part)
        if key not in self._names:
            names = part.relpaths if isinstance(part, ArrayFolderPart) else [header.name for header in part.headers]
            self._names[key] = [_qualified(self, part, name) for name in names]
        return self._names[key]

    def _block(self, pieces: list, start: int) -> "Block":
        return Block(tuple(pieces), start, self.dtype, self.alpha_passed)

    def chunks(self, max_bytes: int = CHUNK_BYTES) -> Iterator[Chunk]:
        """Every block read in order, here (for tests and small tools; passes read on their engine)."""
        for block in self.blocks(max_bytes):
            yield block.read()

    def take(self, indices: Sequence[int]) -> np.ndarray:
        """The samples at global `indices`, in that order."""
        return self._block(self._pieces(indices), 0).read().data

    def sample_names(self) -> list[str | None]:
        """Each sample's output name: its image path (under its input's name when there are
        several), None for a sample of an array."""
        names: list[str | None] = []
        for part in self.parts:
            if isinstance(part, (ImagePart, ArrayFolderPart)):
                names.extend(self._names_in(part))
            else:
                names.extend([None] * part.n_samples)
        return names

    def locate(self, index: int) -> tuple[str, int]:
        """The input holding global sample `index`, and the name of that sample within it."""
        part, local = self._locate(index)
        if isinstance(part, ArrayFolderPart):
            return part.name, part.relpaths[local]
        return part.name, (part.headers[local].name if isinstance(part, ImagePart) else local)

    def _locate(self, index: int):
        for part in self.parts:
            if index < part.n_samples:
                return part, index
            index -= part.n_samples
        raise IndexError(index)

    def close(self) -> None:
        close_frame_readers()
        for spool in self._spools:
            try:
                os.unlink(spool)
            except OSError:
                pass
        self._spools.clear()

    def __enter__(self) -> "Dataset":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _qualified(dataset: Dataset, part: ImagePart, name: str) -> str:
    """A sample's output name: its name in its input (relative path, #frame), under its input
    folder's name when there are several inputs (the resolved name: `.` and `..` name the folder
    they stand for, never a step out of the output)."""
    if len(dataset.parts) == 1 or not Path(part.name).is_dir():
        return name
    folder = Path(part.name).resolve().name  # empty for /
    return f"{folder}/{name}" if folder else name


def _spool_stdin(stdin: BinaryIO | None) -> str:
    """`stdin` (a binary stream) copied to a temporary .npy file, which can be read by position."""
    if stdin is None or stdin.isatty():
        raise InputError("'-' reads a .npy stream from stdin, but stdin is a terminal; pipe an array in", "-")
    try:
        fd, path = tempfile.mkstemp(prefix="normcli-stdin-", suffix=".npy")
    except OSError as error:
        raise from_os_error(error, tempfile.gettempdir(), InputError) from None
    try:
        with os.fdopen(fd, "wb") as spool:
            shutil.copyfileobj(stdin, spool, 1 << 20)
    except BaseException as error:  # a full disk, Ctrl-C, SIGTERM: the spool never outlives the run
        os.unlink(path)
        if isinstance(error, OSError):
            raise InputError(f"cannot spool stdin: {error.strerror or error}", path) from None
        raise
    return path


def _open_part(name: str, key: str | None, mode: str | None, spools: list[str], images: ReadOptions,
               stdin: BinaryIO | None):
    if name == "-":
        path = _spool_stdin(stdin)
        spools.append(path)
        return ArrayPart("-", path)
    path = Path(name)
    if not path.exists():
        raise InputError("no such file or folder", name)
    from normcli.stores import FORMATS as STORES  # imported here: stores imports this module
    if opener := next((opener for recognizes, opener in STORES if recognizes(path)), None):
        return opener(name, SimpleNamespace(key=key))
    suffix = path.suffix.lower()
    if path.is_dir():
        return _folder_part(name, mode, images)
    if suffix in IMAGE_EXTENSIONS:
        return ImagePart(name, mode, images)
    if suffix == ".npz":
        return ArrayPart(name, name, _npz_member(name, key))
    if suffix == ".npy":
        return ArrayPart(name, name)
    raise InputError(
        f"unknown input type; give a .npy or .npz file, an image ({IMAGE_TYPES}), a folder of images, "
        "or - for stdin", name)


def _npz_member(name: str, key: str | None) -> str:
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


def open_dataset(inputs: Sequence[str], *, layout: str | None = None, key: str | None = None,
                 mode: str | None = None, images: ReadOptions = ReadOptions(),
                 stdin: BinaryIO | None = None) -> Dataset:
    """Open `inputs` as one dataset, checking that their shapes, layouts and types agree; `images`
    says how image inputs are read (frames, pixel limit, hidden and excluded files); `stdin` is the
    binary stream an input `-` reads (run.Environment.stdin)."""
    spools: list[str] = []
    try:
        parts = [_open_part(name, key, mode, spools, images, stdin) for name in inputs]
        dataset = _combine(parts, layout, key)
    except BaseException:
        for spool in spools:
            os.unlink(spool)
        raise
    dataset._spools = spools
    if dataset.has_alpha and not images.include_alpha:
        dataset.alpha_passed = True
        dataset.sample_shape = (*dataset.sample_shape[:-1], dataset.sample_shape[-1] - 1)
    return dataset


def _combine(parts: list, layout_name: str | None, key: str | None) -> Dataset:
    first = parts[0]
    if layout_name is not None and layout_name.upper() not in LAYOUTS:
        raise UsageMismatch(f"unknown layout {layout_name}; use one of {', '.join(LAYOUTS)}")
    if any(isinstance(p, ImagePart) for p in parts) and layout_name and layout_name.upper() != "NHWC":
        raise UsageMismatch(f"images are read as NHWC; --layout {layout_name} does not apply to them")
    layout = resolve_layout(layout_name, first.ndim)
    if layout.ndim != first.ndim:
        raise UsageMismatch(
            f"--layout {layout.name} needs {layout.ndim} axes, but {first.name} has {first.ndim} "
            f"(shape {(first.n_samples, *first.sample_shape)})")
    if not sum(part.n_samples for part in parts):  # before any warning: the error is the one line
        raise InputError("holds no samples", first.name if len(parts) == 1 else ", ".join(p.name for p in parts))
    if layout_name is None and layout.name == "NHWC" and isinstance(first, ArrayPart):
        _, c_first, _, c_last = (first.n_samples, *first.sample_shape)
        if c_first in (1, 3, 4) and c_last not in (1, 2, 3, 4):
            warnings.warn(NormcliWarning(
                f"{first.name} has shape {(first.n_samples, *first.sample_shape)}, which looks like NCHW; "
                "it is read as NHWC (the default for 4 axes): pass --layout NCHW if the channels come first"))
    sample_shape = list(first.sample_shape)
    dtype = first.dtype
    for part in parts[1:]:
        if part.ndim != first.ndim:
            raise InputError(f"has {part.ndim} axes but {first.name} has {first.ndim}", part.name)
        for axis, (have, want) in enumerate(zip(part.sample_shape, sample_shape)):
            if have != want:
                images = isinstance(part, ImagePart) or isinstance(first, ImagePart)
                if images and axis < 2:
                    sample_shape[axis] = None
                else:
                    raise InputError(
                        f"samples of shape {part.sample_shape} do not match {first.name}'s "
                        f"{tuple(first.sample_shape)}", part.name)
        dtype = np.result_type(dtype, part.dtype)
    npz_key = next((p.member[:-4] for p in parts if isinstance(p, ArrayPart) and p.member), None)
    return Dataset(parts, layout, np.dtype(dtype), tuple(sample_shape), key=key or npz_key)


# `normcli sample` builds its data in memory (float64, with two temporaries of that size).
TUTORIAL_MAX_BYTES = 1 << 30


def check_tutorial_size(n: int, size: int, channels: int) -> None:
    """Refuse, before any allocation, a tutorial dataset beyond TUTORIAL_MAX_BYTES (a usage error)."""
    needed = n * size * size * channels * 8
    if needed > TUTORIAL_MAX_BYTES:
        raise UsageMismatch(f"-n {n} --size {size} --channels {channels} would make {needed / 2**30:,.1f} GiB of "
                            f"float64 in memory; normcli sample makes at most {TUTORIAL_MAX_BYTES >> 30} GiB")


def tutorial_dataset(n: int = 1000, size: int = 32, channels: int = 1, seed: int = 0) -> np.ndarray:
    """The tutorial's data: (n, size, size, channels) float64, a normal signal plus normal noise.

    Signal N(20, 15^2) plus noise N(6, 9^2): mean 26, variance 15^2 + 9^2 = 306.
    """
    rng = np.random.default_rng(seed)
    shape = (n, size, size, channels)
    return rng.normal(20.0, 15.0, shape) + rng.normal(6.0, 9.0, shape)


def shuffled_order(n_samples: int, seed: int) -> np.ndarray:
    """A reproducible random order of the samples (for shuffled batches)."""
    return np.random.default_rng(seed).permutation(n_samples)
