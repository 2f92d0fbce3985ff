"""Inputs -> a Dataset: shape, dtype and layout up front, then the samples in blocks.

Each input is a part, which answers for itself (normcli/parts.py says what a part answers):
arrays in arrayparts.py (.npy, .npz members, stdin, folders of .npy samples), images in
imageparts.py. A Dataset is their concatenation along the sample axis, frozen once opened; its
blocks are small, picklable values that any thread, process or cluster worker reads by itself.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np

from normcli import stores
from normcli.arrayparts import ArrayFolderPart, ArrayPart, open_npy, open_npz
from normcli.errors import InputError, NormcliWarning, UsageMismatch, from_os_error
from normcli.imageparts import ImagePart, open_image
from normcli.images import IMAGE_EXTENSIONS, IMAGE_TYPES, ReadOptions, list_images
from normcli.layout import LAYOUTS, Layout, resolve_layout
from normcli.parts import OpenOptions, Opener, Part, Piece, Recognizer, concatenated, file_with_suffix
from normcli.signals import signals_held

# What a block holds at most, in bytes (at least one sample): why this size, benchmarks/PROFILE.md.
CHUNK_BYTES = 2 << 20

# The input formats that are not a folder of images or of .npy samples, tried in this order:
# (recognizer, opener), see normcli/parts.py. A directory that no recognizer takes is such a folder.
FORMATS: list[tuple[Recognizer, Opener]] = [
    (file_with_suffix(*IMAGE_EXTENSIONS), open_image),
    (file_with_suffix(".npz"), open_npz),
    (file_with_suffix(".npy"), open_npy),
    *stores.FORMATS,
]


@dataclass
class Chunk:
    """Consecutive samples: `data` is shaped (n, *sample_shape); `names` are image paths; `alpha`
    the alpha channel (n, H, W, 1) of images whose alpha is passed through, not measured."""

    data: np.ndarray
    start: int
    names: list[str] | None = None
    alpha: np.ndarray | None = None
    profiles: list[bytes | None] | None = None  # each image's ICC profile, for image outputs


@dataclass(frozen=True)
class Block:
    """Consecutive positions `start`.. of a pass (samples, or a batch in its own order): a few
    pieces of inputs, read and cast to the dataset's dtype. Small and picklable."""

    pieces: tuple[Piece, ...]
    start: int
    dtype: np.dtype
    split_alpha: bool = False  # the last channel is alpha, passed through: read apart from the data
    names: tuple[str, ...] | None = None  # the samples' output names, where every input names its samples

    @property
    def count(self) -> int:
        return sum(piece.count for piece in self.pieces)

    @property
    def profiles(self) -> list[bytes | None] | None:
        """The samples' ICC profiles where every piece is images, else None."""
        profiles = [piece.profiles() for piece in self.pieces]
        if any(found is None for found in profiles):
            return None
        return [profile for found in profiles for profile in found]

    def value_counts(self) -> np.ndarray | None:
        """How often each value occurs per channel in this block's samples, (channels, 256), counted
        without arrays where every piece can (8-bit still images that need no conversion); else None."""
        if self.dtype != np.uint8:
            return None
        total = None
        for piece in self.pieces:
            counts = piece.value_counts()
            if counts is None:
                return None
            total = counts if total is None else total + counts
        return total[:-1] if self.split_alpha else total

    def read(self) -> Chunk:
        data = concatenated([piece.read() for piece in self.pieces])
        alpha = None
        if self.split_alpha:
            data, alpha = np.ascontiguousarray(data[..., :-1]), data[..., -1:]
        return Chunk(data if data.dtype == self.dtype else data.astype(self.dtype), self.start,
                     None if self.names is None else list(self.names), alpha, self.profiles)


