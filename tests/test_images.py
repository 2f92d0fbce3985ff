"""Real image files made here with Pillow, imageio and tifffile, read by normcli and checked value by
value against those libraries: EXIF orientation, frames, the pixel limit, alpha, hidden files,
gray conversion, every format; outputs (bit depth, suffix, integer encodings) opened again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image, ImageOps

from conftest import run_cli, write_image
from normcli import images
from normcli.errors import InputError
from normcli.images import DEFAULT_MAX_PIXELS, ReadOptions, binary_size, convert_channels, list_images, orient
from normcli.png16 import read_png16
from normcli.sources import open_dataset

from helpers import read_blocks, take

ORIENTATION = 0x0112


def read(inputs, **kw) -> tuple[list[str], list[np.ndarray], object]:
    """Every sample of `inputs` with its name, one at a time (images may differ in size), every
    channel as decoded (alpha included, not set apart for passing through)."""
    images = ReadOptions(**{"include_alpha": True, **kw.pop("images", {})})
    with open_dataset([str(i) for i in inputs], images=images, **kw) as dataset:
        names = dataset.sample_names()
        samples = [take(dataset, [i])[0] for i in range(dataset.n_samples)]
    return names, samples, dataset


def pillow_hwc(im: Image.Image) -> np.ndarray:
    array = np.asarray(im)
    return array.reshape(array.shape[0], array.shape[1], -1)


def jpeg_with_orientation(path: Path, rgb: np.ndarray, orientation: int | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    Image.fromarray(rgb).save(path, quality=95, exif=exif.tobytes())
    return path


def assert_nearest(written: np.ndarray, numerator: np.ndarray, denominator: int) -> None:
    """Each written integer is a nearest integer to the exact rational numerator / denominator
    (either neighbour at an exact tie, where float evaluation order decides), in exact int64."""
    written, numerator = np.asarray(written).astype(np.int64), np.asarray(numerator).astype(np.int64)
    assert written.shape == numerator.shape
    error = np.abs(2 * written * denominator - 2 * numerator)
    assert (error <= denominator).all(), f"{int((error > denominator).sum())} values off by more than half a step"


def minmax_numerator(x: np.ndarray, low: int, high: int, top: int = 1) -> tuple[np.ndarray, int]:
    """normalize --range low high of integers x, times `top`, as numerator / denominator."""
    x = x.astype(np.int64)
    span = int(x.max() - x.min())
    return ((x - x.min()) * (high - low) + low * span) * top, span


@pytest.fixture
def rgb(rng):
    """A 6×10 RGB image: not square, so a quarter turn shows in the shape."""
    return rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------ EXIF orientation
@pytest.mark.parametrize("orientation", [None, 1, 2, 3, 4, 5, 6, 7, 8])
def test_jpeg_is_read_as_exif_transpose_shows_it(tmp_path, rgb, orientation):
    path = jpeg_with_orientation(tmp_path / "in" / "photo.jpg", rgb, orientation)
    with Image.open(path) as im:
        want = pillow_hwc(ImageOps.exif_transpose(im))
    with open_dataset([str(tmp_path / "in")]) as dataset:
        assert dataset.sample_shape == want.shape  # the header knows the displayed size before decoding
        got = take(dataset, [0])[0]
    np.testing.assert_array_equal(got, want)
    if orientation in (5, 6, 7, 8):
        assert want.shape[:2] == rgb.shape[1::-1]


@pytest.mark.parametrize("orientation", [3, 6, 7])
def test_tiff_orientation_tag_is_applied_too(tmp_path, rgb, orientation):
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", extratags=[(274, "H", 1, orientation, False)])
    with Image.open(path) as im:
        want = pillow_hwc(ImageOps.exif_transpose(im))
    np.testing.assert_array_equal(read([path])[1][0], want)


def test_oriented_jpeg_output_displays_like_the_input_and_has_no_orientation_tag(chdir, rgb):
    jpeg_with_orientation(chdir / "in" / "photo.jpg", rgb, 6)
    run_cli("normalize", "in", "-o", "out", "-q")
    with Image.open(chdir / "out" / "photo.png") as im:
        assert ORIENTATION not in im.getexif()
        written = pillow_hwc(im)
    with Image.open(chdir / "in" / "photo.jpg") as im:
        shown = pillow_hwc(ImageOps.exif_transpose(im))
    assert_nearest(written, *minmax_numerator(shown, 0, 1, 255))


# ------------------------------------------------------------------------------ frames
def animated_gif(path: Path, frames: int, rng) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)).quantize(16) for _ in range(frames)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=40, loop=0, disposal=1)
    return path


def pillow_frames(path: Path, mode: str) -> list[np.ndarray]:
    frames = []
    with Image.open(path) as im:
        for index in range(im.n_frames):
            im.seek(index)
            frames.append(pillow_hwc(im.convert(mode)))
    return frames


def test_per_sample_rows_of_one_animated_file_are_named_by_frame_as_in_a_folder(chdir, rng):
    animated_gif(chdir / "in" / "anim.gif", 3, rng)
    for given, prefix in (("in/anim.gif", "in/anim.gif"), ("in", "anim.gif")):
        result = run_cli("stats", given, "--frames", "all", "--per", "sample", "--format", "json")
        assert [row["file"] for row in json.loads(result.stdout)["rows"]] == [f"{prefix}#{i}" for i in range(3)]


def test_multi_frame_gif_is_refused_by_default_naming_frames_and_option(tmp_path, rng):
    path = animated_gif(tmp_path / "in" / "anim.gif", 4, rng)
    with pytest.raises(InputError) as info:
        open_dataset([str(tmp_path / "in")])
    message = str(info.value)
    assert "4 frames" in message and "--frames" in message and str(path) in message and "\n" not in message


def test_frames_first_and_all(tmp_path, rng):
    path = animated_gif(tmp_path / "in" / "anim.gif", 4, rng)
    want = pillow_frames(path, "RGB")
    names, samples, _ = read([tmp_path / "in"], images={"frames": "first"})
    assert names == ["anim.gif"]
    np.testing.assert_array_equal(samples[0], want[0])
    names, samples, _ = read([tmp_path / "in"], images={"frames": "all"})
    assert names == [f"anim.gif#{i}" for i in range(4)]
    for got, frame in zip(samples, want):
        np.testing.assert_array_equal(got, frame)


def test_a_camera_mpo_jpeg_is_one_photo_not_frames(tmp_path, rgb):
    photo, preview = Image.fromarray(rgb), Image.fromarray(rgb[::2, ::2])
    photo.save(tmp_path / "camera.jpg", format="MPO", save_all=True, append_images=[preview], quality=95)
    with Image.open(tmp_path / "camera.jpg") as im:
        assert im.format == "MPO" and im.n_frames == 2
        want = pillow_hwc(im.convert("RGB"))
    names, samples, _ = read([tmp_path / "camera.jpg"])
    assert names == ["camera.jpg"]
    np.testing.assert_array_equal(samples[0], want)


def test_frames_asked_in_any_order_are_the_frames(tmp_path, rng):
    """Frames are read forward from an open file; asked backwards, skipping or twice, they stay right."""
    path = animated_gif(tmp_path / "anim.gif", 24, rng)
    want = pillow_frames(path, "RGB")
    order = [5, 3, 4, 23, 0, 0, 22, 1, *range(24)] + list(rng.permutation(24))
    with open_dataset([str(path)], images=ReadOptions(frames="all")) as dataset:
        for index in order:
            np.testing.assert_array_equal(take(dataset, [index])[0], want[index], err_msg=str(index))
        np.testing.assert_array_equal(np.concatenate([c.data for c in read_blocks(dataset, 1)]),
                                      np.stack(want))


def test_frame_numbers_are_zero_padded_so_they_sort(tmp_path, rng):
    animated_gif(tmp_path / "anim.gif", 12, rng)
    names = read([tmp_path / "anim.gif"], images={"frames": "all"})[0]
    assert names == [f"anim.gif#{i:02d}" for i in range(12)] == sorted(names)


def test_multi_page_tiff_and_apng_frames(tmp_path, rng):
    pages = rng.integers(0, 65536, (3, 4, 5), dtype=np.uint16)
    with tifffile.TiffWriter(tmp_path / "stack.tif") as tif:
        for page in pages:
            tif.write(page)
    apng = [rng.integers(0, 256, (4, 5, 4), dtype=np.uint8) for _ in range(3)]
    Image.fromarray(apng[0]).save(tmp_path / "a.png", save_all=True,
                                  append_images=[Image.fromarray(a) for a in apng[1:]])
    for path, want in ((tmp_path / "stack.tif", pages[..., None]), (tmp_path / "a.png", apng)):
        with pytest.raises(InputError, match="3 frames"):
            open_dataset([str(path)])
        names, samples, _ = read([path], images={"frames": "all"})
        assert names == [f"{path.name}#{i}" for i in range(3)]
        for got, frame in zip(samples, want):
            np.testing.assert_array_equal(got, frame)


def test_frames_all_writes_one_file_per_frame_inside_the_output(chdir, rng):
    path = animated_gif(chdir / "in" / "anim.gif", 3, rng)
    write_image(chdir / "in" / "still.png", rng.integers(0, 256, (5, 7, 3), dtype=np.uint8))
    result = run_cli("normalize", "in", "-o", "out", "--frames", "all", "--format", "json", "--bins", "0")
    assert json.loads(result.stdout)["before"]["samples"] == 4
    assert sorted(p.name for p in (chdir / "out").iterdir()) == ["anim_0.png", "anim_1.png", "anim_2.png",
                                                                 "still.png"]
    frames = np.stack(pillow_frames(path, "RGB") + [np.asarray(Image.open(chdir / "in" / "still.png"))])
    numerator, span = minmax_numerator(frames, 0, 1, 255)
    for index in range(3):
        assert_nearest(np.asarray(Image.open(chdir / "out" / f"anim_{index}.png")), numerator[index], span)


def test_a_hash_in_a_real_file_name_is_not_a_frame(chdir, rng):
    write_image(chdir / "in" / "take#2.png", rng.integers(0, 256, (5, 7, 3), dtype=np.uint8))
    run_cli("normalize", "in", "-o", "out", "-q")
    assert [p.name for p in (chdir / "out").iterdir()] == ["take#2.png"]


def test_frame_output_names_that_collide_are_refused_before_work(chdir, rng):
    animated_gif(chdir / "in" / "anim.gif", 2, rng)
    write_image(chdir / "in" / "anim_1.png", rng.integers(0, 256, (5, 7, 3), dtype=np.uint8))
    result = run_cli("normalize", "in", "-o", "out", "--frames", "all", ok=False)
    assert result.exit_code == 1 and "anim_1.png" in result.stderr and not (chdir / "out").exists()


# ------------------------------------------------------------------------------ the pixel limit
def test_a_small_tiff_of_a_huge_image_is_refused_before_decoding(tmp_path):
    """20480×20480 zeros in tiles: a fraction of a MB on disk, 400 MB decoded."""
    path = tmp_path / "bomb.tif"
    tile = np.zeros((1024, 1024), np.uint8)
    tifffile.imwrite(path, (tile for _ in range(400)), shape=(20480, 20480), dtype=np.uint8, tile=(1024, 1024),
                     compression="zlib")
    assert path.stat().st_size < 1 << 20
    with pytest.raises(InputError) as info:
        open_dataset([str(path)])
    message = str(info.value)
    assert "--max-pixels" in message and str(path) in message and f"{DEFAULT_MAX_PIXELS:,}" in message


@pytest.mark.parametrize("name", ["x.png", "x.tif", "x.jpg", "x16.png"])
def test_max_pixels_applies_to_every_decoder(chdir, rng, name):
    image = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    write_image(chdir / name, image.astype(np.uint16) * 257 if name == "x16.png" else image)
    result = run_cli("stats", name, "--max-pixels", 19, ok=False)
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "--max-pixels" in result.stderr and name in result.stderr
    run_cli("stats", name, "--max-pixels", 20)
    run_cli("stats", name, "--max-pixels", 0)


def test_the_limit_message_says_the_decoded_size_in_a_readable_unit(chdir):
    Image.fromarray(np.zeros((512, 1024), np.uint8)).save(chdir / "half.png")  # 524,288 bytes decoded
    result = run_cli("stats", "half.png", "--max-pixels", 1000, ok=False)
    assert "(524,288 pixels, 512 KiB decoded)" in result.stderr


@pytest.mark.parametrize("nbytes, text", [(0, "0 bytes"), (1023, "1,023 bytes"), (1024, "1 KiB"),
                                          (3 << 19, "1.5 MiB"), (5 << 30, "5 GiB"), (3000 << 30, "3,000 GiB")])
def test_binary_size(nbytes, text):
    assert binary_size(nbytes) == text


def test_the_help_states_the_default_limit():
    assert f"{DEFAULT_MAX_PIXELS}" in run_cli("stats", "--help").stdout
    pillows = subprocess.run([sys.executable, "-c", "from PIL import Image; print(Image.MAX_IMAGE_PIXELS)"],
                             capture_output=True, text=True, check=True)  # a fresh process: normcli lifts it
    assert int(pillows.stdout) == DEFAULT_MAX_PIXELS


# ------------------------------------------------------------------------------ alpha
def alpha_cases(tmp_path, rng):
    """(path, alpha channel index or None) for each way an image can carry alpha, or not."""
    gray = rng.integers(0, 256, (4, 5), dtype=np.uint8)
    color = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    cases = {}
    for name, array in {"la.png": np.dstack([gray, gray]), "rgba.png": np.dstack([color, gray]),
                        "rgb.png": color, "gray.png": gray, "rgba.webp": np.dstack([color, gray])}.items():
        Image.fromarray(array).save(tmp_path / name, **({"lossless": True} if name.endswith("webp") else {}))
        cases[name] = {2: 1, 4: 3}.get(array.shape[-1] if array.ndim == 3 else 1)
    palette = Image.fromarray(color).quantize(8)
    palette.save(tmp_path / "p.png")
    palette.save(tmp_path / "p_transparent.png", transparency=0)
    cases.update({"p.png": None, "p_transparent.png": 3})
    tifffile.imwrite(tmp_path / "la.tif", np.dstack([gray, gray]), photometric="minisblack", planarconfig="contig",
                     extrasamples=["assocalpha"])
    tifffile.imwrite(tmp_path / "rgba.tif", np.dstack([color, gray]), photometric="rgb")
    tifffile.imwrite(tmp_path / "two.tif", np.dstack([gray, gray]), photometric="minisblack", planarconfig="contig")
    cases.update({"la.tif": 1, "rgba.tif": 3, "two.tif": None})
    return cases


def test_alpha_channel_of_each_kind_of_image(tmp_path, rng):
    for name, alpha in alpha_cases(tmp_path, rng).items():
        with open_dataset([str(tmp_path / name)]) as dataset:
            assert (dataset.alpha_channel, dataset.has_alpha) == (alpha, alpha is not None), name
            assert dataset.parts[0].alpha_channel == alpha
        for mode, want in (("rgba", 3), ("rgb", None), ("gray", None)):
            with open_dataset([str(tmp_path / name)], mode=mode) as dataset:
                assert dataset.alpha_channel == want, (name, mode)


def test_arrays_have_no_alpha_and_images_that_disagree_are_refused(tmp_path, rng):
    np.save(tmp_path / "x.npy", rng.normal(size=(2, 3, 3, 4)))
    with open_dataset([str(tmp_path / "x.npy")]) as dataset:
        assert dataset.alpha_channel is None and not dataset.has_alpha
    gray = rng.integers(0, 256, (4, 5), dtype=np.uint8)
    (tmp_path / "mixed").mkdir()
    tifffile.imwrite(tmp_path / "mixed" / "a.tif", np.dstack([gray, gray]), photometric="minisblack",
                     planarconfig="contig", extrasamples=["unassalpha"])
    tifffile.imwrite(tmp_path / "mixed" / "b.tif", np.dstack([gray, gray]), photometric="minisblack",
                     planarconfig="contig")
    with pytest.raises(InputError, match="a.tif has alpha.*--mode"):
        open_dataset([str(tmp_path / "mixed")])


def test_alpha_survives_a_tiff_output(chdir, rng):
    gray = rng.integers(0, 256, (4, 5), dtype=np.uint8)
    write_image(chdir / "in" / "la.png", np.dstack([gray, gray]))
    run_cli("normalize", "in", "-o", "out", "--ext", "tiff", "-q")
    with open_dataset([str(chdir / "out")]) as dataset:
        assert dataset.alpha_channel == 1
    for channels in (2, 4):  # arrays have no alpha, and their TIFFs say so
        np.save(chdir / f"x{channels}.npy", rng.random((2, 3, 4, channels)))
        run_cli("normalize", f"x{channels}.npy", "-o", f"x{channels}", "-q")
        with open_dataset([str(chdir / f"x{channels}")]) as dataset:
            assert dataset.alpha_channel is None


# ------------------------------------------------------------------------------ every format
def test_every_format_reads_as_pillow_decodes_it(tmp_path, rng):
    color = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    gray = color[..., 0]
    files = {
        "cmyk.jpg": (Image.fromarray(color).convert("CMYK"), "RGB"),
        "p.png": (Image.fromarray(color).quantize(12), "RGB"),
        "pt.png": (Image.fromarray(color).quantize(12), "RGBA"),
        "la.png": (Image.fromarray(np.dstack([gray, color[..., 1]])), "LA"),
        "rgb.bmp": (Image.fromarray(color), "RGB"),
        "rgb.webp": (Image.fromarray(color), "RGB"),
        "lossy.webp": (Image.fromarray(color), "RGB"),
        "one_bit.png": (Image.fromarray(gray > 127), "L"),
        "gray.gif": (Image.fromarray(gray), "RGB"),  # a palette image, as every GIF
    }
    for name, (im, mode) in files.items():
        options = {"lossless": True} if name == "rgb.webp" else {"transparency": 3} if name == "pt.png" else {}
        im.save(tmp_path / name, **options)
        with Image.open(tmp_path / name) as saved:
            want = pillow_hwc(saved.convert(mode))
        got = read([tmp_path / name])[1][0]
        np.testing.assert_array_equal(got, want, err_msg=name)
        if name == "cmyk.jpg":
            with Image.open(tmp_path / name) as saved:
                assert saved.mode == "CMYK"


def test_16bit_and_float_files_keep_their_values(tmp_path, rng):
    u16 = rng.integers(0, 65536, (5, 6), dtype=np.uint16)
    f32 = rng.normal(size=(5, 6, 3)).astype(np.float32)
    iio.imwrite(tmp_path / "g16.png", u16)
    tifffile.imwrite(tmp_path / "f.tif", f32, photometric="rgb")
    tifffile.imwrite(tmp_path / "g16.tif", u16)
    for name, want in (("g16.png", u16[..., None]), ("f.tif", f32), ("g16.tif", u16[..., None])):
        got = read([tmp_path / name])[1][0]
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)


# ------------------------------------------------------------------------------ hidden files, --exclude
@pytest.fixture
def junk_tree(tmp_path, rng) -> Path:
    root = tmp_path / "data"
    for name in ("a.png", "b/c.png", "b/d.jpg", ".hidden.png", ".ipynb_checkpoints/a-checkpoint.png"):
        write_image(root / name, rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    (root / "._a.png").write_bytes(b"\x00\x05\x16\x07AppleDouble junk")  # macOS resource fork, not a PNG
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    return root


def test_hidden_files_and_folders_are_skipped_by_default(junk_tree):
    assert [rel for _, rel in list_images(str(junk_tree))] == ["a.png", "b/c.png", "b/d.jpg"]
    assert read([junk_tree])[0] == ["a.png", "b/c.png", "b/d.jpg"]


def test_include_hidden_reads_them(junk_tree):
    (junk_tree / "._a.png").unlink()
    names = [rel for _, rel in list_images(str(junk_tree), ReadOptions(include_hidden=True))]
    assert names == [".hidden.png", ".ipynb_checkpoints/a-checkpoint.png", "a.png", "b/c.png", "b/d.jpg"]


def test_a_hidden_file_named_on_the_command_line_is_read(junk_tree):
    assert read([junk_tree / ".hidden.png"])[0] == [".hidden.png"]


@pytest.mark.parametrize("globs, names", [
    (("*.jpg",), ["a.png", "b/c.png"]),
    (("b/*",), ["a.png"]),
    (("b/*", "a.*"), None),
    (("B/*",), ["a.png", "b/c.png", "b/d.jpg"]),  # case-sensitive
    (("*c.png",), ["a.png", "b/d.jpg"]),  # * crosses folders, as in fnmatch
])
def test_exclude_globs_match_the_relative_path(junk_tree, globs, names):
    if names is None:
        with pytest.raises(InputError, match="holds no images.*6 hidden or --exclude'd"):
            list_images(str(junk_tree), ReadOptions(exclude=globs))
        return
    assert [rel for _, rel in list_images(str(junk_tree), ReadOptions(exclude=globs))] == names


def test_exclude_and_include_hidden_through_the_cli(chdir, junk_tree):
    result = run_cli("stats", junk_tree, "--per", "sample", "--format", "json", "--exclude", "*.jpg",
                     "--exclude", "b/*")
    assert json.loads(result.stdout)["samples"] == 1
    result = run_cli("stats", junk_tree, "--include-hidden", ok=False)  # ._a.png is junk, and now read
    assert result.exit_code == 1 and "._a.png" in result.stderr


# ------------------------------------------------------------------------------ gray
@pytest.mark.parametrize("channels", [3, 4])
def test_gray_is_pillow_convert_l_exactly(tmp_path, rng, channels):
    """Random pixels plus every value on the gray axis and each single channel alone."""
    values = np.arange(256, dtype=np.uint8)
    special = np.concatenate([np.stack([values] * 3, -1)] + [np.eye(3, dtype=np.uint8)[i] * values[:, None]
                                                            for i in range(3)])
    image = np.concatenate([rng.integers(0, 256, (200 * 256 - len(special), 3), dtype=np.uint8), special])
    image = image.reshape(200, 256, 3)
    if channels == 4:
        image = np.dstack([image, rng.integers(0, 256, (200, 256), dtype=np.uint8)])
    write_image(tmp_path / "c" / "x.png", image)
    want = np.asarray(Image.fromarray(image).convert("L"))[..., None]
    with open_dataset([str(tmp_path / "c")], mode="gray") as dataset:
        np.testing.assert_array_equal(take(dataset, [0])[0], want)
    float_luma = np.rint(image[..., :3] @ np.array([0.299, 0.587, 0.114]))[..., None]
    assert (float_luma != want).any()  # the reference tells Pillow's fixed point from float luma


def test_gray_of_16bit_and_float_images(tmp_path, rng):
    u16 = rng.integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    f32 = rng.random((5, 6, 3)).astype(np.float32)
    tifffile.imwrite(tmp_path / "u16.tif", u16, photometric="rgb")
    tifffile.imwrite(tmp_path / "f32.tif", f32, photometric="rgb")
    r, g, b = (u16[..., i].astype(object) for i in range(3))
    want16 = ((r * 19595 + g * 38470 + b * 7471 + 32768) // 65536).astype(np.uint16)[..., None]
    np.testing.assert_array_equal(read([tmp_path / "u16.tif"], mode="gray")[1][0], want16)
    want32 = (f32.astype(np.float64) @ np.array([0.299, 0.587, 0.114])).astype(np.float32)[..., None]
    np.testing.assert_array_equal(read([tmp_path / "f32.tif"], mode="gray")[1][0], want32)


# ------------------------------------------------------------------------------ outputs: depth, suffix
def test_16bit_tiff_stays_a_16bit_tif_rounded_from_float64(chdir, rng):
    image = rng.integers(0, 65536, (200, 250), dtype=np.uint16)
    (chdir / "in").mkdir()
    tifffile.imwrite(chdir / "in" / "scan.tif", image)
    write_image(chdir / "in" / "b.tiff", rng.integers(0, 65536, (200, 250), dtype=np.uint16))
    run_cli("normalize", "in", "-o", "out", "-q")
    assert sorted(p.name for p in (chdir / "out").iterdir()) == ["b.tiff", "scan.tif"]
    written = tifffile.imread(chdir / "out" / "scan.tif")
    assert written.dtype == np.uint16
    both = np.stack([image, tifffile.imread(chdir / "in" / "b.tiff")])
    numerator, span = minmax_numerator(both, 0, 1, 65535)
    assert_nearest(written, numerator[0], span)


def test_8bit_tiff_stays_8bit_and_jpeg_becomes_png(chdir, rng):
    (chdir / "t").mkdir()
    tifffile.imwrite(chdir / "t" / "a.TIF", rng.integers(0, 256, (4, 5, 3), dtype=np.uint8), photometric="rgb")
    run_cli("normalize", "t", "-o", "t_out", "-q")
    assert tifffile.imread(chdir / "t_out" / "a.TIF").dtype == np.uint8
    jpeg_with_orientation(chdir / "j" / "a.jpeg", rng.integers(0, 256, (4, 5, 3), dtype=np.uint8), None)
    run_cli("normalize", "j", "-o", "j_out", "-q")
    assert [p.name for p in (chdir / "j_out").iterdir()] == ["a.png"]
    run_cli("normalize", "j", "-o", "j_tif", "--ext", "tiff", "-q")  # --ext tiff on other images: float32
    assert tifffile.imread(chdir / "j_tif" / "a.tiff").dtype == np.float32


def test_standardized_16bit_tiff_into_16bit_is_refused_naming_float32(chdir, rng):
    (chdir / "in").mkdir()
    tifffile.imwrite(chdir / "in" / "a.tif", rng.integers(0, 65536, (4, 5), dtype=np.uint16))
    result = run_cli("standardize", "in", "-o", "out", ok=False)
    assert result.exit_code == 1 and "--dtype float32" in result.stderr and "--clip" in result.stderr
    run_cli("standardize", "in", "-o", "out", "--dtype", "float32", "-q")
    assert tifffile.imread(chdir / "out" / "a.tif").dtype == np.float32


# ------------------------------------------------------------------------------ integer encodings
@pytest.fixture
def png_folder(chdir, rng):
    for index in range(3):
        write_image(chdir / "in" / f"{index}.png", rng.integers(5, 240, (6, 7, 3), dtype=np.uint8))
    return chdir / "in"


def pngs(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.iterdir())])


def test_range_0_255_is_written_as_those_integers(png_folder, chdir):
    run_cli("normalize", "in", "-o", "out", "--range", 0, 255, "--save-stats", "s.json", "-q")
    x = pngs(png_folder)
    assert_nearest(pngs(chdir / "out"), *minmax_numerator(x, 0, 255))
    assert json.loads((chdir / "s.json").read_text())["encoding"] == {"dtype": "uint8", "scale": 1}
    run_cli("normalize", "in", "-o", "u8.npy", "--range", 0, 200, "--dtype", "uint8", "-q")
    assert_nearest(np.load("u8.npy"), *minmax_numerator(x, 0, 200))


def test_unit_range_keeps_the_full_integer_mapping_and_records_it(png_folder, chdir):
    run_cli("normalize", "in", "-o", "out", "--save-stats", "s.json", "-q")
    assert_nearest(pngs(chdir / "out"), *minmax_numerator(pngs(png_folder), 0, 1, 255))
    assert json.loads((chdir / "s.json").read_text())["encoding"] == {"dtype": "uint8", "scale": 255}


@pytest.mark.parametrize("out_range", [(0, 1), (0, 255), (10, 90)])
def test_png_outputs_invert_through_their_own_files(png_folder, chdir, out_range):
    run_cli("normalize", "in", "-o", "out", "--range", *out_range, "--save-stats", "s.json", "-q")
    # The range is the command's own (as when fitting); the encoding comes from the file.
    run_cli("normalize", "out", "-o", "back", "--range", *out_range, "--inverse", "--stats-from", "s.json", "-q")
    x = pngs(png_folder).astype(np.int64)
    step = (x.max() - x.min()) / (out_range[1] - out_range[0]) * (1 if out_range[1] > 1 else 1 / 255)
    assert np.abs(pngs(chdir / "back").astype(np.int64) - x).max() <= max(1, np.ceil(step / 2))


def test_without_a_recorded_encoding_a_unit_range_is_inferred(png_folder, chdir):
    """A statistics file from before encodings were recorded: 8-bit outputs of a [0, 1] normalize."""
    run_cli("normalize", "in", "-o", "out", "--save-stats", "s.json", "-q")
    doc = json.loads((chdir / "s.json").read_text())
    del doc["encoding"]
    (chdir / "s.json").write_text(json.dumps(doc))
    run_cli("normalize", "out", "-o", "back", "--inverse", "--stats-from", "s.json", "-q")
    assert np.abs(pngs(chdir / "back").astype(np.int64) - pngs(png_folder)).max() <= 1


def test_16bit_png_outputs_invert_exactly(chdir, rng):
    image = rng.integers(0, 65536, (6, 7, 3), dtype=np.uint16)
    write_image(chdir / "in" / "a.png", image)
    run_cli("normalize", "in", "-o", "out", "--save-stats", "s.json", "-q")
    run_cli("normalize", "out", "-o", "back.npy", "--dtype", "float64", "--inverse", "--stats-from", "s.json", "-q")
    np.testing.assert_allclose(np.load("back.npy")[0], image, rtol=0, atol=0.5)


def test_encoding_of_other_integers_is_refused(png_folder, chdir):
    run_cli("normalize", "in", "-o", "out", "--save-stats", "s.json", "-q")
    run_cli("normalize", "out", "-o", "out16", "--dtype", "uint16", "-q")
    result = run_cli("normalize", "out16", "-o", "back", "--inverse", "--stats-from", "s.json", ok=False)
    assert result.exit_code == 1 and "uint8" in result.stderr and "s.json" in result.stderr


@pytest.mark.parametrize("out_range, clip, want", [
    ((-5, 300), False, None),  # fits neither [0, 1] nor 0..255
    ((0, 1.5), False, None),  # as integers only 0 and 1: not guessed
    ((0, 300), True, (0, 300, 255)),  # integers, clipped to 0..255
    ((-1, 1), True, (-1, 1, 1)),  # [0, 1] onto 0..255, clipped to [0, 1]
])
def test_clip_clips_to_the_encodings_range(png_folder, chdir, out_range, clip, want):
    args = ["normalize", "in", "-o", "out", "--range", *out_range, "-q"] + (["--clip"] if clip else [])
    if want is None:
        result = run_cli(*args, ok=False)
        assert result.exit_code == 1 and "--clip" in result.stderr and not (chdir / "out").exists()
        return
    run_cli(*args)
    low, high, limit = want
    numerator, span = minmax_numerator(pngs(png_folder), low, high, 255 // limit)
    assert_nearest(pngs(chdir / "out"), np.clip(numerator, 0, 255 * span), span)


# ------------------------------------------------------------------------------ a real process
def test_real_process_refuses_an_animated_gif_then_reads_its_frames(tmp_path, rng):
    animated_gif(tmp_path / "in" / "anim.gif", 3, rng)
    env_path = str(Path(__file__).resolve().parents[1])
    command = [sys.executable, "-m", "normcli", "stats", str(tmp_path / "in"), "--format", "json", "--bins", "0"]
    env = {"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"}
    refused = subprocess.run(command, capture_output=True, text=True, env=env)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith("error: holds 3 frames") and refused.stderr.count("\n") == 1
    read_all = subprocess.run(command + ["--frames", "all"], capture_output=True, text=True, env=env)
    assert read_all.returncode == 0, read_all.stderr
    assert json.loads(read_all.stdout)["samples"] == 3


def test_a_malformed_encoding_in_the_statistics_file_is_refused(png_folder, chdir):
    run_cli("normalize", "in", "-o", "out", "--save-stats", "s.json", "-q")
    doc = json.loads((chdir / "s.json").read_text())
    doc["encoding"] = {"dtype": "uint8", "scale": 7}
    (chdir / "s.json").write_text(json.dumps(doc))
    result = run_cli("normalize", "out", "-o", "back", "--inverse", "--stats-from", "s.json", ok=False)
    assert result.exit_code == 1 and "malformed encoding" in result.stderr and "s.json" in result.stderr


# ------------------------------------------------------------------------------ kernels against Pillow
@settings(max_examples=60, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 7), st.integers(1, 7), st.sampled_from([1, 3, 4]))),
       st.integers(1, 8))
def test_orient_equals_exif_transpose(image, orientation):
    im = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    im.getexif()[ORIENTATION] = orientation
    np.testing.assert_array_equal(orient(image, orientation), pillow_hwc(ImageOps.exif_transpose(im)))


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 16), st.integers(1, 16), st.sampled_from([3, 4]))))
def test_gray_kernel_equals_pillow_on_any_pixels(image):
    want = np.asarray(Image.fromarray(image).convert("L"))[..., None]
    np.testing.assert_array_equal(convert_channels(image, 1), want)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF")
def test_a_photo_with_a_broken_exif_block_is_read_as_stored(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "broken.jpg", quality=95, exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")
    with Image.open(tmp_path / "broken.jpg") as im:
        want = pillow_hwc(im)
    np.testing.assert_array_equal(read([tmp_path / "broken.jpg"])[1][0], want)


# -- alpha is not a colour ------------------------------------------------------------------------
@pytest.fixture
def rgba_pngs(tmp_path, rng):
    """Three RGBA PNGs: the first opaque, the others with alpha of every kind."""
    folder = tmp_path / "rgba"
    images = []
    for i in range(3):
        image = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
        if i == 0:
            image[..., 3] = 255
        images.append(image)
        write_image(folder / f"{i}.png", image)
    return folder, np.stack(images)


def test_statistics_cover_the_colour_channels_and_say_alpha_is_passed(rgba_pngs):
    folder, images = rgba_pngs
    doc = json.loads(run_cli("stats", folder, "--format", "json").stdout)
    assert doc["alpha"] == "passed through" and doc["sample_shape"] == [6, 5, 3]
    assert [row["mean"] for row in doc["rows"]] == [images[..., c].mean() for c in range(3)]
    table = run_cli("stats", folder, "--bins", "0").stdout
    assert "alpha passed through" in " ".join(table.split()[:20])  # in the header, however it wraps
    included = json.loads(run_cli("stats", folder, "--format", "json", "--include-alpha").stdout)
    assert "alpha" not in included and included["sample_shape"] == [6, 5, 4]
    assert included["rows"][3]["mean"] == images[..., 3].mean()


@pytest.mark.parametrize("dtype,top", [(None, 255), ("uint16", 65535)])
def test_normalize_passes_alpha_through_unchanged(rgba_pngs, tmp_path, dtype, top):
    folder, images = rgba_pngs
    out = tmp_path / "out"
    run_cli("normalize", folder, "-o", out, "--per", "channel", "-q", *(["--dtype", dtype] if dtype else []))
    colour = images[..., :3].astype(np.float64)
    low, high = colour.min(axis=(0, 1, 2)), colour.max(axis=(0, 1, 2))
    for i, image in enumerate(images):
        with Image.open(out / f"{i}.png") as im:
            got = pillow_hwc(im) if top == 255 else read_png16(out / f"{i}.png")
        np.testing.assert_array_equal(got[..., 3], np.rint(image[..., 3] / 255 * top))  # the same opacity
        np.testing.assert_array_equal(got[..., :3], np.rint((image[..., :3] - low) / (high - low) * top))


def test_include_alpha_normalizes_it_like_a_channel(rgba_pngs, tmp_path):
    folder, images = rgba_pngs
    run_cli("normalize", folder, "-o", tmp_path / "out", "--per", "channel", "-q", "--include-alpha")
    alpha = images[..., 3].astype(np.float64)
    with Image.open(tmp_path / "out" / "1.png") as im:
        got = pillow_hwc(im)[..., 3]
    np.testing.assert_array_equal(got, np.rint((alpha[1] - alpha.min()) / (alpha.max() - alpha.min()) * 255))


def test_gray_with_alpha_measures_one_channel(tmp_path, rng):
    image = rng.integers(0, 256, (4, 4, 2), dtype=np.uint8)
    Image.fromarray(image, "LA").save(tmp_path / "la.png")
    doc = json.loads(run_cli("stats", tmp_path / "la.png", "--format", "json").stdout)
    assert len(doc["rows"]) == 1 and doc["rows"][0]["mean"] == image[..., 0].mean()


# ------------------------------------------------------------------------------ counting without arrays
def test_band_counts_are_the_counts_of_the_decoded_arrays(tmp_path, rng):
    """8-bit stills are counted by Pillow without an array (Block.value_counts): for every kind of
    image, oriented or not, with alpha passed through or measured, the counts are those of the
    arrays the same blocks read; TIFFs, frames and --mode conversions are read instead."""
    color = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    gray = color[..., 0]
    folder = tmp_path / "kinds"
    folder.mkdir()
    for name, im in {"rgb.png": Image.fromarray(color), "gray.png": Image.fromarray(gray),
                     "la.png": Image.fromarray(np.dstack([gray, color[..., 1]])),
                     "rgba.png": Image.fromarray(np.dstack([color, gray])),
                     "cmyk.jpg": Image.fromarray(color).convert("CMYK"), "p.png": Image.fromarray(color).quantize(12),
                     "one_bit.png": Image.fromarray(gray > 127), "rgb.bmp": Image.fromarray(color)}.items():
        im.save(folder / name)
    Image.fromarray(color).quantize(12).save(folder / "pt.png", transparency=3)
    jpeg_with_orientation(folder / "turned.jpg", color, 6)
    tifffile.imwrite(folder / "rgb.tif", color)
    for name in sorted(p.name for p in folder.iterdir()):
        for include_alpha in (False, True):
            for mode in (None, "rgb"):
                with open_dataset([str(folder / name)], mode=mode,
                                  images=ReadOptions(include_alpha=include_alpha)) as dataset:
                    (block,) = dataset.blocks()
                    counts = block.value_counts()
                    if name.endswith(".tif") or mode is not None:
                        assert counts is None, name
                        continue
                    data = block.read().data
                    expected = np.stack([np.bincount(data[..., c].reshape(-1), minlength=256)
                                         for c in range(data.shape[-1])])
                    np.testing.assert_array_equal(counts, expected, err_msg=f"{name} include_alpha={include_alpha}")


def test_folder_statistics_counted_without_arrays_equal_the_arrays_statistics(tmp_path, rng):
    """stats of a folder of 8-bit images: the same JSON whether the blocks are counted by Pillow
    or read as arrays (forced here by making value_counts decline)."""
    from unittest import mock

    from normcli.sources import Block

    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (9, 11, 4), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    for per in ("global", "channel"):
        counted = run_cli("stats", str(tmp_path), "--per", per, "--format", "json").stdout
        with mock.patch.object(Block, "value_counts", lambda self: None):
            read = run_cli("stats", str(tmp_path), "--per", per, "--format", "json").stdout
        assert json.loads(counted) == json.loads(read)


# ------------------------------------------------------------------------------ TIFFs as displayed
def _imagemagick() -> str | None:
    """The real ImageMagick `convert`, None where it is absent (a stand-in of that name may be on PATH)."""
    import shutil

    for convert in dict.fromkeys(filter(None, (shutil.which("convert"), "/usr/bin/convert"))):
        try:
            version = subprocess.run([convert, "-version"], capture_output=True, text=True, timeout=30).stdout
        except OSError:
            continue
        if version.startswith("Version: ImageMagick"):
            return convert
    return None


IMAGEMAGICK = _imagemagick()


def imagemagick_rgb(path: Path, tmp_path: Path) -> np.ndarray:
    """The file as ImageMagick displays it, as (H, W, C) from a PNG it writes."""
    out = tmp_path / f"{path.stem}_im.png"
    subprocess.run([IMAGEMAGICK, str(path), "-colorspace", "sRGB", f"png:{out}"], check=True)
    return pillow_displayed(out)


def pillow_displayed(path: Path) -> np.ndarray:
    """What Pillow shows of a file: palette, bilevel, CMYK and YCbCr converted as a viewer does."""
    with Image.open(path) as im:
        shown = {"P": "RGB", "1": "L", "CMYK": "RGB", "YCbCr": "RGB"}.get(im.mode)
        return pillow_hwc(im.convert(shown) if shown else im)


def test_a_palette_tiff_is_read_as_its_colours(tmp_path, rng):
    indices = rng.integers(0, 256, (6, 7), dtype=np.uint8)
    colormap = rng.integers(0, 65536, (3, 256), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "p.tif", indices, photometric="palette", colormap=colormap)
    Image.fromarray(indices % 16, "P").save(tmp_path / "pillow.tif")  # Pillow's own palette TIFF
    for name in ("p.tif", "pillow.tif"):
        (got,), _ = read([tmp_path / name])[1:]
        assert got.shape == (6, 7, 3) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, pillow_displayed(tmp_path / name))
    np.testing.assert_array_equal(read([tmp_path / "p.tif"])[1][0], (colormap[:, indices] // 256).transpose(1, 2, 0))
    if IMAGEMAGICK:  # ImageMagick scales 16-bit entries to 8 bits by rounding, Pillow by // 256
        shown = imagemagick_rgb(tmp_path / "p.tif", tmp_path).astype(int)
        assert np.abs(read([tmp_path / "p.tif"])[1][0] - shown).max() <= 1


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, bool])
def test_a_miniswhite_tiff_is_read_inverted_and_written_back_as_displayed(chdir, rng, dtype):
    stored = rng.integers(0, 2 if dtype is bool else np.iinfo(dtype).max + 1, (6, 7)).astype(dtype)
    tifffile.imwrite(chdir / "w.tif", stored, photometric="miniswhite")
    (got,), _ = read([chdir / "w.tif"])[1:]
    white = 255 if dtype is bool else np.iinfo(dtype).max
    want = white - stored.astype(np.int64) * (255 if dtype is bool else 1)
    np.testing.assert_array_equal(got[..., 0], want)
    if dtype is not np.uint16:  # Pillow shows 16-bit MinIsWhite as stored; ImageMagick and normcli invert it
        np.testing.assert_array_equal(got, pillow_displayed(chdir / "w.tif"))
    elif IMAGEMAGICK:
        np.testing.assert_array_equal(got, imagemagick_rgb(chdir / "w.tif", chdir))
    run_cli("normalize", "w.tif", "-o", "out.tif", "-q")  # the output is a positive, not a negative
    written = pillow_displayed(chdir / "out.tif").astype(np.float64)
    assert np.corrcoef(written.ravel(), want.ravel())[0, 1] > 0.999


def test_cmyk_is_rgb_as_pillow_converts_it_in_jpeg_and_tiff_alike(chdir, rng):
    ink = rng.integers(0, 256, (6, 7, 4), dtype=np.uint8)
    tifffile.imwrite(chdir / "c.tif", ink, photometric="separated")
    Image.fromarray(ink, "CMYK").save(chdir / "c.jpg", quality=95)
    for name in ("c.tif", "c.jpg"):
        (got,), dataset = read([chdir / name])[1:]
        assert got.shape == (6, 7, 3) and dataset.alpha_channel is None
        np.testing.assert_array_equal(got, pillow_displayed(chdir / name))
    if IMAGEMAGICK:
        assert np.abs(read([chdir / "c.tif"])[1][0].astype(int) - imagemagick_rgb(chdir / "c.tif", chdir)).max() <= 1
    # the exact rule in integers, also at 16 bits: (max - C)(max - K) / max, rounded
    ink16 = rng.integers(0, 65536, (6, 7, 4), dtype=np.uint16)
    tifffile.imwrite(chdir / "c16.tif", ink16, photometric="separated")
    (got16,), _ = read([chdir / "c16.tif"])[1:]
    exact = (65535 - ink16[..., :3].astype(np.int64)) * (65535 - ink16[..., 3:].astype(np.int64))
    assert_nearest(got16, exact, 65535)
    run_cli("normalize", "c.tif", "-o", "out.tif", "-q")  # written back as RGB, no ink channel left
    with tifffile.TiffFile(chdir / "out.tif") as tif:
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.RGB and tif.pages[0].shape == (6, 7, 3)


def test_cmyk_with_alpha_becomes_rgba(tmp_path, rng):
    samples = rng.integers(0, 256, (6, 7, 5), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "c.tif", samples, photometric="separated", extrasamples=["unassalpha"])
    (got,), dataset = read([tmp_path / "c.tif"])[1:]
    np.testing.assert_array_equal(got[..., :3], np.asarray(Image.fromarray(samples[..., :4], "CMYK").convert("RGB")))
    np.testing.assert_array_equal(got[..., 3], samples[..., 4])
    assert dataset.alpha_channel == 3


def test_a_ycbcr_tiff_is_rgb_as_pillow_converts_it(tmp_path, rng):
    Image.fromarray(rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)).convert("YCbCr").save(tmp_path / "y.tif")
    np.testing.assert_array_equal(read([tmp_path / "y.tif"])[1][0], pillow_displayed(tmp_path / "y.tif"))


@pytest.mark.parametrize("photometric, data", [("cielab", np.zeros((4, 5, 3), np.uint8)),
                                               ("miniswhite", np.zeros((4, 5), np.float32))])
def test_a_tiff_normcli_cannot_show_is_refused_by_name(chdir, photometric, data):
    tifffile.imwrite(chdir / "x.tif", data, photometric=photometric)
    result = run_cli("stats", "x.tif", ok=False)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: cannot read image: a ") and "(x.tif)" in result.stderr


COMPRESSIONS = ["none", "lzw", "zlib", "adobe_deflate", "packbits", "zstd", "lzma", "lerc", "jpeg", "webp"]


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_every_tiff_compression_reads(tmp_path, rng, compression):
    """tifffile with imagecodecs: each compression, 8/16-bit and float, gray/RGB/RGBA, stripped and
    tiled, several pages; lossless ones bit-exact, lossy ones as Pillow decodes them where it can."""
    lossy = compression in ("jpeg", "webp")
    for dtype in (np.uint8, np.uint16, np.float32):
        for channels in (1, 3, 4):
            if lossy and (dtype is not np.uint8 or (compression == "jpeg") == (channels == 4)
                          or (compression == "webp" and channels == 1)):
                continue  # what the codec cannot hold
            pages = rng.integers(0, 250, (2, 32, 48, channels)).astype(dtype)
            for tile in (None, (16, 16)):
                path = tmp_path / f"{compression}_{np.dtype(dtype).name}_{channels}_{bool(tile)}.tif"
                with tifffile.TiffWriter(path) as tif:
                    for page in pages:
                        tif.write(page[..., 0] if channels == 1 else page, tile=tile,
                                  compression=None if compression == "none" else compression,
                                  photometric="rgb" if channels > 1 else "minisblack",
                                  extrasamples=["unassalpha"] if channels == 4 else None)
                names, got, dataset = read([path], images={"frames": "all"})
                assert names == [f"{path.name}#0", f"{path.name}#1"], "no page is dropped"
                if not lossy:
                    np.testing.assert_array_equal(np.stack(got), pages)
                elif compression == "jpeg":
                    np.testing.assert_array_equal(got[0], pillow_displayed(path))
                else:
                    assert np.abs(np.stack(got).astype(int) - pages).mean() < 8
                assert dataset.alpha_channel == (3 if channels == 4 else None)


@pytest.mark.parametrize("compression", ["tiff_lzw", "tiff_adobe_deflate", "jpeg", "packbits"])
def test_tiffs_that_pillow_writes_read_as_pillow_reads_them(tmp_path, rng, compression):
    Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)).save(tmp_path / "x.tif", compression=compression)
    np.testing.assert_array_equal(read([tmp_path / "x.tif"])[1][0], pillow_displayed(tmp_path / "x.tif"))


# ------------------------------------------------------------------------------ ICC profiles
@pytest.fixture(scope="module")
def rgb_profile() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def embedded_profile(path: Path) -> bytes | None:
    """The ICC profile that Pillow finds in a file (tifffile for TIFFs: Pillow opens no float RGB)."""
    if path.suffix.lower() in (".tif", ".tiff"):
        with tifffile.TiffFile(path) as tif:
            return tif.pages[0].tags.valueof(34675)
    with Image.open(path) as im:
        return im.info.get("icc_profile")


@pytest.mark.parametrize("source, output", [("in.jpg", "out.png"), ("in.png", "out.png"), ("in.tif", "out.tif"),
                                            ("in16.png", "out16.png"), ("in.webp", "out.png"),
                                            ("in.jpg", "out.tif")])
def test_an_icc_profile_is_carried_into_the_output(chdir, rng, rgb_profile, source, output):
    image = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    if source == "in.tif":
        tifffile.imwrite(chdir / source, image, photometric="rgb", iccprofile=rgb_profile)
    elif source == "in16.png":
        from normcli.png16 import write_png16

        write_png16(chdir / source, image.astype(np.uint16) * 257, icc=rgb_profile)
        assert embedded_profile(chdir / source) == rgb_profile  # Pillow reads our iCCP chunk
    else:
        Image.fromarray(image).save(chdir / source, icc_profile=rgb_profile)
    run_cli("normalize", source, "-o", output, "-q")
    assert embedded_profile(chdir / output) == rgb_profile
    run_cli("normalize", source, "-o", "folder", "--ext", "tiff", "-q")  # folders too
    assert embedded_profile(next((chdir / "folder").iterdir())) == rgb_profile


def test_a_profile_of_channels_converted_away_is_dropped(chdir, rng, rgb_profile):
    """An RGB profile does not describe gray (--mode gray), nor a CMYK profile the RGB it became."""
    Image.fromarray(rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)).save(chdir / "rgb.png", icc_profile=rgb_profile)
    run_cli("normalize", "rgb.png", "-o", "gray.png", "--mode", "gray", "-q")
    assert embedded_profile(chdir / "gray.png") is None
    cmyk_profile = rgb_profile[:16] + b"CMYK" + rgb_profile[20:]
    tifffile.imwrite(chdir / "c.tif", rng.integers(0, 256, (6, 7, 4), dtype=np.uint8), photometric="separated",
                     iccprofile=cmyk_profile)
    run_cli("normalize", "c.tif", "-o", "rgb.tif", "-q")
    assert embedded_profile(chdir / "rgb.tif") is None
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(chdir / "plain.png")
    run_cli("normalize", "plain.png", "-o", "plain_out.png", "-q")
    assert embedded_profile(chdir / "plain_out.png") is None  # and nothing is made up for untagged images


# ------------------------------------------------------------------------------ decoding off the GIL
def real_photos() -> list[Image.Image]:
    """scikit-learn's two camera photos (427×640 JPEGs), whole and cut to sizes off the 16-pixel MCU grid."""
    from importlib.resources import files

    pytest.importorskip("sklearn")
    photos = [Image.open(files("sklearn.datasets") / "images" / name).convert("RGB")
              for name in ("china.jpg", "flower.jpg")]
    return [cut for photo in photos for cut in (photo, photo.crop((3, 5, 144, 102)), photo.crop((7, 1, 24, 10)))]


