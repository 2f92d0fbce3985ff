"""Inputs -> a Dataset: shape, dtype and layout up front, then the samples in chunks.

Arrays are read with explicit reads into fresh buffers (never np.load of the whole file,
never a memmap whose touched pages would count in RSS); image folders are listed by
relative path, their headers read first, and decoded on every core in order.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from normcli.errors import InputError, NormcliWarning, UsageMismatch
from normcli.images import (IMAGE_EXTENSIONS, IMAGE_TYPES, MODES, ImageHeader, ReadOptions, close_frame_readers,
                            convert_channels, decode, list_images, read_header)
from normcli.layout import LAYOUTS, Layout, resolve_layout
from normcli.parallel import ordered_map

# Measured on 2 cores (benchmarks/): larger chunks fall out of cache, smaller ones pay overhead.
CHUNK_BYTES = 4 << 20


@dataclass
class Chunk:
    """Consecutive samples: `data` is shaped (n, *sample_shape); `names` are image paths."""

    data: np.ndarray
    start: int
    names: list[str] | None = None


class ArrayPart:
    """One .npy file, .npz member or spooled stdin: samples read straight from the file."""

    def __init__(self, name: str, path: str, member: str | None = None):
        self.name = name
        self.path = path
        self.member = member
        with self._open() as f:
            try:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                header = read_header(f)
            except ValueError as exc:
                raise InputError(f"not a .npy array: {exc}", name) from None
            self.offset = f.tell()
        shape, fortran_order, dtype = header
        if dtype.hasobject:
            raise InputError("holds Python objects, which normcli never unpickles", name)
        if len(shape) not in (1, 2, 3, 4):
            raise InputError(f"array of shape {shape}: normcli wants 1 to 4 axes, samples first", name)
        self.fortran_order = fortran_order
        self.dtype = dtype.newbyteorder("=") if dtype.byteorder not in "=|" else dtype
        self.file_dtype = dtype
        self.n_samples = shape[0]
        self.sample_shape = tuple(shape[1:])
        self.ndim = len(shape)
        self.sample_bytes = int(np.prod(self.sample_shape, dtype=np.int64)) * dtype.itemsize

    def _open(self):
        if self.member is None:
            return open(self.path, "rb")
        return zipfile.ZipFile(self.path).open(self.member)

    def _fortran_whole(self) -> np.ndarray:
        """A Fortran-order array: mapped from a .npy (checked for truncation), read from an .npz member."""
        if self.member is not None:  # zip members cannot be mapped
            with np.load(self.path, allow_pickle=False) as archive:
                return archive[self.member[:-4]]
        if os.path.getsize(self.path) < self.offset + self.n_samples * self.sample_bytes:
            raise self._truncated()
        return np.load(self.path, mmap_mode="r", allow_pickle=False)

    def _truncated(self) -> InputError:
        return InputError("file ends before its header says it should (truncated?)", self.name)

    def _fill(self, f, out: np.ndarray) -> np.ndarray:
        """Read `out` from the file's current position, whole."""
        if out.nbytes and f.readinto(memoryview(out.reshape(-1)).cast("B")) != out.nbytes:
            raise self._truncated()
        return self._finish(out)

    def _finish(self, raw: np.ndarray) -> np.ndarray:
        return raw.astype(self.dtype) if raw.dtype != self.dtype else raw

    def blocks(self, sizes: Iterator[int]) -> Iterator[np.ndarray]:
        """Consecutive blocks of samples, one per requested size."""
        if self.fortran_order:
            # A Fortran-order file keeps samples apart; rare enough for a mapped read.
            whole = self._fortran_whole()
            start = 0
            for size in sizes:
                yield np.ascontiguousarray(whole[start:start + size])
                start += size
            return
        with self._open() as f:
            f.seek(self.offset)
            for size in sizes:
                yield self._fill(f, np.empty((size, *self.sample_shape), dtype=self.file_dtype))

    def sample(self, index: int) -> np.ndarray:
        """One sample, read on its own (for shuffled batches)."""
        if self.fortran_order:
            return self._finish(np.array(self._fortran_whole()[index]))
        with self._open() as f:
            f.seek(self.offset + index * self.sample_bytes)
            return self._fill(f, np.empty(self.sample_shape, dtype=self.file_dtype))


