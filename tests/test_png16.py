"""Tests for normcli.png16, the numpy-only 16-bit PNG codec."""

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from normcli.png16 import png16_channels, read_png16, write_png16

COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type
# tmp_path is shared across hypothesis examples; each example simply overwrites its file.
FILE_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# ------------------------------------------------------- test-only reference encoder


def paeth_predictor(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def reference_filter(filter_type, row, prior, bpp):
    """Pure-Python PNG filter of one row (lists of ints), straight from the spec."""
    out = []
    for i, x in enumerate(row):
        a = row[i - bpp] if i >= bpp else 0
        b = prior[i]
        c = prior[i - bpp] if i >= bpp else 0
        predictor = [0, a, b, (a + b) // 2, paeth_predictor(a, b, c)][filter_type]
        out.append((x - predictor) % 256)
    return out


def chunk(name, body):
    return struct.pack(">I", len(body)) + name + body + struct.pack(">I", zlib.crc32(name + body))


# Adam7, from the PNG spec: (first column, first row, column step, row step) of each pass.
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def filtered_rows(image, filters):
    """The filtered scanlines of an (h, w, c) uint16 image whose row y uses filters[y % len(filters)]."""
    height, width, channels = image.shape
    bpp = 2 * channels
    rows = image.astype(">u2").view(np.uint8).reshape(height, width * bpp).tolist()
    prior, raw = [0] * (width * bpp), bytearray()
    for y, row in enumerate(rows):
        raw.append(filters[y % len(filters)])
        raw += bytes(reference_filter(filters[y % len(filters)], row, prior, bpp))
        prior = row
    return bytes(raw)


def encode_with_filters(image, filters, idat_pieces=3, interlace=0, colour_type=None, depth=16):
    """Build a PNG whose row y uses filters[y] (in each Adam7 pass when interlaced: an empty pass
    has no rows), with the zlib stream split over several IDAT chunks."""
    image = image if image.ndim == 3 else image[:, :, None]
    height, width, channels = image.shape
    passes = ADAM7 if interlace else ((0, 0, 1, 1),)
    stream = zlib.compress(b"".join(filtered_rows(image[y0::dy, x0::dx], filters) for x0, y0, dx, dy in passes
                                    if image[y0::dy, x0::dx].size))
    cuts = np.linspace(0, len(stream), idat_pieces + 1).astype(int)
    colour_type = COLOUR_TYPE[channels] if colour_type is None else colour_type
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, interlace)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"tEXt", b"Comment\x00ignored ancillary chunk")
        + b"".join(chunk(b"IDAT", stream[lo:hi]) for lo, hi in zip(cuts[:-1], cuts[1:]))
        + chunk(b"IEND", b"")
    )


def random_image(rng, height, width, channels):
    shape = (height, width) if channels == 0 else (height, width, channels)  # 0 means plain 2-D gray
    return rng.integers(0, 65536, shape, dtype=np.uint16)


