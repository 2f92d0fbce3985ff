"""Image files: listing a folder, reading headers, decoding pixels, converting channels, encoding outputs.

Pillow decodes every format except TIFF (tifffile, with imagecodecs for every compression) and
16-bit colour PNG (normcli.png16, which Pillow reads as 8-bit); 8-bit gray and colour stills in JPEG
and PNG, the bulk of a photo folder, are decoded by imagecodecs instead, to the same pixels, with the
GIL let go (_gil_free_decoder). Images are read as displayed: EXIF
orientation applied, a palette as its colours, MinIsWhite inverted, CMYK and YCbCr as RGB (as Pillow
converts them), a multi-frame file never silently cut to its first frame, and no decoder allocates
more than --max-pixels allow.
Nothing here knows about datasets or blocks: imageparts.py builds on it.
"""

from __future__ import annotations

import fnmatch
import functools
import io
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from normcli.errors import InputError
from normcli.histograms import value_counts

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")
IMAGE_TYPES = ", ".join(e[1:] for e in IMAGE_EXTENSIONS)  # for messages
MODES = {"gray": 1, "rgb": 3, "rgba": 4}
# Pillow's own default (Image.MAX_IMAGE_PIXELS: a quarter GiB of 24-bit pixels), applied here to every
# decoder, tifffile and the 16-bit PNG reader included.
DEFAULT_MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3
EXIF_ORIENTATION = 0x0112  # the EXIF tag; TIFF's own Orientation tag (274) is the same number
_TIFF_ALPHA_EXTRASAMPLES = (1, 2)  # associated, unassociated alpha


@dataclass(frozen=True)
class ReadOptions:
    """How image inputs are read: which frames, the pixel limit (0: none), which files."""

    frames: str | None = None  # None: refuse multi-frame files; "first"; "all" (one sample per frame)
    max_pixels: int = DEFAULT_MAX_PIXELS
    include_hidden: bool = False
    exclude: tuple[str, ...] = ()
    include_alpha: bool = False  # measure and transform alpha as a channel, instead of passing it through


class _Frame(NamedTuple):
    """What a file's header says about one of its frames (as stored, before orientation)."""

    page: int  # the TIFF page or Pillow frame index
    height: int
    width: int
    channels: int
    dtype: np.dtype
    alpha: bool
    orientation: int
    icc: bytes | None  # the embedded ICC profile
    decoder: str | None = None  # _gil_free_decoder's


@dataclass(frozen=True)
class ImageHeader:
    """One sample of an image file: its size as displayed (after EXIF orientation) and how it decodes."""

    path: Path
    relpath: str
    height: int
    width: int
    channels: int
    dtype: np.dtype
    alpha: bool = False  # the last channel is alpha
    orientation: int = 1  # EXIF orientation, 1 to 8 (1: as stored)
    frame: int | None = None  # the frame within a multi-frame file read with --frames all
    frames: int = 1
    page: int = 0  # what to decode: the TIFF page or Pillow frame index within the file
    icc: bytes | None = field(default=None, repr=False)  # the embedded ICC profile, carried into outputs
    decoder: str | None = None  # "jpeg" or "png": imagecodecs decodes Pillow's pixels (_gil_free_decoder)

    @property
    def name(self) -> str:
        """The sample's name: the relative path, with `#frame` (zero-padded) for a frame of a file."""
        return self.relpath + self.frame_tag

    @property
    def frame_tag(self) -> str:
        """`#frame`, zero-padded to the file's frame count, for a frame of a file; else empty."""
        return "" if self.frame is None else f"#{self.frame:0{len(str(self.frames - 1))}d}"


