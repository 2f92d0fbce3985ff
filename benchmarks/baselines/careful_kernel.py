"""The careful kernel: float64 moments, min and max of a .npy, read 1 MiB at a time on 2 threads.

    python careful_kernel.py FILE.npy global|channel

Each thread takes half the rows, reads them with readinto, and sums deviations from one shift
(the first row, so a large offset cannot cancel), their squares, the min and the max. numpy
releases the GIL in all of these, so the threads share both cores (einsum, not BLAS's dot, whose
own threads would oversubscribe them). Prints
{"mean": [...], "var": [...], "min": [...], "max": [...]} (one value per channel, or one).
"""

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from npyfile import blocks, header

THREADS = 2


def moments(path, start, stop, dtype, channels, shift):
    """(count, sum(x - shift), sum((x - shift)**2), min, max) per channel over bytes [start, stop)."""
    n, s, q = 0, np.zeros(channels), np.zeros(channels)
    lo, hi = np.full(channels, np.inf), np.full(channels, -np.inf)
    for block in blocks(path, start, stop, dtype, dtype.itemsize * channels):
        x = block.reshape(-1, channels)
        n += len(x)
        for c in range(channels):  # one strided channel at a time: axis-0 reductions of (n, 3) are slower
            xc = x[:, c]
            d = np.subtract(xc, shift[c], dtype=np.float64)
            s[c] += d.sum()
            q[c] += np.einsum("i,i->", d, d)  # not d @ d: BLAS would start threads of its own
            lo[c], hi[c] = min(lo[c], xc.min()), max(hi[c], xc.max())
    return n, s, q, lo, hi


def main(path, per):
    dtype, shape, offset = header(path)
    channels = shape[-1] if per == "channel" else 1
    rows = int(np.prod(shape)) // channels
    row_bytes = dtype.itemsize * channels
    shift = np.fromfile(path, dtype, channels, offset=offset).astype(np.float64)
    cuts = [offset + rows * i // THREADS * row_bytes for i in range(THREADS + 1)]
    with ThreadPoolExecutor(THREADS) as pool:
        parts = list(pool.map(moments, [path] * THREADS, cuts[:-1], cuts[1:], [dtype] * THREADS,
                              [channels] * THREADS, [shift] * THREADS))
    n = sum(p[0] for p in parts)
    s, q = sum(p[1] for p in parts), sum(p[2] for p in parts)
    lo, hi = np.min([p[3] for p in parts], axis=0), np.max([p[4] for p in parts], axis=0)
    mean, var = shift + s / n, (q - s * s / n) / n
    print(json.dumps({"mean": mean.tolist(), "var": var.tolist(), "min": lo.tolist(), "max": hi.tolist()}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