def pillow_shown(path: Path) -> np.ndarray:
    """What Pillow decodes of a file, oriented as ImageOps.exif_transpose shows it."""
    with Image.open(path) as im:
        return pillow_hwc(ImageOps.exif_transpose(im))


def gil_free_files(folder: Path) -> list[Path]:
    """Real photos as JPEGs of every chroma sampling, baseline, optimized and progressive, gray and
    EXIF-rotated, and as gray, RGB and RGBA PNGs: the files imagecodecs decodes instead of Pillow."""
    folder.mkdir()
    for i, photo in enumerate(real_photos()):
        for subsampling, quality, progressive in [(0, 95, False), (1, 75, True), (2, 50, False), (2, 90, True)]:
            photo.save(folder / f"{i}_{subsampling}_{quality}_{progressive}.jpg", quality=quality,
                       subsampling=subsampling, progressive=progressive, optimize=progressive)
        photo.convert("L").save(folder / f"{i}_gray.jpg", quality=85)
        photo.convert("L").save(folder / f"{i}_gray_progressive.jpg", quality=85, progressive=True)
        exif = Image.Exif()
        exif[ORIENTATION] = 6
        photo.save(folder / f"{i}_turned.jpg", quality=90, exif=exif.tobytes())
        for mode in ("L", "RGB", "RGBA"):
            photo.convert(mode).save(folder / f"{i}_{mode}.png")
    return sorted(folder.iterdir())