@dataclass(frozen=True)
class Dataset:
    """Samples along axis 0, from one or more inputs (parts) concatenated in order."""

    parts: tuple[Part, ...]
    layout: Layout
    dtype: np.dtype
    sample_shape: tuple
    key: str | None = None
    # Alpha is not a colour: unless asked to include it, the statistics and transforms cover the
    # colour channels (sample_shape) and alpha goes through unchanged (output_shape has it back).
    alpha_passed: bool = False
    block_bytes: int = CHUNK_BYTES  # what a block of blocks() holds at most (at least one sample)
    # Worked out once: each part's samples' output names (None for a part whose samples have none),
    # and the global index of each part's first sample.
    _names: tuple = field(init=False, repr=False, compare=False)
    _starts: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        several = len(self.parts) > 1
        object.__setattr__(self, "_names", tuple(_output_names(part, several) for part in self.parts))
        object.__setattr__(self, "_starts", np.cumsum([0] + [part.n_samples for part in self.parts[:-1]]))

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
        return _alpha_channel(self.parts)

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
        return all(part.npy_files for part in self.parts)

    @property
    def image_suffixes(self) -> set[str]:
        """The file types of the image inputs (lower case, with the dot)."""
        return set().union(*(part.image_suffixes() for part in self.parts))

    def blocks(self) -> list[Block]:
        """Every sample in order, as blocks of about `block_bytes` (at least one sample; images of
        one size each, since a block is one array)."""
        blocks: list[Block] = []
        for part, names, first in zip(self.parts, self._names, self._starts.tolist()):
            local = 0
            for piece in part.blocks(self.block_bytes):
                end = local + piece.count
                blocks.append(self._block([piece], None if names is None else names[local:end], first + local))
                local = end
        return blocks

    def batches(self, batch_size: int, order: np.ndarray | None = None) -> list[Block]:
        """Blocks of `batch_size` consecutive samples (the last may be short), or of the samples
        in `order`, across input boundaries."""
        total = self.n_samples
        blocks = []
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            indices = range(start, stop) if order is None else order[start:stop]
            blocks.append(self._block(*self._pieces(indices), start=start))
        return blocks

    def _pieces(self, indices) -> tuple[list[Piece], tuple[str, ...] | None]:
        """The samples at global `indices` as pieces of one input each, in order, and their output
        names (None unless every input they come from names its samples)."""
        indices = np.asarray(indices, dtype=np.int64)
        which = np.searchsorted(self._starts, indices, side="right") - 1
        cuts = np.flatnonzero(np.diff(which)) + 1  # where the samples move on to another part
        groups = [(int(part[0]), local.tolist())  # (which part, its local indices)
                  for part, local in zip(np.split(which, cuts), np.split(indices - self._starts[which], cuts))
                  if len(part)]
        pieces = [self.parts[which].piece(local) for which, local in groups]
        if any(self._names[which] is None for which, _ in groups):
            return pieces, None
        return pieces, tuple(self._names[which][i] for which, local in groups for i in local)

    def _block(self, pieces: list[Piece], names: Sequence[str] | None, start: int) -> Block:
        return Block(tuple(pieces), start, self.dtype, self.alpha_passed, None if names is None else tuple(names))

    def sample_names(self) -> list[str | None]:
        """Each sample's output name: its image path (under its input's name when there are
        several), None for a sample of an array."""
        names: list[str | None] = []
        for part, part_names in zip(self.parts, self._names):
            names.extend([None] * part.n_samples if part_names is None else part_names)
        return names

    def sample_files(self) -> list[str] | None:
        """Each sample's file, for per-sample rows: an image in a folder, its path inside (under the
        folder's name when several inputs are given); any other input, its path as given (with #frame
        for a frame of an image file, as in a folder). None for a single array input, whose sample
        index says it all."""
        names = self.sample_names()
        if len(self.parts) == 1 and names and names[0] is None:
            return None
        start = 0
        for part in self.parts:
            if not Path(part.name).is_dir():
                names[start:start + part.n_samples] = [part.name + tag for tag in part.frame_tags()]
            start += part.n_samples
        return names

    def locate(self, index: int) -> tuple[str, str | int]:
        """The input holding global sample `index`, and the name of that sample within it."""
        which, local = self._locate(index)
        return self.parts[which].name, self.parts[which].locate(local)

    def _locate(self, index: int) -> tuple[int, int]:
        """Which part holds global sample `index`, and its index there."""
        if not 0 <= index < self.n_samples:
            raise IndexError(index)
        which = int(np.searchsorted(self._starts, index, side="right")) - 1
        return which, index - int(self._starts[which])

    def close(self) -> None:
        for part in self.parts:
            part.close()

    def __enter__(self) -> "Dataset":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _output_names(part: Part, several: bool) -> list[str] | None:
    """A part's samples' output names: their names in the input (relative path, #frame), under the
    input folder's name when there are several inputs (the resolved name: `.` and `..` name the
    folder they stand for, never a step out of the output)."""
    names = part.names()
    if names is None or not several or not Path(part.name).is_dir():
        return names
    folder = Path(part.name).resolve().name  # empty for /
    return [f"{folder}/{name}" for name in names] if folder else names


def _alpha_channel(parts: Sequence[Part]) -> int | None:
    """The channel that holds alpha in every part, None where they have none or disagree."""
    channels = {part.alpha_channel for part in parts}
    return channels.pop() if len(channels) == 1 else None


def _open_stdin(stdin: BinaryIO | None) -> ArrayPart:
    """Stdin as an input: copied to a temporary .npy file (a spool, which can be read by position),
    read as a .npy file, and the spool removed when the part closes."""
    if stdin is None or stdin.isatty():
        raise InputError("'-' reads a .npy stream from stdin, but stdin is a terminal; pipe an array in", "-")
    path = None
    try:
        with signals_held():  # a signal between making the spool and knowing its name would leave it behind
            fd, path = tempfile.mkstemp(prefix="normcli-stdin-", suffix=".npy")
            spool = os.fdopen(fd, "wb")
        with spool:
            shutil.copyfileobj(stdin, spool, 1 << 20)
        return ArrayPart("-", path, spooled=True)
    except BaseException as error:  # a full disk, Ctrl-C, SIGTERM, a bad stream: the spool never outlives the run
        if path is not None:
            os.unlink(path)
        if isinstance(error, OSError):
            if path is None:
                raise from_os_error(error, tempfile.gettempdir(), InputError) from None
            raise InputError(f"cannot spool stdin: {error.strerror or error}", path) from None
        raise


