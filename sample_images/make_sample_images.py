"""Write normcli's small demo images into sample_images/ (deterministic: fixed seed, overwrites its own files).

    /work/venv/bin/python sample_images/make_sample_images.py

- tutorial/  24 grayscale 8-bit PNGs, 32x32, like the batch-normalization tutorial's data: every pixel
             drawn from normal(26, 17.5) (variance ~306), clipped to 0..255 and rounded to uint8.
             (Clipping at 0 cuts the left tail: the 24 files together have mean 26.36, variance 271.6.)
- rgb/       8-bit RGB PNGs of different sizes in two class folders (cats/, dogs/): smooth colour
             gradients plus a little noise.
- rgb16/     one 16-bit RGB PNG (written with normcli.png16; Pillow cannot write 16-bit RGB). It has a
             folder of its own because normcli refuses a folder whose images differ in bit depth.
- mixed/     8-bit grayscale and RGB PNGs together: `normcli stats sample_images/mixed --mode rgb`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from normcli.png16 import write_png16

SEED = 20240601
HERE = Path(__file__).resolve().parent


def tutorial_image(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """(size, size) uint8: normal(26, 17.5) clipped to 0..255 and rounded."""
    return np.rint(np.clip(rng.normal(26.0, 17.5, (size, size)), 0, 255)).astype(np.uint8)


def colour_image(rng: np.random.Generator, height: int, width: int, maximum: int = 255) -> np.ndarray:
    """(height, width, 3) float in 0..maximum: a smooth gradient per channel (random direction and phase)
    plus normal noise of 3% of the range."""
    y, x = np.mgrid[0:1:height * 1j, 0:1:width * 1j]
    channels = []
    for _ in range(3):
        fy, fx = rng.uniform(-1.5, 1.5, 2)
        phase = rng.uniform(0, 2 * np.pi)
        channels.append(0.5 + 0.45 * np.sin(2 * np.pi * (fy * y + fx * x) + phase))
    image = np.stack(channels, axis=-1) + rng.normal(0, 0.03, (height, width, 3))
    return np.clip(image, 0, 1) * maximum


def save_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.rint(image).astype(np.uint8)).save(path, optimize=True)


def main() -> None:
    rng = np.random.default_rng(SEED)
    for i in range(24):
        save_png(HERE / "tutorial" / f"img_{i:02d}.png", tutorial_image(rng))
    # (height, width) per image: sizes differ on purpose
    for label, sizes in (("cats", [(48, 64), (64, 48), (40, 40)]), ("dogs", [(64, 48), (40, 40), (48, 64)])):
        for i, (h, w) in enumerate(sizes):
            save_png(HERE / "rgb" / label / f"{label[:-1]}_{i:02d}.png", colour_image(rng, h, w))
    (HERE / "rgb16").mkdir(exist_ok=True)
    write_png16(HERE / "rgb16" / "gradient16.png", np.rint(colour_image(rng, 48, 64, 65535)).astype(np.uint16))
    for i in range(3):
        save_png(HERE / "mixed" / f"gray_{i:02d}.png", colour_image(rng, 40, 40).mean(axis=-1))
        save_png(HERE / "mixed" / f"rgb_{i:02d}.png", colour_image(rng, 40, 48))
    total = sum(p.stat().st_size for p in HERE.rglob("*.png"))
    print(f"wrote {sum(1 for _ in HERE.rglob('*.png'))} PNGs, {total / 1024:.0f} KiB, under {HERE}")


if __name__ == "__main__":
    main()