def test_jpeg_and_png_stills_decode_off_the_gil_to_pillows_pixels(tmp_path):
    for path in gil_free_files(tmp_path / "photos"):
        (header,) = images.read_header((path, path.name))
        assert header.decoder == path.suffix[1:].replace("jpg", "jpeg"), path.name
        want = pillow_shown(path)
        np.testing.assert_array_equal(images.decode(header), want, err_msg=path.name)
        counts = np.stack([np.bincount(want[..., c].reshape(-1), minlength=256) for c in range(want.shape[-1])])
        np.testing.assert_array_equal(images.image_value_counts(header), counts, err_msg=path.name)


def test_files_the_codecs_would_not_decode_as_pillow_are_left_to_pillow(tmp_path, rgb):
    """CMYK, palette, gray+alpha, 1-bit and 16-bit files, and a camera's MPO, name no decoder."""
    color = np.repeat(np.repeat(rgb, 4, axis=0), 4, axis=1)
    files = {"cmyk.jpg": Image.fromarray(color).convert("CMYK"), "p.png": Image.fromarray(color).quantize(12),
             "la.png": Image.fromarray(color).convert("LA"), "one_bit.png": Image.fromarray(color).convert("1"),
             "gray16.png": Image.fromarray(color[..., 0].astype(np.uint16) * 257)}
    for name, im in files.items():
        im.save(tmp_path / name)
    Image.fromarray(color).save(tmp_path / "camera.mpo", "MPO", save_all=True, append_images=[Image.fromarray(color)])
    (tmp_path / "camera.mpo").rename(tmp_path / "camera.jpg")
    for path in sorted(tmp_path.iterdir()):
        (header,) = images.read_header((path, path.name), ReadOptions(frames="first"))
        assert header.decoder is None, path.name
        np.testing.assert_array_equal(images.decode(header), pillow_displayed(path), err_msg=path.name)


