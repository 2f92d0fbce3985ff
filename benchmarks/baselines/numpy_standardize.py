"""The numpy 2-pass standardize script: fit (float64 moments), then apply in float32 and f.write.

    python numpy_standardize.py IN.npy OUT.npy [MEAN STD]

Pass 1 is the careful kernel's moments on one thread (skipped when MEAN and STD are given, as with
saved statistics); pass 2 reads 1 MiB at a time with readinto, computes (x - mean) * (1 / std) in
float32 into a reused buffer and writes it after a float32 .npy header, to a temporary name renamed
at the end.
"""

import os
import sys

import numpy as np
from careful_kernel import moments
from npyfile import blocks, header


def main(source, target, mean=None, std=None):
    dtype, shape, offset = header(source)
    stop = offset + int(np.prod(shape)) * dtype.itemsize
    if mean is None:
        shift = np.fromfile(source, dtype, 1, offset=offset).astype(np.float64)
        n, s, q, _, _ = moments(source, offset, stop, dtype, 1, shift)
        mean, std = float(shift[0] + s[0] / n), float(np.sqrt((q[0] - s[0] * s[0] / n) / n))
    mean32, scale32 = np.float32(mean), np.float32(1 / float(std))
    partial = target + ".part"
    with open(partial, "wb") as out:
        np.lib.format.write_array_header_1_0(out, {"descr": "<f4", "fortran_order": False, "shape": shape})
        result = np.empty(0, np.float32)
        for x in blocks(source, offset, stop, dtype, dtype.itemsize):
            if len(result) != len(x):
                result = np.empty(len(x), np.float32)
            np.subtract(x, mean32, out=result)
            result *= scale32
            out.write(result)
    os.replace(partial, target)


if __name__ == "__main__":
    main(*sys.argv[1:3], *map(float, sys.argv[3:5]))
