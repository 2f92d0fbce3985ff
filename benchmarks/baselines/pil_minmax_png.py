"""Folder -> folder global min-max normalization with Pillow in 2 processes, two passes.

    python pil_minmax_png.py IN_FOLDER OUT_FOLDER

Pass 1: every image's per-band extrema, reduced to one global min and max. Pass 2: a 256-entry
lookup table round((v - min) / (max - min) * 255) applied with Image.point, saved as PNG under the
same relative path.
"""

import sys
from functools import partial
from multiprocessing import Pool
from pathlib import Path

from imagefiles import image_files
from PIL import Image


def extrema(path):
    with Image.open(path) as image:
        bands = image.getextrema()
    return min(lo for lo, _ in bands), max(hi for _, hi in bands)


def apply(path, source, target, table):
    out = target / path.relative_to(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(path) as image:
        image.point(table * len(image.getbands())).save(out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    paths = image_files(source)
    with Pool(2) as pool:
        ranges = pool.map(extrema, paths, chunksize=16)
        lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
        span = max(hi - lo, 1)
        table = [min(255, max(0, round((v - lo) * 255 / span))) for v in range(256)]
        written = sum(pool.imap_unordered(partial(apply, source=source, target=target, table=table), paths,
                                          chunksize=16))
    print(written, "written")
