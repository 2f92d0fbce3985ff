"""Dask: dask.array.percentile (approximate: it merges each chunk's percentiles) over all the values
of a memory-mapped .npy, chunked along the first axis, on dask's threaded scheduler (the default for
dask.array; one thread per core).

    python dask_percentile.py FILE.npy Q,... CHUNK_MIB
"""

import json
import sys

import dask.array as da
import numpy as np

path, q, chunk_mib = sys.argv[1], [float(v) for v in sys.argv[2].split(",")], float(sys.argv[3])
x = np.load(path, mmap_mode="r")
rows = max(1, int(chunk_mib * 2**20) // x[0].nbytes)
values = da.from_array(x, chunks=(rows, *x.shape[1:])).ravel()
print(json.dumps(da.percentile(values, q).compute(scheduler="threads").tolist()))
