"""Image files: listing a folder, reading headers, decoding pixels, converting channels, encoding outputs.

Pillow decodes every format except TIFF (tifffile) and 16-bit colour PNG (normcli.png16, which
Pillow reads as 8-bit). Nothing here knows about datasets or chunks: sources.py builds on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from normcli.errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")
IMAGE_TYPES = ", ".join(e[1:] for e in IMAGE_EXTENSIONS)  # for messages
MODES = {"gray": 1, "rgb": 3, "rgba": 4}


def list_images(name: str) -> list[tuple[Path, str]]:
    """(path, relative path) of an image folder's files, read recursively and sorted by relative
    path, or of a single image file."""
    root = Path(name)
    if not root.is_dir():
        return [(root, root.name)]
    files = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*")
                   if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise InputError(f"folder holds no images ({IMAGE_TYPES})", name)
    return [(path, relpath) for relpath, path in files]


@dataclass
class ImageHeader:
    path: Path
    relpath: str
    height: int
    width: int
    channels: int
    dtype: np.dtype


def read_header(item) -> ImageHeader:
    path, relpath = item
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                shape, axes = page.shape, page.axes
                dtype = page.dtype
            height, width = shape[axes.index("Y")], shape[axes.index("X")]
            channels = shape[axes.index("S")] if "S" in axes else 1
            return ImageHeader(path, relpath, height, width, channels, np.dtype(dtype))
        from PIL import Image

        with Image.open(path) as im:
            mode, (width, height) = im.mode, im.size
            has_transparency = "transparency" in im.info
        from normcli.png16 import png16_channels

        channels16 = png16_channels(path)
        if channels16:
            channels, dtype = channels16, np.dtype(np.uint16)
        else:
            channels, dtype = _pil_channels_dtype(mode, has_transparency)
        return ImageHeader(path, relpath, height, width, channels, dtype)
    except InputError:
        raise
    except Exception as exc:  # every decoder has its own errors; the user needs the file
        raise InputError(f"cannot read image: {exc}", str(path)) from None


# Pillow mode -> (channels, dtype) as normcli decodes it.
_PIL_MODES = {
    "1": (1, np.uint8), "L": (1, np.uint8), "LA": (2, np.uint8), "RGB": (3, np.uint8),
    "RGBA": (4, np.uint8), "CMYK": (3, np.uint8), "YCbCr": (3, np.uint8), "PA": (4, np.uint8),
    "I;16": (1, np.uint16), "I;16L": (1, np.uint16), "I;16B": (1, np.uint16),
    "I": (1, np.int32), "F": (1, np.float32),
}


def _pil_channels_dtype(mode: str, has_transparency: bool):
    if mode == "P":
        return (4 if has_transparency else 3), np.dtype(np.uint8)
    if mode not in _PIL_MODES:
        raise InputError(f"unsupported image mode {mode}")
    channels, dtype = _PIL_MODES[mode]
    return channels, np.dtype(dtype)


def decode(header: ImageHeader) -> np.ndarray:
    """One image as (H, W, C) in its own dtype; 16-bit stays 16-bit."""
    path = header.path
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                image, axes = page.asarray(), page.axes
            if "S" in axes and axes.index("S") < axes.index("Y"):
                image = np.moveaxis(image, axes.index("S"), -1)
        elif header.dtype == np.uint16 and header.channels > 1:
            from normcli import png16

            image = png16.read_png16(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.seek(0)
                if im.mode == "P":
                    im = im.convert("RGBA" if header.channels == 4 else "RGB")
                elif im.mode in ("1", "CMYK", "YCbCr", "PA"):
                    im = im.convert({"1": "L", "PA": "RGBA"}.get(im.mode, "RGB"))
                image = np.asarray(im)
            if image.dtype.byteorder not in "=|":
                image = image.astype(image.dtype.newbyteorder("="))
    except Exception as exc:
        raise InputError(f"cannot decode image: {exc}", str(path)) from None
    image = image.reshape(image.shape[0], image.shape[1], -1)
    if image.shape[:2] != (header.height, header.width):
        raise InputError("image changed size while being read", str(path))
    return image


def convert_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Gray/gray+alpha/RGB/RGBA (H, W, C) to 1, 3 or 4 channels, keeping the dtype.

    Gray uses ITU-R 601-2 luma, as Pillow and ImageMagick do; alpha added is opaque.
    """
    have = image.shape[-1]
    if have == channels:
        return image
    color = image[..., :3] if have >= 3 else np.repeat(image[..., :1], 3, axis=-1)
    alpha = image[..., -1:] if have in (2, 4) else None
    if channels == 1:
        if have <= 2:
            return image[..., :1]
        luma = color.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        if image.dtype.kind in "ui":
            luma = np.rint(luma)
        return luma.astype(image.dtype)[..., None]
    if channels == 3:
        return np.ascontiguousarray(color)
    if alpha is None:
        opaque = np.iinfo(image.dtype).max if image.dtype.kind in "ui" else 1
        alpha = np.full(image.shape[:2] + (1,), opaque, dtype=image.dtype)
    return np.concatenate([color, alpha], axis=-1)


def write_image(path, image: np.ndarray, ext: str) -> None:
    """Encode one (H, W, C) image as `ext` (png or tiff) in its own dtype."""
    if ext == "tiff":
        import tifffile

        channels = image.shape[-1]  # said explicitly: tifffile would store 2 or 5+ channels as H pages
        tifffile.imwrite(path, image[..., 0] if channels == 1 else image,
                         photometric="rgb" if channels in (3, 4) else "minisblack",
                         planarconfig="contig" if channels > 1 else None)
    elif image.dtype == np.uint16 and image.shape[-1] > 1:
        from normcli.png16 import write_png16

        write_png16(path, image)
    else:
        import imageio.v3 as iio

        iio.imwrite(path, image[..., 0] if image.shape[-1] == 1 else image, extension=".png")