def _folder_part(name: str, options: OpenOptions) -> Part:
    """A folder as an input: of images, or, where it holds none, of .npy samples. A folder with
    images is an image folder, whatever else it holds (as before arrays were read from folders)."""
    files = list_images(name, options.images, IMAGE_EXTENSIONS + (".npy",))
    images = [(path, relpath) for path, relpath in files if path.suffix.lower() != ".npy"]
    return ImagePart(name, options.mode, options.images, images) if images else ArrayFolderPart(name, files)


def _open_part(name: str, options: OpenOptions, stdin: BinaryIO | None) -> Part:
    if name == "-":
        return _open_stdin(stdin)
    path = Path(name)
    if not path.exists():
        raise InputError("no such file or folder", name)
    for recognizes, opener in FORMATS:
        if recognizes(path):
            return opener(name, options)
    if path.is_dir():
        return _folder_part(name, options)
    raise InputError(
        f"unknown input type; give a .npy or .npz file, an image ({IMAGE_TYPES}), a folder of images, "
        "or - for stdin", name)


def open_dataset(inputs: Sequence[str], *, layout: str | None = None, key: str | None = None,
                 mode: str | None = None, images: ReadOptions = ReadOptions(),
                 stdin: BinaryIO | None = None) -> Dataset:
    """Open `inputs` as one dataset, checking that their shapes, layouts and types agree; `images`
    says how image inputs are read (frames, pixel limit, hidden and excluded files, alpha); `stdin`
    is the binary stream an input `-` reads (run.Environment.stdin)."""
    options = OpenOptions(key, mode, images)
    parts: list[Part] = []
    try:
        for name in inputs:
            parts.append(_open_part(name, options, stdin))
        return _combine(parts, layout, key, include_alpha=images.include_alpha)
    except BaseException:
        for part in parts:
            part.close()
        raise


def _combine(parts: list[Part], layout_name: str | None, key: str | None, *, include_alpha: bool) -> Dataset:
    """The parts as one dataset, once their layout, shapes and types are found to agree."""
    layout = _layout(parts, layout_name)
    first = parts[0]
    if not sum(part.n_samples for part in parts):  # before any warning: the error is the one line
        raise InputError("holds no samples", first.name if len(parts) == 1 else ", ".join(p.name for p in parts))
    doubt = first.layout_doubt(layout) if layout_name is None else None
    if doubt:
        warnings.warn(NormcliWarning(doubt))
    sample_shape = _sample_shape(parts)
    dtype = np.result_type(*(part.dtype for part in parts))
    alpha_passed = _alpha_channel(parts) is not None and not include_alpha
    if alpha_passed:
        sample_shape = (*sample_shape[:-1], sample_shape[-1] - 1)
    # block_bytes: the field's default as the class holds it when the dataset is opened (a test that
    # sets Dataset.block_bytes makes every dataset it opens read in blocks that small).
    return Dataset(tuple(parts), layout, np.dtype(dtype), sample_shape,
                   key=key or next((part.key for part in parts if part.key), None), alpha_passed=alpha_passed,
                   block_bytes=Dataset.block_bytes)


def _layout(parts: list[Part], layout_name: str | None) -> Layout:
    """The layout `--layout` names (or the default for the first input's axes), which every input can be read as."""
    first = parts[0]
    if layout_name is not None and layout_name.upper() not in LAYOUTS:
        raise UsageMismatch(f"unknown layout {layout_name}; use one of {', '.join(LAYOUTS)}")
    for part in parts:
        part.check_layout(layout_name)
    layout = resolve_layout(layout_name, first.ndim)
    if layout.ndim != first.ndim:
        raise UsageMismatch(
            f"--layout {layout.name} needs {layout.ndim} axes, but {first.name} has {first.ndim} "
            f"(shape {(first.n_samples, *first.sample_shape)})")
    return layout


def _sample_shape(parts: list[Part]) -> tuple:
    """The shape the parts' samples share: None for a height or width in which inputs of varied
    sizes (images) differ; any other difference is refused."""
    first = parts[0]
    sample_shape = list(first.sample_shape)
    for part in parts[1:]:
        if part.ndim != first.ndim:
            raise InputError(f"has {part.ndim} axes but {first.name} has {first.ndim}", part.name)
        for axis, (have, want) in enumerate(zip(part.sample_shape, sample_shape)):
            if have != want:
                if (part.varied_sizes or first.varied_sizes) and axis < 2:
                    sample_shape[axis] = None
                else:
                    raise InputError(
                        f"samples of shape {part.sample_shape} do not match {first.name}'s "
                        f"{tuple(first.sample_shape)}", part.name)
    return tuple(sample_shape)