def squeeze_gray(image):
    return image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("channels", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("height,width", [(1, 1), (1, 13), (13, 1), (7, 9), (300, 5)])
def test_round_trip_every_channel_count_and_odd_sizes(tmp_path, channels, height, width):
    image = random_image(np.random.default_rng(height * width + channels), height, width, channels)
    path = tmp_path / "img.png"
    write_png16(path, image)
    decoded = read_png16(path)
    assert decoded.dtype == np.uint16 and decoded.dtype.isnative
    np.testing.assert_array_equal(decoded, squeeze_gray(image))
    assert png16_channels(path) is not None


@FILE_SETTINGS
@given(
    height=st.integers(1, 12),
    width=st.integers(1, 12),
    channels=st.integers(0, 4),
    seed=st.integers(0, 2**32 - 1),
    smooth=st.booleans(),
)
def test_round_trip_random(tmp_path, height, width, channels, seed, smooth):
    rng = np.random.default_rng(seed)
    image = random_image(rng, height, width, channels)
    if smooth:  # smooth data makes the writer's heuristic pick Sub/Up/Average/Paeth, not just None
        image = np.cumsum(image // 4096, axis=1, dtype=np.uint16)
    write_png16(tmp_path / "img.png", image)
    np.testing.assert_array_equal(read_png16(tmp_path / "img.png"), squeeze_gray(image))


def test_write_to_binary_file_object(tmp_path):
    image = random_image(np.random.default_rng(0), 4, 6, 3)
    buffer = io.BytesIO()
    write_png16(buffer, image)
    (tmp_path / "img.png").write_bytes(buffer.getvalue())
    np.testing.assert_array_equal(read_png16(tmp_path / "img.png"), image)


def test_writer_compresses_smooth_image(tmp_path):
    y, x = np.mgrid[0:64, 0:64]
    image = np.stack([x * 900 + y * 40, y * 1000, (x * y * 16) % 65536], -1).astype(np.uint16)
    path = tmp_path / "smooth.png"
    write_png16(path, image)
    np.testing.assert_array_equal(read_png16(path), image)
    assert len(path.read_bytes()) < image.nbytes // 4  # filtering pays off on smooth data


# ------------------------------------------------------------ each filter type


@pytest.mark.parametrize("filter_type", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_decodes_each_filter_type(tmp_path, filter_type, channels):
    image = random_image(np.random.default_rng(filter_type * 10 + channels), 6, 5, channels)
    path = tmp_path / "filtered.png"
    path.write_bytes(encode_with_filters(image, [filter_type] * 6))
    np.testing.assert_array_equal(read_png16(path), squeeze_gray(image))


@FILE_SETTINGS
@given(
    data=st.data(),
    height=st.integers(1, 10),
    width=st.integers(1, 10),
    channels=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_decodes_mixed_per_row_filters(tmp_path, data, height, width, channels, seed):
    image = random_image(np.random.default_rng(seed), height, width, channels)
    filters = data.draw(st.lists(st.integers(0, 4), min_size=height, max_size=height))
    path = tmp_path / "mixed.png"
    path.write_bytes(encode_with_filters(image, filters, idat_pieces=data.draw(st.integers(1, 4))))
    np.testing.assert_array_equal(read_png16(path), squeeze_gray(image))


def test_paeth_rgb_256_decodes(tmp_path):
    image = random_image(np.random.default_rng(5), 256, 256, 3)
    path = tmp_path / "paeth.png"
    path.write_bytes(encode_with_filters(image, [4] * 256))
    np.testing.assert_array_equal(read_png16(path), image)


# ------------------------------------------------------------ Pillow interop


@pytest.mark.parametrize("height,width", [(1, 1), (1, 17), (17, 1), (40, 33)])
def test_reads_pillow_gray16(tmp_path, height, width):
    rng = np.random.default_rng(height + width)
    path = tmp_path / "pillow.png"
    for image in (random_image(rng, height, width, 0), np.cumsum(rng.integers(0, 300, (height, width)), 1).astype(np.uint16)):
        Image.fromarray(image).save(path)  # smooth second image makes Pillow use non-None filters
        assert png16_channels(path) is not None
        np.testing.assert_array_equal(read_png16(path), image)


@pytest.mark.parametrize("height,width", [(1, 1), (1, 17), (17, 1), (40, 33)])
def test_pillow_reads_our_gray16(tmp_path, height, width):
    image = random_image(np.random.default_rng(height * width), height, width, 0)
    path = tmp_path / "ours.png"
    write_png16(path, image)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), image)


def test_pillow_reads_our_rgb16_as_high_bytes(tmp_path):
    # Pillow downconverts 16-bit colour to 8 bits, but decoding at all shows the file is valid PNG.
    image = random_image(np.random.default_rng(9), 20, 30, 3)
    path = tmp_path / "rgb.png"
    write_png16(path, image)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), (image >> 8).astype(np.uint8))


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_png16_channels_none_for_8bit_pillow_png(tmp_path, mode):
    path = tmp_path / "eight.png"
    Image.new(mode, (5, 4)).save(path)
    assert png16_channels(path) is None
    with pytest.raises(ValueError, match="bit depth 8"):
        read_png16(path)


def test_png16_channels_none_for_non_png(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"not an image")
    assert png16_channels(path) is None