class ImagePart:
    """An image folder (read recursively, sorted by relative path) or a single image file."""

    def __init__(self, name: str, mode: str | None, options: ReadOptions = ReadOptions()):
        self.name = name
        self.mode = mode
        read = functools.partial(read_header, options=options)  # picklable, for any engine
        self.headers = [header for headers in ordered_map(read, list_images(name, options)) for header in headers]
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
    def alpha_channel(self) -> int | None:
        """The index of the alpha channel (the last), None when the images carry none."""
        alpha = self.mode == "rgba" if self.mode else self.headers[0].alpha
        return self.sample_shape[-1] - 1 if alpha else None

    @property
    def has_alpha(self) -> bool:
        return self.alpha_channel is not None

    def decode(self, header: ImageHeader) -> np.ndarray:
        image = decode(header)
        if self.mode:
            image = convert_channels(image, MODES[self.mode])
        return image

    def sample(self, index: int) -> np.ndarray:
        return self.decode(self.headers[index])


@dataclass
class Dataset:
    """Samples along axis 0, from one or more inputs concatenated in order."""

    parts: list
    layout: Layout
    dtype: np.dtype
    sample_shape: tuple
    key: str | None = None
    _spools: list[str] = field(default_factory=list)

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
    def has_alpha(self) -> bool:
        return self.alpha_channel is not None

    @property
    def uniform(self) -> bool:
        """Whether every sample has the same shape (needed by `pixel` and single-array outputs)."""
        return None not in self.sample_shape

    @property
    def image_suffixes(self) -> set[str]:
        """The file types of the image inputs (lower case, with the dot)."""
        return {Path(h.relpath).suffix.lower() for part in self.parts if isinstance(part, ImagePart)
                for h in part.headers}

    def chunks(self, max_bytes: int = CHUNK_BYTES) -> Iterator[Chunk]:
        """All samples in order, in chunks of about `max_bytes` (at least one sample)."""
        start = 0
        for part in self.parts:
            if isinstance(part, ImagePart):
                for chunk in _image_chunks(part, start, max_bytes):
                    chunk.data = self._cast(chunk.data)
                    chunk.names = [_qualified(self, part, name) for name in chunk.names]
                    yield chunk
            else:
                per_chunk = max(1, max_bytes // max(part.sample_bytes, 1))
                sizes = _split(part.n_samples, per_chunk)
                offset = start
                for block in part.blocks(iter(sizes)):
                    yield Chunk(self._cast(block), offset)
                    offset += len(block)
            start += part.n_samples

    def batches(self, batch_size: int, order: np.ndarray | None = None) -> Iterator[Chunk]:
        """Consecutive batches of `batch_size` samples (the last may be short), or in `order`."""
        if order is None:
            yield from self._rechunk(batch_size)
            return
        for start in range(0, len(order), batch_size):
            indices = order[start:start + batch_size]
            yield Chunk(self.take(indices), start, self.names_of(indices))

    def _rechunk(self, batch_size: int) -> Iterator[Chunk]:
        """Chunks of exactly `batch_size` samples across part boundaries (the last may be short)."""
        pending: list[Chunk] = []
        have = 0
        start = 0
        sample_bytes = _nbytes(self.sample_shape, self.dtype)
        for chunk in self.chunks(max_bytes=max(sample_bytes * batch_size, 1)):
            pending.append(chunk)
            have += len(chunk.data)
            while have >= batch_size:
                batch, pending = _take_front(pending, batch_size)
                have -= batch_size
                yield Chunk(batch.data, start, batch.names)
                start += batch_size
        if have:
            batch, _ = _take_front(pending, have)
            yield Chunk(batch.data, start, batch.names)

    def take(self, indices: Sequence[int]) -> np.ndarray:
        """The samples at global `indices`, in that order."""
        data = list(ordered_map(self._sample, indices))
        if len({d.shape for d in data}) > 1:
            raise InputError("images of different sizes cannot form one batch; resize them first",
                             self.inputs[0])
        return self._cast(np.stack(data))

    def sample_names(self) -> list[str | None]:
        """Each sample's output name: its image path (under its input's name when there are
        several), None for a sample of an array."""
        names: list[str | None] = []
        for part in self.parts:
            if isinstance(part, ImagePart):
                names.extend(_qualified(self, part, header.name) for header in part.headers)
            else:
                names.extend([None] * part.n_samples)
        return names

    def names_of(self, indices: Sequence[int]) -> list[str] | None:
        names = []
        for index in indices:
            part, local = self._locate(int(index))
            if not isinstance(part, ImagePart):
                return None
            names.append(_qualified(self, part, part.headers[local].name))
        return names

    def _sample(self, index: int) -> np.ndarray:
        part, local = self._locate(int(index))
        return part.sample(local)

    def locate(self, index: int) -> tuple[str, int]:
        """The input holding global sample `index`, and the name of that sample within it."""
        part, local = self._locate(index)
        return part.name, (part.headers[local].name if isinstance(part, ImagePart) else local)

    def _locate(self, index: int):
        for part in self.parts:
            if index < part.n_samples:
                return part, index
            index -= part.n_samples
        raise IndexError(index)

    def _cast(self, data: np.ndarray) -> np.ndarray:
        return data if data.dtype == self.dtype else data.astype(self.dtype)

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


def _nbytes(sample_shape, dtype) -> int:
    return int(np.prod([d or 1 for d in sample_shape], dtype=np.int64)) * np.dtype(dtype).itemsize


def _split(total: int, size: int) -> list[int]:
    return [min(size, total - s) for s in range(0, total, size)]


def _take_front(pending: list[Chunk], count: int):
    """The first `count` samples of the pending chunks, and what remains."""
    taken, names, rest = [], [], []
    need = count
    for chunk in pending:
        if need == 0:
            rest.append(chunk)
            continue
        n = min(need, len(chunk.data))
        taken.append(chunk.data[:n])
        if chunk.names is not None:
            names.extend(chunk.names[:n])
        if n < len(chunk.data):
            rest.append(Chunk(chunk.data[n:], chunk.start + n,
                              chunk.names[n:] if chunk.names is not None else None))
        need -= n
    if len({t.shape[1:] for t in taken}) > 1:
        raise InputError("images of different sizes cannot form one batch; resize them first")
    data = taken[0] if len(taken) == 1 else np.concatenate(taken)
    return Chunk(data, pending[0].start, names if len(names) == count else None), rest


def _qualified(dataset: Dataset, part: ImagePart, name: str) -> str:
    """A sample's output name: its name in its input (relative path, #frame), under its input's name
    when there are several inputs and it comes from a folder."""
    if len(dataset.parts) == 1 or not Path(part.name).is_dir():
        return name
    return f"{Path(part.name).name}/{name}"


def _image_chunks(part: ImagePart, start: int, max_bytes: int) -> Iterator[Chunk]:
    """Runs of consecutive same-sized images, decoded in parallel, in order."""
    decoded = ordered_map(part.decode, part.headers)
    run: list[np.ndarray] = []
    names: list[str] = []
    run_bytes = 0
    offset = start
    for header, image in zip(part.headers, decoded):
        if run and (image.shape != run[0].shape or run_bytes + image.nbytes > max_bytes):
            yield Chunk(np.stack(run), offset, names)
            offset += len(run)
            run, names, run_bytes = [], [], 0
        run.append(image)
        names.append(header.name)
        run_bytes += image.nbytes
    if run:
        yield Chunk(np.stack(run), offset, names)


def _spool_stdin() -> str:
    if sys.stdin is None or sys.stdin.isatty():
        raise InputError("'-' reads a .npy stream from stdin, but stdin is a terminal; pipe an array in", "-")
    fd, path = tempfile.mkstemp(prefix="normcli-stdin-", suffix=".npy")
    with os.fdopen(fd, "wb") as spool:
        shutil.copyfileobj(sys.stdin.buffer, spool, 1 << 20)
    return path


def _open_part(name: str, key: str | None, mode: str | None, spools: list[str], images: ReadOptions):
    if name == "-":
        path = _spool_stdin()
        spools.append(path)
        return ArrayPart("-", path)
    path = Path(name)
    if not path.exists():
        raise InputError("no such file or folder", name)
    suffix = path.suffix.lower()
    if path.is_dir() or suffix in IMAGE_EXTENSIONS:
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
                 mode: str | None = None, images: ReadOptions = ReadOptions()) -> Dataset:
    """Open `inputs` as one dataset, checking that their shapes, layouts and types agree; `images`
    says how image inputs are read (frames, pixel limit, hidden and excluded files)."""
    spools: list[str] = []
    try:
        parts = [_open_part(name, key, mode, spools, images) for name in inputs]
        dataset = _combine(parts, layout, key)
    except BaseException:
        for spool in spools:
            os.unlink(spool)
        raise
    dataset._spools = spools
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
    if not sum(part.n_samples for part in parts):
        raise InputError("holds no samples", first.name if len(parts) == 1 else ", ".join(p.name for p in parts))
    npz_key = next((p.member[:-4] for p in parts if isinstance(p, ArrayPart) and p.member), None)
    return Dataset(parts, layout, np.dtype(dtype), tuple(sample_shape), key=key or npz_key)


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
