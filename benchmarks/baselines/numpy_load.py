"""Plain numpy: np.load the whole array, then mean and var in float64.

    python numpy_load.py FILE.npy global|channel
"""

import json
import sys

import numpy as np

path, per = sys.argv[1:3]
a = np.load(path)
axis = tuple(range(a.ndim - 1)) if per == "channel" else None
mean, var = a.mean(axis=axis, dtype=np.float64), a.var(axis=axis, dtype=np.float64)
print(json.dumps({"mean": np.atleast_1d(mean).tolist(), "var": np.atleast_1d(var).tolist()}))