# ---------------------------------------------------------------------- errors


def valid_png_bytes():
    buffer = io.BytesIO()
    write_png16(buffer, random_image(np.random.default_rng(3), 8, 8, 3))
    return buffer.getvalue()


@pytest.mark.parametrize("keep", [0, 5, 20, 33, 40, -20, -12, -1])
def test_truncated_file_raises(tmp_path, keep):
    data = valid_png_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[:keep])
    with pytest.raises(ValueError, match="truncated|not a PNG"):
        read_png16(path)


def test_bad_crc_raises(tmp_path):
    data = bytearray(valid_png_bytes())
    data[45] ^= 0xFF  # inside the first IDAT body
    path = tmp_path / "corrupt.png"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="CRC mismatch in IDAT"):
        read_png16(path)


@FILE_SETTINGS
@given(height=st.integers(1, 19), width=st.integers(1, 19), channels=st.sampled_from([0, 1, 2, 3, 4]),
       filters=st.lists(st.integers(0, 4), min_size=1, max_size=6), seed=st.integers(0, 2**32 - 1))
def test_interlaced_decodes_every_pass_and_filter(tmp_path, height, width, channels, filters, seed):
    """Adam7 files built from the spec (sizes where passes are empty included), checked against the
    image they were built from and against libpng's reading of the same bytes (imagecodecs)."""
    import imagecodecs

    image = random_image(np.random.default_rng(seed), height, width, channels)
    data = encode_with_filters(image, filters, interlace=1)
    path = tmp_path / "interlaced.png"
    path.write_bytes(data)
    np.testing.assert_array_equal(read_png16(path), squeeze_gray(image))
    np.testing.assert_array_equal(imagecodecs.png_decode(data), squeeze_gray(image))


def test_interlaced_files_pypng_makes_read(tmp_path):
    """pypng's interlaced 16-bit colour PNGs, where pypng is installed."""
    png = pytest.importorskip("png")
    image = random_image(np.random.default_rng(1), 37, 53, 3)
    with open(tmp_path / "pypng.png", "wb") as f:
        png.Writer(53, 37, greyscale=False, bitdepth=16, interlace=True).write(f, image.reshape(37, -1))
    np.testing.assert_array_equal(read_png16(tmp_path / "pypng.png"), image)


def test_interlaced_files_imagemagick_makes_read(tmp_path):
    """ImageMagick's interlaced 16-bit colour PNGs (adaptive filters), where it is installed."""
    import subprocess

    from test_images import IMAGEMAGICK

    if not IMAGEMAGICK:
        pytest.skip("ImageMagick is not installed")
    image = random_image(np.random.default_rng(1), 37, 53, 4)
    write_png16(tmp_path / "plain.png", image)
    subprocess.run([IMAGEMAGICK, str(tmp_path / "plain.png"), "-interlace", "PNG", f"png64:{tmp_path / 'im.png'}"],
                   check=True)
    assert (tmp_path / "im.png").read_bytes()[28] == 1  # IHDR says Adam7
    np.testing.assert_array_equal(read_png16(tmp_path / "im.png"), image)


def test_unsupported_colour_type_raises(tmp_path):
    path = tmp_path / "palette16.png"
    path.write_bytes(encode_with_filters(random_image(np.random.default_rng(0), 4, 4, 1), [0] * 4, colour_type=3))
    with pytest.raises(ValueError, match="unsupported PNG colour type 3"):
        read_png16(path)


def test_error_message_is_one_line_with_path(tmp_path):
    path = tmp_path / "cut.png"
    path.write_bytes(valid_png_bytes()[:-30])
    with pytest.raises(ValueError) as info:
        read_png16(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "image,error",
    [
        (np.zeros((2, 2), np.uint8), TypeError),
        (np.zeros((2, 2, 5), np.uint16), ValueError),
        (np.zeros((0, 3), np.uint16), ValueError),
        (np.zeros(4, np.uint16), ValueError),
    ],
)
def test_write_rejects_bad_input(image, error):
    with pytest.raises(error):
        write_png16(io.BytesIO(), image)
