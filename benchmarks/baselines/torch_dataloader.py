"""The torchvision recipe, written with torch only: a Dataset that decodes with PIL and converts as
ToTensor does (HWC uint8 -> CHW float / 255), a DataLoader(num_workers=2), per-channel sums and squares.

    python torch_dataloader.py FOLDER

Prints {"mean": [...], "var": [...]} per channel, in 0..255 units (so it compares with the others).
"""

import json
import sys

import numpy as np
import torch
from imagefiles import image_files
from PIL import Image
from torch.utils.data import DataLoader, Dataset


class ImageFolder(Dataset):
    def __init__(self, folder):
        self.paths = image_files(folder)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as image:
            pixels = np.asarray(image.convert("RGB"))
        return torch.from_numpy(pixels).permute(2, 0, 1).float().div(255)  # what ToTensor does


if __name__ == "__main__":
    total = squares = torch.zeros(3, dtype=torch.float64)
    n = 0
    for batch in DataLoader(ImageFolder(sys.argv[1]), batch_size=64, num_workers=2):
        batch = batch.double()
        total = total + batch.sum(dim=(0, 2, 3))
        squares = squares + (batch * batch).sum(dim=(0, 2, 3))
        n += batch.shape[0] * batch.shape[2] * batch.shape[3]
    mean = total / n
    var = squares / n - mean * mean
    print(json.dumps({"mean": (mean * 255).tolist(), "var": (var * 255**2).tolist()}))
