"""Image inputs: an image folder (read recursively, sorted by relative path) or a single image
file, its headers read first (on every core, in order), its pieces decoded by whichever worker
runs them."""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from normcli.engine import ordered_map
from normcli.errors import InputError, UsageMismatch
from normcli.images import (MODES, ImageHeader, ReadOptions, can_count_values, close_frame_readers, convert_channels,
                            decode, image_value_counts, list_images, read_header)
from normcli.parts import OpenOptions, Part, Piece, concatenated


class ImagePart(Part):
    """An image folder (read recursively, sorted by relative path) or a single image file."""

    ndim = 4
    varied_sizes = True

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
            _check_alike(first, header, mode, name)
        self.dtype = first.dtype
        channels = MODES[mode] if mode else first.channels
        heights = {h.height for h in self.headers}
        widths = {h.width for h in self.headers}
        self.sample_shape = (
            heights.pop() if len(heights) == 1 else None,
            widths.pop() if len(widths) == 1 else None,
            channels,
        )

    @property
    def alpha_channel(self) -> int | None:
        alpha = self.mode == "rgba" if self.mode else self.headers[0].alpha
        return self.sample_shape[-1] - 1 if alpha else None

    def names(self) -> list[str]:
        return [header.name for header in self.headers]

    def frame_tags(self) -> list[str]:
        return [header.frame_tag for header in self.headers]

    def image_suffixes(self) -> set[str]:
        return {Path(header.relpath).suffix.lower() for header in self.headers}

    def check_layout(self, layout_name: str | None) -> None:
        if layout_name and layout_name.upper() != "NHWC":
            raise UsageMismatch(f"images are read as NHWC; --layout {layout_name} does not apply to them")

    def blocks(self, max_bytes: int) -> list[Piece]:
        """Spans of consecutive images of one size, of about `max_bytes` each."""
        return [self.piece(span) for span in _same_size_spans(self.headers, max_bytes, self.dtype.itemsize)]

    def piece(self, local: Sequence[int]) -> Piece:
        # absolute paths: pieces are read by workers that may not share our working directory
        headers = tuple(replace(self.headers[i], path=self.headers[i].path.absolute()) for i in local)
        # Pillow's counts of each value stand for the decoded image only where no --mode converts it.
        return ImagePiece(functools.partial(decode_image, mode=self.mode), headers,
                          image_value_counts if self.mode is None else None)

    def close(self) -> None:
        close_frame_readers()


def open_image(name: str, options: OpenOptions) -> ImagePart:
    return ImagePart(name, options.mode, options.images)


def _check_alike(first: ImageHeader, header: ImageHeader, mode: str | None, name: str) -> None:
    """Refuse an image that cannot stand in one input with the first: another bit depth, or (unless
    a --mode converts them) other channels or alpha."""
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


def decode_image(header: ImageHeader, *, mode: str | None) -> np.ndarray:
    """One image as (H, W, C) in its own dtype, converted to `mode`'s channels if given."""
    image = decode(header)
    return convert_channels(image, MODES[mode]) if mode else image


@dataclass(frozen=True)
class ImagePiece(Piece):
    """Image files, decoded in order."""

    decode: Callable  # header -> (H, W, C) array
    headers: tuple
    count_values: Callable | None = None  # header -> (channels, 256) value counts, for 8-bit stills

    @property
    def count(self) -> int:
        return len(self.headers)

    def read(self) -> np.ndarray:
        return concatenated([self.decode(header)[None] for header in self.headers], str(self.headers[0].path))

    def value_counts(self) -> np.ndarray | None:
        if self.count_values is None or not all(can_count_values(header) for header in self.headers):
            return None
        return sum(self.count_values(header) for header in self.headers)

    def profiles(self) -> list[bytes | None]:
        return [header.icc for header in self.headers]


def _same_size_spans(headers: list, max_bytes: int, itemsize: int) -> Iterator[list[int]]:
    """The indices of `headers` in spans of consecutive images of one size and about `max_bytes`."""
    span: list[int] = []
    span_bytes = 0
    for index, header in enumerate(headers):
        nbytes = header.height * header.width * header.channels * itemsize
        first = headers[span[0]] if span else None
        if span and ((header.height, header.width) != (first.height, first.width) or span_bytes + nbytes > max_bytes):
            yield span
            span, span_bytes = [], 0
        span.append(index)
        span_bytes += nbytes
    if span:
        yield span
