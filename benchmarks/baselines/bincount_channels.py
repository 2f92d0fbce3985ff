"""Exact per-channel moments of a uint8 .npy by counting: np.bincount per channel over 1 MiB chunks.

    python bincount_channels.py FILE.npy

One thread (bincount holds the GIL). Prints {"mean": [...], "var": [...]} computed from the counts.
"""

import json
import sys

import numpy as np
from npyfile import blocks, header


def main(path):
    dtype, shape, offset = header(path)
    channels = shape[-1]
    counts = np.zeros((channels, 256), np.int64)
    stop = offset + int(np.prod(shape))
    for block in blocks(path, offset, stop, dtype, channels):
        for c in range(channels):
            counts[c] += np.bincount(block[c::channels], minlength=256)
    values = np.arange(256)
    n = counts.sum(axis=1)
    mean = (counts @ values) / n
    var = (counts @ values**2) / n - mean**2  # exact integer sums; the difference is well-conditioned for uint8
    print(json.dumps({"mean": mean.tolist(), "var": var.tolist()}))


if __name__ == "__main__":
    main(sys.argv[1])
