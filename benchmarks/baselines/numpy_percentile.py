"""Plain numpy: np.load the whole array, then np.percentile (exact, linear) over all its values.

    python numpy_percentile.py FILE.npy Q,...
"""

import json
import sys

import numpy as np

path, q = sys.argv[1], [float(v) for v in sys.argv[2].split(",")]
print(json.dumps(np.percentile(np.load(path), q).tolist()))
