"""PIL.ImageStat in 2 processes: per-band count, sum and sum of squares, pooled over the folder.

    python pil_imagestat_pool.py FOLDER

Prints {"mean": [...], "var": [...]} per channel, in 0..255 units.
"""

import json
import sys
from multiprocessing import Pool

import numpy as np
from imagefiles import image_files
from PIL import Image, ImageStat


def band_sums(path):
    with Image.open(path) as image:
        stat = ImageStat.Stat(image.convert("RGB"))
    return np.array([stat.count, stat.sum, stat.sum2], np.float64)


if __name__ == "__main__":
    with Pool(2) as pool:
        count, total, squares = sum(pool.imap_unordered(band_sums, image_files(sys.argv[1]), chunksize=16))
    mean = total / count
    print(json.dumps({"mean": mean.tolist(), "var": (squares / count - mean**2).tolist()}))
