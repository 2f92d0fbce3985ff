"""The floor for image folders: a 2-process Pillow pool that only decodes every image.

    python pil_decode_pool.py FOLDER
"""

import sys
from multiprocessing import Pool

from imagefiles import image_files
from PIL import Image


def decode(path):
    with Image.open(path) as image:
        image.load()
    return 0


if __name__ == "__main__":
    with Pool(2) as pool:
        print(sum(pool.imap_unordered(decode, image_files(sys.argv[1]), chunksize=16)), "decoded")
