"""Per-thread scratch arrays for the kernels' temporaries (moments, histograms).

A kernel that allocated its temporaries afresh for every block paid for them in page faults
whenever glibc mapped them afresh (allocations of a few MiB, unless an earlier free of one as large
raised its threshold): benchmarks/PROFILE.md. Each thread keeps its own arrays here instead, so
threads never share one, and processes and Dask workers have their own threads; an array larger
than MAX_BYTES is allocated for the call and not kept.
"""

from __future__ import annotations

import math
import threading

import numpy as np

MAX_BYTES = 64 << 20  # any block of the default size (2 MiB) fits, float64 deviations included
# The most values a kernel takes through its temporaries at once (the float moments' and the affine
# apply's float64, 8 MiB; the float histogram's): a block of the default size in one go. Smaller
# slices kept the temporaries in the L2 cache, but each costs numpy calls, and their GIL hand-offs
# between two worker threads cost more than the cache misses saved (benchmarks/PROFILE.md: 64 Ki
# slices took 1.5-1.9x the whole block's time on 2 threads).
SLICE_VALUES = 1 << 20
_local = threading.local()


def slice_rows(shape) -> int:
    """How many rows (along the first axis) of an array shaped `shape` hold about SLICE_VALUES values:
    at least one."""
    return max(1, SLICE_VALUES // max(1, math.prod(shape[1:])))


def scratch(name: str, shape, dtype) -> np.ndarray:
    """An uninitialised array of `shape` and `dtype`: this thread's array `name`, valid until the
    thread asks for `name` again."""
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > MAX_BYTES:
        return np.empty(shape, dtype)
    buffer = _local.__dict__.get(name)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = _local.__dict__[name] = np.empty(max(nbytes, 1), np.uint8)
    return buffer[:nbytes].view(dtype).reshape(shape)