def test_a_file_cut_short_reads_as_pillow_reads_it(tmp_path, rgb):
    """libjpeg-turbo fills a cut JPEG in gray and libspng needs nothing past the pixels: such files go
    to Pillow, which calls one cut in its pixels truncated and may read one cut in its end marker."""
    photo = Image.fromarray(np.repeat(np.repeat(rgb, 30, axis=0), 30, axis=1))
    for name in ("x.jpg", "x.png"):
        photo.save(tmp_path / name)
        whole = (tmp_path / name).read_bytes()
        for cut in (len(whole) // 2, len(whole) - 6, len(whole) - 2):
            path = tmp_path / f"cut{cut}_{name}"
            path.write_bytes(whole[:cut])
            (header,) = images.read_header((path, path.name))
            assert header.decoder is not None
            try:
                want = pillow_shown(path)
            except OSError as error:
                assert "runcated" in str(error)
                for read in (images.decode, images.image_value_counts):
                    with pytest.raises(InputError, match="cannot decode image: .*runcated"):
                        read(header)
            else:
                assert cut > len(whole) // 2, "a file cut in its pixels is truncated"
                np.testing.assert_array_equal(images.decode(header), want)


@pytest.mark.parametrize("codec", ["missing", "failing"])
def test_without_a_working_codec_pillow_decodes_the_same_pixels(tmp_path, monkeypatch, codec):
    """An imagecodecs build without the codec, or a codec that refuses a file: Pillow decodes it."""
    tried = []

    def refuse(data, channels):
        tried.append(len(data))
        raise RuntimeError("refused")

    monkeypatch.setattr(images, "_imagecodecs_decoders", lambda: {} if codec == "missing"
                        else {"jpeg": refuse, "png": refuse})
    paths = gil_free_files(tmp_path / "photos")
    for path in paths:
        (header,) = images.read_header((path, path.name))
        np.testing.assert_array_equal(images.decode(header), pillow_shown(path), err_msg=path.name)
        assert images.image_value_counts(header).sum() == header.height * header.width * header.channels
    assert len(tried) == (0 if codec == "missing" else 2 * len(paths))
