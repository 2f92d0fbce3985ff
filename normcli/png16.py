"""Minimal 16-bit PNG codec: Pillow 13 cannot write 16-bit RGB/RGBA PNGs and reads them as 8-bit."""

from __future__ import annotations

import struct
import zlib

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS_BY_COLOUR_TYPE = {0: 1, 2: 3, 4: 2, 6: 4}  # gray, RGB, gray+alpha, RGBA
COLOUR_TYPE_BY_CHANNELS = {c: t for t, c in CHANNELS_BY_COLOUR_TYPE.items()}
IDAT_CHUNK_SIZE = 1 << 20  # split compressed data so no chunk nears the 2**31 length limit
ROWS_PER_BLOCK = 256  # the writer filters in row blocks to bound temporary memory


def png16_channels(path) -> int | None:
    """The channel count of a 16-bit PNG, None for any other file (reads only signature + IHDR)."""
    with open(path, "rb") as f:
        head = f.read(33)
    if len(head) == 33 and head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR" and head[24] == 16:
        return CHANNELS_BY_COLOUR_TYPE.get(head[25])
    return None


def read_png16(path) -> np.ndarray:
    """Decode a 16-bit PNG (colour types 0 gray, 2 RGB, 4 gray+alpha, 6 RGBA), plain or interlaced (Adam7),
    to a native-endian uint16 array shaped (H, W) for gray or (H, W, C) otherwise. Handles multiple IDAT
    chunks and all five filter types (None, Sub, Up, Average, Paeth). Raises ValueError with a clear
    one-line message for a bad CRC/truncated file or an unsupported colour type."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return _decode(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def write_png16(path_or_file, image: np.ndarray, *, icc: bytes | None = None) -> None:
    """Encode a uint16 array (H, W), (H, W, 1), (H, W, 2), (H, W, 3) or (H, W, 4) as a 16-bit PNG (filter type 0 or a cheap per-row choice, zlib level 6), with the ICC profile `icc` in an iCCP chunk if given. Accepts a path or a binary file object."""
    png = _encode(image, icc)
    if hasattr(path_or_file, "write"):
        path_or_file.write(png)
    else:
        with open(path_or_file, "wb") as f:
            f.write(png)


# ---------------------------------------------------------------- decoding


def _decode(data: bytes) -> np.ndarray:
    if data[:8] != PNG_SIGNATURE:
        raise ValueError("not a PNG file")
    header, idat = _read_chunks(data)
    width, height, depth, colour_type, compression, filter_method, interlace = header
    if depth != 16:
        raise ValueError(f"not a 16-bit PNG (bit depth {depth})")
    if colour_type not in CHANNELS_BY_COLOUR_TYPE:
        raise ValueError(f"unsupported PNG colour type {colour_type} (expected 0, 2, 4 or 6)")
    if compression != 0 or filter_method != 0 or interlace not in (0, 1) or width == 0 or height == 0:
        raise ValueError("invalid PNG header")

    channels = CHANNELS_BY_COLOUR_TYPE[colour_type]
    bpp = 2 * channels  # bytes per pixel: the filters' left-neighbour distance
    passes = ADAM7_PASSES if interlace else ((0, 0, 1, 1),)
    sizes = [(_pass_length(height, y0, dy), _pass_length(width, x0, dx)) for x0, y0, dx, dy in passes]
    expected = sum(rows * (cols * bpp + 1) for rows, cols in sizes if cols)  # each row starts with its filter type
    try:
        # max_length bounds memory against a zlib bomb; extra trailing data is ignored, like libpng does
        raw = zlib.decompressobj().decompress(idat, expected)
    except zlib.error as exc:
        raise ValueError(f"corrupt image data ({exc})") from None
    if len(raw) < expected:
        raise ValueError("truncated image data")

    image = np.empty((height, width, channels), np.uint16)
    offset = 0
    for (x0, y0, dx, dy), (rows, cols) in zip(passes, sizes):
        if not rows or not cols:  # an empty pass has no rows, not even filter bytes
            continue
        length = rows * (cols * bpp + 1)
        filtered = np.frombuffer(raw, np.uint8, length, offset).reshape(rows, cols * bpp + 1)
        image[y0::dy, x0::dx] = _unfilter(filtered, bpp).view(">u2").reshape(rows, cols, channels)
        offset += length
    return image[:, :, 0] if channels == 1 else image


# Adam7's seven passes as (first column, first row, column step, row step).
ADAM7_PASSES = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _pass_length(size: int, first: int, step: int) -> int:
    """How many of `size` rows (or columns) an interlace pass holds."""
    return max(0, -(-(size - first) // step))


def _read_chunks(data: bytes):
    """Walk the chunk list, checking lengths and CRCs; return (IHDR fields, concatenated IDAT data)."""
    header, idat, pos = None, [], 8
    while True:
        if pos + 8 > len(data):
            raise ValueError("truncated file (no IEND chunk)")
        length, name = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        crc = data[pos + 8 + length : pos + 12 + length]
        if len(crc) != 4:
            raise ValueError(f"truncated file (inside {name.decode('latin-1')} chunk)")
        if zlib.crc32(name + body) != struct.unpack(">I", crc)[0]:
            raise ValueError(f"CRC mismatch in {name.decode('latin-1')} chunk (corrupt file)")
        pos += 12 + length
        if header is None and name != b"IHDR":
            raise ValueError("first chunk is not IHDR")
        if name == b"IHDR":
            if length != 13:
                raise ValueError("invalid IHDR chunk")
            header = struct.unpack(">IIBBBBB", body)
        elif name == b"IDAT":
            idat.append(body)
        elif name == b"IEND":
            return header, b"".join(idat)
        # other chunks (gAMA, pHYs, a suggested PLTE, ...) do not affect the samples: skip them


def _unfilter(rows: np.ndarray, bpp: int) -> np.ndarray:
    """Undo the per-row filters; rows is (H, 1 + stride) uint8 with the filter type in column 0."""
    out = np.empty((rows.shape[0], rows.shape[1] - 1), np.uint8)
    prior = np.zeros(out.shape[1], np.uint8)  # the row above the first row counts as zeros
    for y, row in enumerate(rows):
        filter_type, filtered = row[0], row[1:]
        if filter_type == 0:  # None
            prior = filtered
        elif filter_type == 1:  # Sub: running sum mod 256 along each byte lane of the pixel
            prior = np.cumsum(filtered.reshape(-1, bpp), axis=0, dtype=np.uint8).ravel()
        elif filter_type == 2:  # Up
            prior = filtered + prior
        elif filter_type == 3:
            prior = _unfilter_average(filtered, prior, bpp)
        elif filter_type == 4:
            prior = _unfilter_paeth(filtered, prior, bpp)
        else:
            raise ValueError(f"invalid filter type {filter_type} in row {y}")
        out[y] = prior
    return out


# Average and Paeth need the already-decoded left neighbour, so each row is a sequential scan. Plain Python
# on lists is faster here than per-pixel numpy calls on tiny arrays; numpy does the parts that use only
# the row above.


def _unfilter_average(filtered: np.ndarray, prior: np.ndarray, bpp: int) -> np.ndarray:
    out = [0] * bpp + filtered.tolist()  # leading zeros stand in for the pixel left of column 0
    for i, up in enumerate(prior.tolist()):
        out[i + bpp] = (out[i + bpp] + ((out[i] + up) >> 1)) & 255
    return np.array(out[bpp:], np.uint8)


def _unfilter_paeth(filtered: np.ndarray, prior: np.ndarray, bpp: int) -> np.ndarray:
    up = prior.astype(np.int16)
    up_left = np.zeros_like(up)
    up_left[bpp:] = up[:-bpp]
    dist_left = np.abs(up - up_left)  # |p - a| with p = a + b - c does not involve a
    out = [0] * bpp + filtered.tolist()
    for i, (b, c, pa) in enumerate(zip(up.tolist(), up_left.tolist(), dist_left.tolist())):
        a = out[i]
        pb, pc = abs(a - c), abs(a + b - 2 * c)
        predictor = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
        out[i + bpp] = (out[i + bpp] + predictor) & 255
    return np.array(out[bpp:], np.uint8)


# ---------------------------------------------------------------- encoding


def _encode(image: np.ndarray, icc: bytes | None = None) -> bytes:
    image = np.asarray(image)
    if image.dtype != np.uint16:
        raise TypeError(f"write_png16 needs a uint16 array, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in COLOUR_TYPE_BY_CHANNELS or 0 in image.shape:
        raise ValueError(f"write_png16 needs a non-empty (H, W) or (H, W, 1..4) array, got shape {image.shape}")
    height, width, channels = image.shape
    bpp = 2 * channels
    rows = np.ascontiguousarray(image, ">u2").view(np.uint8).reshape(height, width * bpp)

    compressor = zlib.compressobj(6)
    compressed = []
    for start in range(0, height, ROWS_PER_BLOCK):
        block = rows[start : start + ROWS_PER_BLOCK]
        above = rows[start - 1 : start + len(block) - 1] if start else np.vstack([np.zeros_like(rows[:1]), block[:-1]])
        compressed.append(compressor.compress(_filter_rows(block, above, bpp).tobytes()))
    compressed.append(compressor.flush())
    idat = b"".join(compressed)

    ihdr = struct.pack(">IIBBBBB", width, height, 16, COLOUR_TYPE_BY_CHANNELS[channels], 0, 0, 0)
    chunks = [_chunk(b"IHDR", ihdr)]
    if icc:  # iCCP: a profile name, its terminating zero, compression method 0 (zlib), the profile
        chunks.append(_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc)))
    chunks += [_chunk(b"IDAT", idat[i : i + IDAT_CHUNK_SIZE]) for i in range(0, len(idat), IDAT_CHUNK_SIZE)]
    chunks.append(_chunk(b"IEND", b""))
    return PNG_SIGNATURE + b"".join(chunks)


def _chunk(name: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + name + body + struct.pack(">I", zlib.crc32(name + body))


def _filter_rows(rows: np.ndarray, above: np.ndarray, bpp: int) -> np.ndarray:
    """Filter each row with whichever of the five filters gives the smallest sum of |signed byte| (the
    usual libpng heuristic). The encoder knows every original byte, so all filters vectorize."""
    left = np.zeros_like(rows)
    left[:, bpp:] = rows[:, :-bpp]
    up_left = np.zeros_like(above)
    up_left[:, bpp:] = above[:, :-bpp]
    a, b, c = (x.astype(np.int16) for x in (left, above, up_left))
    pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
    paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    predictors = [0, a, b, (a + b) >> 1, paeth]
    candidates = np.stack([(rows - p).astype(np.uint8) for p in predictors])  # (5, n, stride), wraps mod 256
    cost = np.minimum(candidates, 256 - candidates.astype(np.int16)).sum(axis=2, dtype=np.int64)
    best = cost.argmin(axis=0)  # (n,) filter type per row
    chosen = candidates[best, np.arange(len(rows))]
    return np.hstack([best.astype(np.uint8)[:, None], chosen])
