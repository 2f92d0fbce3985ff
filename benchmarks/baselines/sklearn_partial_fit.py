"""scikit-learn: StandardScaler.partial_fit over 1 MiB slices of a memory-mapped .npy.

    python sklearn_partial_fit.py FILE.npy global|channel
"""

import json
import sys

import numpy as np
from sklearn.preprocessing import StandardScaler

path, per = sys.argv[1:3]
a = np.load(path, mmap_mode="r")
flat = a.reshape(-1, a.shape[-1] if per == "channel" else 1)
rows = max(1, (1 << 20) // (flat.shape[1] * a.itemsize))
scaler = StandardScaler()
for i in range(0, len(flat), rows):
    scaler.partial_fit(flat[i : i + rows])
print(json.dumps({"mean": scaler.mean_.tolist(), "var": scaler.var_.tolist()}))
