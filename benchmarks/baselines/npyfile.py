"""The two things every .npy baseline needs: where the data starts, and reading it 1 MiB at a time."""

from __future__ import annotations

from typing import Iterator

import numpy as np

CHUNK_BYTES = 1 << 20


def header(path: str) -> tuple[np.dtype, tuple, int]:
    """(dtype, shape, byte offset of the data) of a C-ordered .npy, read without np.load."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        assert not fortran, "C order only"
        return dtype, shape, f.tell()


def blocks(path: str, start: int, stop: int, dtype: np.dtype, row_bytes: int) -> Iterator[np.ndarray]:
    """The bytes [start, stop) of `path` as 1-D arrays of `dtype`, ~1 MiB each (whole rows), read with readinto.

    The same buffer is reused: each array is valid until the next one is produced.
    """
    buffer = bytearray(max(row_bytes, CHUNK_BYTES // row_bytes * row_bytes))
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        while start < stop:
            got = f.readinto(view[: min(len(buffer), stop - start)])
            if not got:
                raise EOFError(path)
            start += got
            yield np.frombuffer(buffer, dtype, got // dtype.itemsize)