def list_images(name: str, options: ReadOptions = ReadOptions(),
                extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[tuple[Path, str]]:
    """(path, relative path) of a folder's files of `extensions` (images), read recursively and
    sorted by relative path, or of a single image file (read even if hidden: it was named).

    Files and folders whose name starts with a dot are left out unless `include_hidden`; so is
    every relative path matching one of the `exclude` globs (fnmatch, case-sensitive, `*` crosses `/`).
    """
    root = Path(name)
    if not root.is_dir():
        return [(root, root.name)]
    files, skipped = [], 0
    for path in root.rglob("*"):
        if path.suffix.lower() not in extensions or not path.is_file():
            continue
        relpath = path.relative_to(root).as_posix()
        hidden = any(part.startswith(".") for part in relpath.split("/"))
        if (hidden and not options.include_hidden) or any(fnmatch.fnmatchcase(relpath, glob)
                                                          for glob in options.exclude):
            skipped += 1
            continue
        files.append((relpath, path))
    if not files:
        left_out = f"; {skipped} hidden or --exclude'd images left out" if skipped else ""
        arrays = " or .npy arrays" if ".npy" in extensions else ""
        raise InputError(f"folder holds no images ({IMAGE_TYPES}){arrays}{left_out}", name)
    return [(path, relpath) for relpath, path in sorted(files)]


def read_header(item: tuple[Path, str], options: ReadOptions = ReadOptions()) -> list[ImageHeader]:
    """The samples of one image file (one, or one per frame with --frames all), from its header
    alone: nothing is decoded, so the pixel limit is checked before any large allocation."""
    path, relpath = item
    every = options.frames == "all"
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            count, frames = _tiff_frames(path, options.max_pixels, every)
        else:
            count, frames = _pillow_frames(path, options.max_pixels, every)
    except InputError:
        raise
    except Exception as exc:  # every decoder has its own errors; the user needs the file
        raise InputError(f"cannot read image: {exc}", str(path)) from None
    if count > 1 and options.frames is None:
        raise InputError(f"holds {count} frames; read the first with --frames first, "
                         "or each as a sample with --frames all", str(path))
    headers = []
    for index, frame in enumerate(frames):
        height, width = frame.height, frame.width
        if frame.orientation in (5, 6, 7, 8):  # a quarter turn: displayed with height and width swapped
            height, width = width, height
        headers.append(ImageHeader(path, relpath, height, width, frame.channels, np.dtype(frame.dtype), frame.alpha,
                                   frame.orientation, index if len(frames) > 1 else None, len(frames), frame.page,
                                   frame.icc, frame.decoder))
    return headers


def _check_pixels(path: Path, height: int, width: int, channels: int, dtype, max_pixels: int) -> None:
    """Refuse, from the header, an image over the pixel limit (a few-KB file can decode to GBs)."""
    if max_pixels and height * width > max_pixels:
        decoded = height * width * channels * np.dtype(dtype).itemsize
        raise InputError(f"{width}×{height} image ({height * width:,} pixels, {binary_size(decoded)} decoded) "
                         f"is over the limit of {max_pixels:,} pixels; raise it with --max-pixels N "
                         "(0: no limit)", str(path))


def binary_size(nbytes: int) -> str:
    """A byte count in the largest binary unit that leaves at least 1, to 3 significant digits
    (512 bytes, 512 KiB for half a MiB, 1.5 GiB, 3,000 GiB)."""
    size, unit = float(nbytes), "bytes"
    for bigger in ("KiB", "MiB", "GiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:,.0f} {unit}" if size >= 100 or unit == "bytes" else f"{size:.3g} {unit}"


def _tiff_frames(path: Path, max_pixels: int, every: bool) -> tuple[int, list[_Frame]]:
    """How many full-resolution pages the file holds, and the first (`every`: each) of them, in the
    channels and dtype they display as (_tiff_shown)."""
    import tifffile

    frames, count = [], 0
    with tifffile.TiffFile(path) as tif:
        for index, page in enumerate(tif.pages):
            if page.is_reduced:  # a thumbnail or pyramid level, not an image of its own
                continue
            count += 1
            if frames and not every:
                continue
            shape, axes = page.shape, page.axes
            stored = shape[axes.index("S")] if "S" in axes else 1
            channels, dtype = _tiff_shown(page, stored)
            extrasamples = tuple(page.extrasamples or ())
            alpha = channels in (2, 4) and bool(extrasamples) and extrasamples[-1] in _TIFF_ALPHA_EXTRASAMPLES
            height, width = shape[axes.index("Y")], shape[axes.index("X")]
            _check_pixels(path, height, width, channels, dtype, max_pixels)
            frames.append(_Frame(index, height, width, channels, dtype, alpha,
                                 _orientation(page.tags.valueof(274)), page.tags.valueof(_TIFF_ICC_PROFILE)))
    return count, frames


# TIFF Photometric values (tifffile.PHOTOMETRIC), named here so that headers need no tifffile enum.
_MINISWHITE, _MINISBLACK, _RGB, _PALETTE, _SEPARATED, _YCBCR = 0, 1, 2, 3, 5, 6
_JPEG_COMPRESSIONS = (6, 7)  # old- and new-style JPEG: the codec hands back RGB
_TIFF_ICC_PROFILE = 34675  # the InterColorProfile tag


def _tiff_shown(page, stored: int) -> tuple[int, np.dtype]:
    """The channels and dtype a TIFF page displays as, from its stored samples (as Pillow shows
    it): a palette as 8-bit RGB, CMYK as RGB (extra samples kept), 1-bit as 8-bit 0/255; what normcli
    cannot show is refused from the header."""
    photometric, dtype = int(page.photometric), np.dtype(page.dtype)
    integer = dtype.kind in "ub"
    if photometric == _YCBCR and int(page.compression) in _JPEG_COMPRESSIONS:
        photometric = _RGB
    if photometric == _PALETTE and stored == 1 and integer:
        return 3, np.dtype(np.uint8)
    if photometric == _SEPARATED and stored >= 4 and integer and page.tags.valueof(332) in (None, 1):
        return stored - 1, dtype
    if photometric == _YCBCR and stored == 3 and dtype == np.uint8:
        return 3, dtype
    if photometric == _MINISWHITE and integer or photometric in (_MINISBLACK, _RGB):
        return stored, np.dtype(np.uint8) if dtype == bool else dtype
    kind = {_MINISWHITE: "floating-point MinIsWhite", _SEPARATED: "non-CMYK or floating-point separated",
            _PALETTE: "floating-point palette", _YCBCR: "16-bit or subsampled YCbCr"}.get(
        photometric, f"photometric {photometric}")
    raise ValueError(f"a {kind} TIFF, which normcli cannot show as displayed; convert it to gray or RGB")


def _tiff_display(page, image: np.ndarray) -> np.ndarray:
    """A TIFF page's stored (H, W, samples) as displayed, by the rules of _tiff_shown: a palette
    through its colour map (16-bit entries to 8 bits as Pillow, // 256), MinIsWhite inverted,
    CMYK to RGB as Pillow converts it, YCbCr through Pillow's conversion."""
    photometric = int(page.photometric)
    if photometric == _YCBCR and int(page.compression) in _JPEG_COMPRESSIONS:
        return image
    if photometric == _PALETTE:
        colours = (np.asarray(page.colormap, np.uint16).reshape(3, -1).T // 256).astype(np.uint8)
        return colours[image[..., 0]]
    if photometric == _MINISWHITE:
        white = True if image.dtype == bool else (1 << int(page.bitspersample)) - 1
        image = image.copy()
        image[..., 0] = white - image[..., 0] if image.dtype != bool else ~image[..., 0]
    elif photometric == _SEPARATED:
        image = np.concatenate([cmyk_to_rgb(image[..., :4]), image[..., 4:]], axis=-1)
    elif photometric == _YCBCR:
        return np.asarray(_pillow().fromarray(image, "YCbCr").convert("RGB"))
    return image.astype(np.uint8) * 255 if image.dtype == bool else image


def cmyk_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    """(..., 4) CMYK ink to (..., 3) RGB in the same integer dtype, as Pillow's convert('RGB'):
    each colour (max − ink)(max − K) / max, rounded (no ties: max is odd), in exact integers."""
    top = np.iinfo(cmyk.dtype).max
    ink = cmyk.astype(np.int64)
    paper = top - ink[..., 3:]
    return ((2 * (top - ink[..., :3]) * paper + top) // (2 * top)).astype(cmyk.dtype)


def _pillow_frames(path: Path, max_pixels: int, every: bool) -> tuple[int, list[_Frame]]:
    """How many frames Pillow sees in the file, and the first (`every`: each) of them."""
    from normcli.png16 import png16_channels

    Image = _pillow()
    with Image.open(path) as im:
        channels16 = png16_channels(path) if im.format == "PNG" else None
        channels, dtype = (channels16, np.dtype(np.uint16)) if channels16 else _pil_channels_dtype(im)
        _check_pixels(path, im.height, im.width, channels, dtype, max_pixels)  # before any frame is decoded
        # A PNG's EXIF after its pixels would need them decoded (Pillow's getexif loads them): only
        # an eXIf chunk before the pixels counts, as in most files.
        exif = im.getexif() if im.format != "PNG" or "exif" in im.info else {}
        orientation = _orientation(exif.get(EXIF_ORIENTATION))
        # A camera's MPO .jpg holds previews or depth after the photo: its other images are not frames.
        count = 1 if im.format == "MPO" else getattr(im, "n_frames", 1)
        if channels16 and count > 1:
            raise InputError("an animated 16-bit colour PNG; normcli reads 16-bit colour PNGs as stills only",
                             str(path))
        frames = []
        for index in range(count if every else 1):
            if index:
                im.seek(index)  # a GIF's later frames may change mode (P, then RGB or RGBA)
                channels, dtype = _pil_channels_dtype(im)
            alpha = im.mode in ("LA", "RGBA", "PA") or (im.mode == "P" and channels == 4) or channels16 in (2, 4)
            frames.append(_Frame(index, im.height, im.width, channels, dtype, alpha, orientation,
                                 im.info.get("icc_profile") or None, _gil_free_decoder(im) if count == 1 else None))
    return count, frames


# Pillow's raw modes (what the file stores) that an imagecodecs decoder hands back as Pillow does.
_GIL_FREE_RAWMODES = {"JPEG": ("jpeg", ("L", "RGB")), "PNG": ("png", ("L", "RGB", "RGBA"))}


def _gil_free_decoder(im) -> str | None:
    """Which imagecodecs decoder gives exactly Pillow's pixels of a one-frame file, if any: "jpeg"
    (libjpeg-turbo with the settings Pillow's decoder uses: the accurate integer IDCT, fancy
    upsampling, YCbCr to RGB by the library) for 8-bit gray and YCbCr/RGB JPEGs, not CMYK or a
    camera's MPO; "png" (libspng, no transform asked) for 8-bit gray, RGB and RGBA PNGs, not a
    palette, gray+alpha, low or 16-bit depths. Both let go of the GIL while they decode, where
    Pillow's file parsing and load loop hold it: threads decode on every core."""
    decoder, rawmodes = _GIL_FREE_RAWMODES.get(im.format, (None, ()))
    if decoder is None or len(im.tile) != 1:
        return None
    args = im.tile[0][3]  # Pillow's tile: (decoder, extent, offset, args), args the raw mode first
    return decoder if (args[0] if isinstance(args, tuple) else args) in rawmodes else None


def _pillow():
    """PIL.Image, with its own decompression-bomb check off: normcli checks --max-pixels itself,
    for every decoder alike, before decoding."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    return Image


_READ_WHOLE = 32 << 20  # bytes: a still image file up to this size is read into memory before decoding


def _open_still(path: Path):
    """Pillow's image of a file to decode whole. A file of up to _READ_WHOLE bytes is read in one
    call first: Pillow then parses and decodes from memory, where each of its small reads of the
    file let go of the GIL and took it back (decoding and counting 2,000 JPEGs on 2 threads:
    0.83 s -> 0.65 s; about 5% of `stats DIR`)."""
    Image = _pillow()
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size <= _READ_WHOLE:
            return Image.open(io.BytesIO(f.read()))
    return Image.open(path)


def _orientation(value) -> int:
    """An orientation tag's value, 1 to 8; missing, 0 or junk: 1 (as stored), as Pillow and ImageMagick read it."""
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


# Pillow mode -> (channels, dtype) as normcli decodes it.
_PIL_MODES = {
    "1": (1, np.uint8), "L": (1, np.uint8), "LA": (2, np.uint8), "RGB": (3, np.uint8),
    "RGBA": (4, np.uint8), "CMYK": (3, np.uint8), "YCbCr": (3, np.uint8), "PA": (4, np.uint8),
    "I;16": (1, np.uint16), "I;16L": (1, np.uint16), "I;16B": (1, np.uint16),
    "I": (1, np.int32), "F": (1, np.float32),
}


def _pil_channels_dtype(im):
    if im.mode == "P":
        return (4 if "transparency" in im.info else 3), np.dtype(np.uint8)
    if im.mode not in _PIL_MODES:
        raise InputError(f"unsupported image mode {im.mode}")
    channels, dtype = _PIL_MODES[im.mode]
    return channels, np.dtype(dtype)


def decode(header: ImageHeader) -> np.ndarray:
    """One sample as (H, W, C) in its own dtype, as displayed; 16-bit stays 16-bit."""
    path = header.path
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages[header.page]
                image, axes = page.asarray(), page.axes
                if "S" in axes and axes.index("S") < axes.index("Y"):
                    image = np.moveaxis(image, axes.index("S"), -1)
                image = _tiff_display(page, image.reshape(image.shape[0], image.shape[1], -1))
        elif header.dtype == np.uint16 and header.channels > 1:
            from normcli import png16

            image = png16.read_png16(path)
        elif header.frame is not None:
            image = _frame_reader(path).frame(header.page)
        else:
            image = _gil_free_decode(header)
            if image is None:
                with _open_still(path) as im:
                    image = _pillow_array(im)
    except Exception as exc:
        raise InputError(f"cannot decode image: {exc}", str(path)) from None
    image = orient(image.reshape(image.shape[0], image.shape[1], -1), header.orientation)
    if image.shape != (header.height, header.width, header.channels):
        raise InputError("image changed size while being read", str(path))
    return image


def can_count_values(header: ImageHeader) -> bool:
    """Whether image_value_counts() can count this sample: an 8-bit still that Pillow decodes."""
    return (header.dtype == np.uint8 and header.frame is None
            and header.path.suffix.lower() not in (".tif", ".tiff"))


def image_value_counts(header: ImageHeader) -> np.ndarray:
    """How often each value occurs in each channel of the image decode() gives (can_count_values()
    samples only), shaped (channels, 256): Pillow counts its decoded bands in C, with no array made
    (the orientation moves pixels, not values)."""
    try:
        image = _gil_free_decode(header)
        if image is not None:
            counts = value_counts(image, image.shape[-1])
        else:
            with _open_still(header.path) as im:
                im = _promised_mode(im)
                counts = np.array(im.histogram(), np.int64).reshape(-1, 256)
    except Exception as exc:
        raise InputError(f"cannot decode image: {exc}", str(header.path)) from None
    if counts.shape[0] != header.channels or (counts.sum(axis=1) != header.height * header.width).any():
        raise InputError("image changed size while being read", str(header.path))
    return counts


@functools.cache
def _imagecodecs_decoders() -> dict:
    """{decoder name: imagecodecs function} for those this imagecodecs build has."""
    try:
        import imagecodecs
    except ImportError:
        return {}
    decoders = {  # data, channels -> array; the JPEG's output colours asked as Pillow asks them
        "jpeg": (imagecodecs.JPEG8, lambda data, channels: imagecodecs.jpeg8_decode(
            data, outcolorspace="GRAY" if channels == 1 else "RGB")),
        "png": (imagecodecs.SPNG, lambda data, channels: imagecodecs.spng_decode(data))}
    return {name: decode for name, (codec, decode) in decoders.items() if codec.available}


def _gil_free_decode(header: ImageHeader) -> np.ndarray | None:
    """A header.decoder still as stored (H, W, C), decoded by imagecodecs; None where Pillow is to
    decode it instead, with Pillow's own pixels or error: no decoder, a missing codec, a file that
    _pillow_would_decode_alike does not vouch for, or one the codec refuses."""
    decode = _imagecodecs_decoders().get(header.decoder) if header.decoder else None
    if decode is None:
        return None
    with open(header.path, "rb") as f:
        data = f.read()
    if not _pillow_would_decode_alike(header.decoder, data):
        return None
    try:
        image = decode(data, header.channels)
    except Exception:  # noqa: BLE001 (whatever the codec refuses, Pillow decides: its pixels or its error)
        return None
    return image.reshape(image.shape[0], image.shape[1], -1)


_JPEG_EOI = b"\xff\xd9"
_PNG_IEND = b"IEND\xaeB`\x82"  # the IEND chunk's type and its (constant) CRC
_JPEG_HUFFMAN_FRAMES = (0xC0, 0xC1, 0xC2)  # SOF0-2: baseline, extended and progressive Huffman-coded DCT


def _pillow_would_decode_alike(decoder: str, data: bytes) -> bool:
    """Whether a file, whole in `data`, is one that Pillow decodes without error to the pixels the
    imagecodecs decoder gives. A file cut short is not: Pillow calls it truncated, where libjpeg-turbo
    fills it in gray with a warning and libspng needs nothing after the pixels, so the file must end
    in its end marker (an EOI; a whole IEND chunk). Nor is an arithmetic-coded or lossless JPEG:
    Pillow feeds libjpeg-turbo in pieces, which its arithmetic decoder cannot resume from (Pillow
    fails on any such file past one piece), so only Huffman-coded DCT frames are vouched for."""
    if decoder == "png":
        return data.endswith(_PNG_IEND)
    return data.endswith(_JPEG_EOI) and _jpeg_frame_marker(data) in _JPEG_HUFFMAN_FRAMES


def _jpeg_frame_marker(data: bytes) -> int | None:
    """The SOFn marker (0xC0-0xCF, but DHT, JPG and DAC) of a JPEG's frame, found by walking its
    marker segments from the start (an EXIF thumbnail's own markers sit inside a segment)."""
    pos = 2  # past SOI
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte
            pos += 1
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return marker
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def _promised_mode(im):
    """The current frame of a Pillow image in the channels its header promised (_pil_channels_dtype)."""
    if im.mode == "P":
        return im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("1", "CMYK", "YCbCr", "PA"):
        return im.convert({"1": "L", "PA": "RGBA"}.get(im.mode, "RGB"))
    return im


def _pillow_array(im) -> np.ndarray:
    """The current frame of a Pillow image as an array, in the channels its header promised."""
    image = np.asarray(_promised_mode(im))
    return image.astype(image.dtype.newbyteorder("=")) if image.dtype.byteorder not in "=|" else image


class _FrameReader:
    """One multi-frame file (GIF, APNG, WebP) held open and read forward. Pillow builds each frame
    on the ones before it, so seeking to frame k from a fresh open costs k frames: read in order,
    each frame costs one. Frames passed on the way to a later one (the threads ask slightly out of
    order) are kept, up to a few, until asked for."""

    KEPT = 16

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        self.image = None
        self.given = False  # whether the current frame was handed out already
        self.passed: dict[int, np.ndarray] = {}

    def frame(self, index: int) -> np.ndarray:
        with self.lock:
            if index in self.passed:
                return self.passed.pop(index)
            if self.image is None or self.image.tell() > index:
                self.close()
                self.image = _pillow().open(self.path)
                self.given = False
            while self.image.tell() < index:
                if not self.given and len(self.passed) < self.KEPT:
                    self.passed[self.image.tell()] = _pillow_array(self.image)
                self.image.seek(self.image.tell() + 1)
                self.given = False
            self.given = True
            return _pillow_array(self.image)

    def close(self) -> None:
        if self.image is not None:
            self.image.close()
            self.image = None
        self.passed.clear()


_READERS: OrderedDict[tuple, _FrameReader] = OrderedDict()  # the files being read, most recent last
_READERS_LOCK = threading.Lock()
_OPEN_READERS = 4


def _frame_reader(path: Path) -> _FrameReader:
    """The reader of `path` as it is now on disk (a rewritten file gets a new one)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    with _READERS_LOCK:
        reader = _READERS.pop(key, None) or _FrameReader(path)
        _READERS[key] = reader
        while len(_READERS) > _OPEN_READERS:
            _READERS.popitem(last=False)[1].close()
    return reader


def close_frame_readers() -> None:
    """Close the multi-frame files held open for reading (a reader asked again opens its file again)."""
    with _READERS_LOCK:
        readers = list(_READERS.values())
        _READERS.clear()
    for reader in readers:
        with reader.lock:
            reader.close()


def orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """An (H, W, C) image as stored -> as displayed, for EXIF orientation 1 to 8 (as
    ImageOps.exif_transpose and ImageMagick's -auto-orient)."""
    if orientation in (5, 6, 7, 8):
        image = image.transpose(1, 0, 2)  # 5 is the transpose; 6, 7, 8 are it followed by a flip
    flips = {2: (1,), 3: (0, 1), 4: (0,), 6: (1,), 7: (0, 1), 8: (0,)}.get(orientation, ())
    return np.ascontiguousarray(np.flip(image, flips)) if flips else image


# ITU-R 601-2 luma in Pillow's fixed point: weights in 1/65536, sum 65536, +0.5 before the shift.
_LUMA_WEIGHTS = (19595, 38470, 7471)
_LUMA_HALF, _LUMA_SHIFT = 1 << 15, 16


def luma(color: np.ndarray) -> np.ndarray:
    """Gray of (..., 3) RGB values, in their dtype: integers exactly as Pillow's convert('L')
    (R·19595 + G·38470 + B·7471 + 32768) >> 16, also for 16 bits; floats 0.299 R + 0.587 G + 0.114 B
    in float64, unrounded, added in that order (not by BLAS, whose kernels round differently on
    different processors)."""
    if color.dtype.kind in "ui":
        weighted = color.astype(np.int64) @ np.array(_LUMA_WEIGHTS, dtype=np.int64)
        return ((weighted + _LUMA_HALF) >> _LUMA_SHIFT).astype(color.dtype)
    rgb = color.astype(np.float64)
    return (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114).astype(color.dtype)


def convert_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Gray/gray+alpha/RGB/RGBA (H, W, C) to 1, 3 or 4 channels, keeping the dtype.

    Gray is `luma` of the colour channels (alpha dropped); alpha added is opaque.
    """
    have = image.shape[-1]
    if have == channels:
        return image
    color = image[..., :3] if have >= 3 else np.repeat(image[..., :1], 3, axis=-1)
    alpha = image[..., -1:] if have in (2, 4) else None
    if channels == 1:
        if have <= 2:
            return image[..., :1]
        return luma(color)[..., None]
    if channels == 3:
        return np.ascontiguousarray(color)
    if alpha is None:
        opaque = np.iinfo(image.dtype).max if image.dtype.kind in "ui" else 1
        alpha = np.full(image.shape[:2] + (1,), opaque, dtype=image.dtype)
    return np.concatenate([color, alpha], axis=-1)


def output_name(name: str, ext: str) -> str:
    """A sample's file in an output folder, from its name: the suffix becomes `ext`'s unless it
    already names that type (`.tif` and `.TIFF` stay), and a frame `anim.gif#03` becomes `anim_03.png`."""
    path, _, frame = name.rpartition("#")
    if not (frame.isdigit() and Path(path).suffix.lower() in IMAGE_EXTENSIONS):  # not a frame: `a#1.png`
        path, frame = name, ""
    stem, suffix = Path(path).with_suffix(""), Path(path).suffix
    if frame:
        return f"{stem.as_posix()}_{frame}.{ext}"
    same_type = suffix.lower() in ((".tif", ".tiff") if ext == "tiff" else (f".{ext}",))
    return f"{stem.as_posix()}{suffix if same_type else '.' + ext}"


def write_image(path, image: np.ndarray, ext: str, *, alpha: bool = False, icc: bytes | None = None) -> None:
    """Encode one (H, W, C) image as `ext` (png or tiff) in its own dtype, with no orientation tag
    (the pixels are already as displayed) and the ICC profile `icc` where it describes these
    channels (_profile_fits). `alpha`: the last channel is alpha (a PNG's 2 and 4 channels always
    are); TIFF says which, where tifffile alone would call any 4th channel alpha."""
    channels = image.shape[-1]
    icc = icc if _profile_fits(icc, channels) else None
    if ext == "tiff":
        import tifffile

        # channels said explicitly: tifffile would store 2 or 5+ channels as H pages
        tifffile.imwrite(path, image[..., 0] if channels == 1 else image,
                         photometric="rgb" if channels in (3, 4) else "minisblack",
                         planarconfig="contig" if channels > 1 else None,
                         extrasamples=(["unassalpha"] if alpha and channels in (2, 4)
                                       else ["unspecified"] if channels == 4 else None),
                         iccprofile=icc)
    elif image.dtype == np.uint16 and channels > 1:
        from normcli.png16 import write_png16

        write_png16(path, image, icc=icc)
    else:
        import imageio.v3 as iio

        iio.imwrite(path, image[..., 0] if channels == 1 else image, extension=".png",
                    **({"icc_profile": icc} if icc else {}))


def _profile_fits(icc: bytes | None, channels: int) -> bool:
    """Whether an ICC profile's colour space (header bytes 16-20) is these channels' own: gray for
    1-2, RGB for 3-4. A profile of what was converted away (CMYK, RGB made gray by --mode) is dropped."""
    return bool(icc) and icc[16:20] == (b"GRAY" if channels <= 2 else b"RGB ")
