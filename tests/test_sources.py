"""Sources: .npy/.npz/stdin/image folders -> one Dataset, read in chunks and batches.

Every expected value comes from the file as numpy, Pillow or tifffile read it, or from the
array the test wrote.
"""

from __future__ import annotations

import io
import json
import re
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import run_cli, write_image
from normcli.errors import InputError, NormcliWarning, UsageMismatch
from normcli.passes import measure
from normcli.png16 import png16_channels, write_png16
from normcli.images import ReadOptions
from normcli.sources import open_dataset

from helpers import read_blocks, take

EVERY_CHANNEL = ReadOptions(include_alpha=True)  # decoding tests: alpha as decoded, not set apart

LUMA = np.array([0.299, 0.587, 0.114])


# ----------------------------------------------------------------------------- helpers
def read_all(dataset, max_bytes=None):
    chunks = list(read_blocks(dataset) if max_bytes is None else read_blocks(dataset, max_bytes))
    return chunks, np.concatenate([c.data for c in chunks])


def check_chunk_starts(chunks):
    start = 0
    for chunk in chunks:
        assert chunk.start == start
        assert len(chunk.data) >= 1
        start += len(chunk.data)
    return start


class TerminalStdin(io.BytesIO):
    """A stdin that is a terminal."""

    def isatty(self):
        return True


def npy_bytes(array) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def luma(image: np.ndarray) -> np.ndarray:
    """The README's gray: Pillow's convert('L') for 8 bits; for 16 bits its fixed-point ITU-R 601-2
    luma (R*19595 + G*38470 + B*7471 + 32768) >> 16, in Python integers."""
    if image.dtype == np.uint8:
        return np.asarray(Image.fromarray(np.ascontiguousarray(image[..., :3])).convert("L"))[..., None]
    r, g, b = (image[..., i].astype(object) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 32768) // 65536).astype(image.dtype)[..., None]


# ----------------------------------------------------------------------------- .npy
NPY_DTYPES = ["<f8", ">f4", "<f4", "<u2", ">i2", "u1"]


@pytest.mark.parametrize("fortran", [False, True])
@pytest.mark.parametrize("dtype", NPY_DTYPES)
def test_npy_in_chunks_equals_np_load(tmp_path, dtype, fortran):
    rng = np.random.default_rng(0)
    x = (rng.normal(50, 30, (23, 5, 4, 3)) if dtype.endswith("f4") or dtype.endswith("f8")
         else rng.integers(0, 200, (23, 5, 4, 3))).astype(dtype)
    path = tmp_path / "x.npy"
    np.save(path, np.asfortranarray(x) if fortran else x)
    want = np.load(path, allow_pickle=False)
    assert want.flags.f_contiguous == fortran and want.dtype == np.dtype(dtype)
    sample_bytes = x[0].nbytes
    for max_bytes in (1, sample_bytes, 3 * sample_bytes + 1, 10 * sample_bytes, 1 << 30):
        with open_dataset([str(path)]) as dataset:
            assert dataset.n_samples == 23 and dataset.sample_shape == (5, 4, 3)
            assert dataset.dtype == np.dtype(dtype).newbyteorder("=")  # native byte order, same type
            chunks, got = read_all(dataset, max_bytes)
        assert check_chunk_starts(chunks) == 23
        assert all(len(c.data) * sample_bytes <= max(max_bytes, sample_bytes) for c in chunks)
        assert all(c.data.dtype.isnative and c.data.flags.c_contiguous for c in chunks)
        np.testing.assert_array_equal(got, want)


@pytest.mark.filterwarnings("ignore::normcli.errors.NormcliWarning")  # NCHW-looking shapes, tested below
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(1, 6), min_size=0, max_size=3), st.integers(1, 5), st.data())
def test_npy_any_shape_and_chunk_size(tmp_path, shape, n, data):
    x = np.arange(n * int(np.prod(shape)), dtype=np.float32).reshape(n, *shape) * 0.5 - 3
    path = tmp_path / "x.npy"
    np.save(path, x)
    max_bytes = data.draw(st.integers(1, x.nbytes + 1))
    with open_dataset([str(path)]) as dataset:
        chunks, got = read_all(dataset, max_bytes)
    assert check_chunk_starts(chunks) == n
    np.testing.assert_array_equal(got, x)


def test_npy_stored_with_large_chunks_by_default(tmp_path):
    x = np.arange(3000, dtype=np.float64).reshape(1000, 3)
    np.save(tmp_path / "x.npy", x)
    with open_dataset([str(tmp_path / "x.npy")]) as dataset:
        chunks, got = read_all(dataset)
    assert len(chunks) == 1
    np.testing.assert_array_equal(got, x)


# ----------------------------------------------------------------------------- .npz
@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_with_key(tmp_path, save):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 3)), rng.integers(0, 9, (9, 4, 4)).astype(np.uint8)
    path = tmp_path / "both.npz"
    save(path, a=a, b=b)
    with open_dataset([str(path)], key="b") as dataset:
        assert dataset.key == "b"
        assert dataset.dtype == np.uint8 and dataset.layout.name == "NHW"
        chunks, got = read_all(dataset, 16)
    assert check_chunk_starts(chunks) == 9
    np.testing.assert_array_equal(got, b)
    with open_dataset([str(path)], key="a") as dataset:
        np.testing.assert_array_equal(read_all(dataset)[1], a)


def test_npz_with_a_single_array_needs_no_key(tmp_path):
    x = np.arange(20, dtype=np.int16).reshape(5, 4)
    np.savez(tmp_path / "one.npz", x)
    np.savez(tmp_path / "named.npz", only=x)
    for name, key in (("one.npz", "arr_0"), ("named.npz", "only")):
        with open_dataset([str(tmp_path / name)]) as dataset:
            assert dataset.key == key
            np.testing.assert_array_equal(read_all(dataset)[1], x)


def test_npz_fortran_order_member(tmp_path):
    x = np.arange(60, dtype=np.float64).reshape(10, 6)
    np.savez(tmp_path / "f.npz", a=np.asfortranarray(x))
    with open_dataset([str(tmp_path / "f.npz")]) as dataset:
        chunks, got = read_all(dataset, 3 * 6 * 8)
        np.testing.assert_array_equal(got, x)
        order = np.array([9, 0, 4])
        np.testing.assert_array_equal(dataset.batches(3, order)[0].read().data, x[order])


def test_npz_with_several_arrays_and_no_key_lists_them(tmp_path):
    path = tmp_path / "many.npz"
    np.savez(path, train=np.zeros((2, 2)), test=np.ones((3, 2)))
    with pytest.raises(InputError) as info:
        open_dataset([str(path)])
    message = str(info.value)
    assert "2 arrays" in message and "train" in message and "test" in message and "--key" in message
    assert str(path) in message and "\n" not in message


def test_npz_unknown_key_lists_the_keys(tmp_path):
    path = tmp_path / "many.npz"
    np.savez(path, train=np.zeros((2, 2)), test=np.ones((3, 2)))
    with pytest.raises(InputError, match=r"no array 'val'.*train.*test|no array 'val'.*test.*train"):
        open_dataset([str(path)], key="val")


def test_npz_that_is_not_a_zip(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(InputError, match="not a valid .npz"):
        open_dataset([str(path)])


# ----------------------------------------------------------------------------- refusals
PICKLE_MARK = Path(os.environ.get("TMPDIR", "/tmp")) / f"normcli-unpickled-{os.getpid()}"


def _unpickled():
    PICKLE_MARK.write_text("unpickled")
    return 0


class Booby:
    """Unpickling this object leaves a file behind: proof that something unpickled it."""

    def __reduce__(self):
        return _unpickled, ()


@pytest.mark.parametrize("container", ["npy", "npz"])
def test_object_arrays_are_refused_without_unpickling(tmp_path, container):
    x = np.array([Booby(), Booby(), 3], dtype=object)
    path = tmp_path / f"objects.{container}"
    if container == "npy":
        np.save(path, x, allow_pickle=True)
    else:
        np.savez(path, x=x)
    PICKLE_MARK.unlink(missing_ok=True)
    with pytest.raises(InputError) as info:
        with open_dataset([str(path)]) as dataset:
            read_all(dataset)
    assert "objects" in str(info.value) and "unpickle" in str(info.value)
    assert str(path) in str(info.value)
    assert not PICKLE_MARK.exists()


@pytest.mark.parametrize("fortran", [False, True])
def test_truncated_npy_is_an_input_error(tmp_path, fortran):
    x = np.arange(400, dtype=np.float32).reshape(20, 20)
    whole = tmp_path / "whole.npy"
    np.save(whole, np.asfortranarray(x) if fortran else x)
    path = tmp_path / "cut.npy"
    path.write_bytes(whole.read_bytes()[:-30])
    with pytest.raises(InputError) as info:
        with open_dataset([str(path)]) as dataset:
            read_all(dataset, 64)
    assert "truncated" in str(info.value) and str(path) in str(info.value)


def test_not_an_npy_file(tmp_path):
    path = tmp_path / "fake.npy"
    path.write_bytes(b"hello, this is text")
    with pytest.raises(InputError, match="not a .npy array") as info:
        open_dataset([str(path)])
    assert str(path) in str(info.value)


@pytest.mark.parametrize("shape", [(), (2, 2, 2, 2, 2)])
def test_arrays_with_too_few_or_too_many_axes(tmp_path, shape):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros(shape))
    with pytest.raises(InputError, match="1 to 4 axes"):
        open_dataset([str(path)])


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(InputError, match="no such file") as info:
        open_dataset([str(tmp_path / "nowhere.npy")])
    assert "nowhere.npy" in str(info.value)
    csv = tmp_path / "table.csv"
    csv.write_text("1,2\n3,4\n")
    with pytest.raises(InputError, match="unknown input type") as info:
        open_dataset([str(csv)])
    assert ".npy" in str(info.value) and str(csv) in str(info.value)


# ----------------------------------------------------------------------------- several inputs
def test_several_inputs_are_concatenated_in_order(tmp_path):
    rng = np.random.default_rng(2)
    arrays = [rng.normal(size=(n, 4, 2)).astype(np.float32) for n in (5, 1, 8)]
    names = []
    for i, (name, x) in enumerate(zip(("z.npy", "a.npy", "m.npy"), arrays)):
        np.save(tmp_path / name, x)
        names.append(str(tmp_path / name))
    with open_dataset(names) as dataset:
        assert dataset.inputs == names and dataset.n_samples == 14
        for max_bytes in (1, 100, 1 << 20):
            chunks, got = read_all(dataset, max_bytes)
            assert check_chunk_starts(chunks) == 14
            np.testing.assert_array_equal(got, np.concatenate(arrays))
        assert dataset.locate(0) == (names[0], 0)
        assert dataset.locate(5) == (names[1], 0)
        assert dataset.locate(13) == (names[2], 7)


def test_several_inputs_promote_their_dtypes(tmp_path):
    a = np.arange(6, dtype=np.uint8).reshape(3, 2)
    b = np.linspace(0, 1, 4, dtype=np.float32).reshape(2, 2)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    with open_dataset([str(tmp_path / "a.npy"), str(tmp_path / "b.npy")]) as dataset:
        assert dataset.dtype == np.result_type(a.dtype, b.dtype)
        got = read_all(dataset)[1]
    assert got.dtype == np.result_type(a.dtype, b.dtype)
    np.testing.assert_array_equal(got, np.concatenate([a, b]))


def test_mismatched_sample_shapes_are_an_input_error(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((4, 3)))
    np.save(tmp_path / "b.npy", np.zeros((4, 5)))
    with pytest.raises(InputError) as info:
        open_dataset([str(tmp_path / "a.npy"), str(tmp_path / "b.npy")])
    message = str(info.value)
    assert "(5,)" in message and "(3,)" in message and "do not match" in message
    assert message.endswith(f"({tmp_path / 'b.npy'})")


def test_mismatched_axis_counts_are_an_input_error(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((4, 3)))
    np.save(tmp_path / "b.npy", np.zeros((4, 3, 1)))
    with pytest.raises(InputError, match="3 axes.*2"):
        open_dataset([str(tmp_path / "a.npy"), str(tmp_path / "b.npy")])


# ----------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("shape, layout", [((7,), "N"), ((7, 3), "NC"), ((7, 5, 4), "NHW"),
                                           ((7, 5, 4, 3), "NHWC")])
def test_default_layout_by_axis_count(tmp_path, shape, layout):
    np.save(tmp_path / "x.npy", np.zeros(shape))
    with open_dataset([str(tmp_path / "x.npy")]) as dataset:
        assert dataset.layout.name == layout
        assert dataset.sample_shape == shape[1:]
        assert dataset.channels == (shape[-1] if "C" in layout else 1)


def test_named_layout_any_case(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((7, 3, 5, 4)))
    with open_dataset([str(tmp_path / "x.npy")], layout="nchw") as dataset:
        assert dataset.layout.name == "NCHW" and dataset.channels == 3


def test_layout_that_does_not_fit_is_a_usage_error(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((7, 3, 5)))
    with pytest.raises(UsageMismatch, match="NCHW needs 4 axes"):
        open_dataset([str(tmp_path / "x.npy")], layout="NCHW")
    with pytest.raises(UsageMismatch, match="unknown layout NWHC"):
        open_dataset([str(tmp_path / "x.npy")], layout="NWHC")


def test_nchw_looking_array_warns(tmp_path):
    path = tmp_path / "torch.npy"
    np.save(path, np.zeros((6, 3, 16, 16), np.float32))
    with pytest.warns(NormcliWarning) as record:
        dataset = open_dataset([str(path)])
    dataset.close()
    message = str(record[0].message)
    assert "NCHW" in message and "--layout NCHW" in message and "(6, 3, 16, 16)" in message
    assert dataset.layout.name == "NHWC"  # still the default: a warning, not a guess


@pytest.mark.parametrize("shape, layout", [((6, 3, 16, 16), "NHWC"), ((6, 3, 16, 16), "NCHW"),
                                           ((6, 16, 16, 3), None), ((6, 3, 16, 4), None)])
def test_no_warning_when_the_layout_is_named_or_unambiguous(tmp_path, shape, layout):
    np.save(tmp_path / "x.npy", np.zeros(shape, np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error", NormcliWarning)
        open_dataset([str(tmp_path / "x.npy")], layout=layout).close()


# ----------------------------------------------------------------------------- stdin
def test_stdin_reads_an_npy_stream(tmp_path, monkeypatch):
    x = np.random.default_rng(3).normal(size=(9, 4, 4, 1)).astype(">f4")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    dataset = open_dataset(["-"], stdin=io.BytesIO(npy_bytes(x)))
    assert dataset.inputs == ["-"] and dataset.n_samples == 9 and dataset.layout.name == "NHWC"
    chunks, got = read_all(dataset, 100)
    np.testing.assert_array_equal(got, x)
    assert got.dtype == np.float32 and got.dtype.isnative
    np.testing.assert_array_equal(take(dataset, [8, 2]), x[[8, 2]])  # read twice: spooled, not consumed
    dataset.close()
    assert list(tmp_path.iterdir()) == []  # the spool is gone


@pytest.mark.parametrize("stdin", [TerminalStdin(), None], ids=["terminal", "closed"])
def test_stdin_terminal_is_an_input_error(stdin):
    with pytest.raises(InputError, match="stdin is a terminal") as info:
        open_dataset(["-"], stdin=stdin)
    assert str(info.value).endswith("(-)")


def test_stdin_with_a_file_after_it(tmp_path):
    a = np.arange(6, dtype=np.float64).reshape(3, 2)
    b = -np.arange(4, dtype=np.float64).reshape(2, 2)
    np.save(tmp_path / "b.npy", b)
    with open_dataset(["-", str(tmp_path / "b.npy")], stdin=io.BytesIO(npy_bytes(a))) as dataset:
        np.testing.assert_array_equal(read_all(dataset)[1], np.concatenate([a, b]))


def test_stdin_garbage_is_an_input_error_and_leaves_no_spool(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    with pytest.raises(InputError, match="not a .npy array"):
        open_dataset(["-"], stdin=io.BytesIO(b"definitely not npy"))
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- image folders
def solid(value, shape, dtype=np.uint8):
    return np.full(shape, value, dtype)


def test_folder_is_read_recursively_sorted_by_relative_path(tmp_path):
    root = tmp_path / "tree"
    # created in this order; listed in relative-path order, which interleaves the subfolder
    relpaths = ["a0.png", "a/b.png", "a.png", "a-b.png", "Z.png", "a/c/d.PNG", "b/a.png"]
    for value, rel in enumerate(relpaths):
        write_image(root / rel, solid(value * 10, (4, 3)))
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "a" / "data.npy").write_bytes(npy_bytes(np.zeros(3)))
    expected = sorted(relpaths)
    with open_dataset([str(root)]) as dataset:
        assert dataset.n_samples == len(relpaths)
        chunks, got = read_all(dataset, 12)  # one image per chunk
        names = [n for c in chunks for n in c.names]
        assert names == expected
        np.testing.assert_array_equal(got[:, 0, 0, 0], [relpaths.index(r) * 10 for r in expected])
        assert dataset.locate(1) == (str(root), expected[1])


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_8bit_png_keeps_its_channels(tmp_path, channels):
    rng = np.random.default_rng(channels)
    images = [rng.integers(0, 256, (5, 7, channels) if channels > 1 else (5, 7), dtype=np.uint8) for _ in range(3)]
    for i, image in enumerate(images):
        write_image(tmp_path / "png" / f"{i}.png", image)
    with open_dataset([str(tmp_path / "png")], images=EVERY_CHANNEL) as dataset:
        assert dataset.sample_shape == (5, 7, channels) and dataset.dtype == np.uint8
        assert dataset.layout.name == "NHWC"
        got = read_all(dataset)[1]
    np.testing.assert_array_equal(got, np.stack(images).reshape(3, 5, 7, channels))


def test_16bit_gray_png_keeps_16_bits(tmp_path):
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 65536, (6, 5), dtype=np.uint16) for _ in range(2)]
    images[0][0, 0], images[1][0, 0] = 65535, 0
    for i, image in enumerate(images):
        write_image(tmp_path / "g16" / f"{i}.png", image)
    assert png16_channels(tmp_path / "g16" / "0.png") == 1
    with open_dataset([str(tmp_path / "g16")]) as dataset:
        assert dataset.dtype == np.uint16 and dataset.sample_shape == (6, 5, 1)
        got = read_all(dataset)[1]
    np.testing.assert_array_equal(got[..., 0], np.stack(images))


@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_color_png_keeps_16_bits(tmp_path, channels):
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 65536, (4, 6, channels), dtype=np.uint16) for _ in range(3)]
    (tmp_path / "c16").mkdir()
    for i, image in enumerate(images):
        write_png16(tmp_path / "c16" / f"{i}.png", image)
    with open_dataset([str(tmp_path / "c16")], images=EVERY_CHANNEL) as dataset:
        assert dataset.dtype == np.uint16 and dataset.sample_shape == (4, 6, channels)
        got = read_all(dataset)[1]
    np.testing.assert_array_equal(got, np.stack(images))


def test_jpeg_decodes_like_pillow(tmp_path):
    rng = np.random.default_rng(6)
    write_image(tmp_path / "j" / "rgb.jpg", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    write_image(tmp_path / "g" / "gray.jpeg", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    for folder, channels in (("j", 3), ("g", 1)):
        path = next((tmp_path / folder).iterdir())
        with open_dataset([str(tmp_path / folder)]) as dataset:
            assert dataset.dtype == np.uint8 and dataset.sample_shape == (8, 8, channels)
            got = read_all(dataset)[1]
        with Image.open(path) as im:
            want = np.asarray(im)
        np.testing.assert_array_equal(got[0], want.reshape(8, 8, channels))


def test_float32_tiff_keeps_its_values(tmp_path):
    rng = np.random.default_rng(7)
    images = [rng.normal(0, 1e3, (5, 4)).astype(np.float32) for _ in range(2)]
    images[0][0, 0], images[1][1, 1] = -3.5e30, np.float32(1e-30)
    for i, image in enumerate(images):
        write_image(tmp_path / "t" / f"{i}.tif", image)
    with open_dataset([str(tmp_path / "t")]) as dataset:
        assert dataset.dtype == np.float32 and dataset.sample_shape == (5, 4, 1)
        got = read_all(dataset)[1]
    np.testing.assert_array_equal(got[..., 0], np.stack(images))


def test_uint16_rgb_tiff_keeps_16_bits(tmp_path):
    rng = np.random.default_rng(8)
    image = rng.integers(0, 65536, (5, 4, 3), dtype=np.uint16)
    write_image(tmp_path / "t" / "0.tiff", image)
    with open_dataset([str(tmp_path / "t")]) as dataset:
        assert dataset.dtype == np.uint16 and dataset.sample_shape == (5, 4, 3)
        np.testing.assert_array_equal(read_all(dataset)[1][0], image)


def test_single_image_file_as_input(tmp_path):
    image = np.random.default_rng(9).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    path = write_image(tmp_path / "one.png", image)
    with open_dataset([str(path)]) as dataset:
        assert dataset.n_samples == 1
        chunks, got = read_all(dataset)
    np.testing.assert_array_equal(got[0], image)
    assert chunks[0].names == ["one.png"]


# ------------------------------------------------------------------ mixed sizes and channels
def test_mixed_sizes_give_none_and_chunks_split_at_size_changes(image_tree):
    files = sorted(p.relative_to(image_tree).as_posix() for p in image_tree.rglob("*.png"))
    images = {}
    for rel in files:
        with Image.open(image_tree / rel) as im:
            images[rel] = np.asarray(im)
    with open_dataset([str(image_tree)]) as dataset:
        assert dataset.sample_shape == (None, None, 3)
        assert not dataset.uniform and dataset.channels == 3
        for max_bytes in (1, 1 << 20):
            chunks = list(read_blocks(dataset, max_bytes))
            assert check_chunk_starts(chunks) == len(files)
            names = [n for c in chunks for n in c.names]
            assert names == files
            for chunk in chunks:
                for name, image in zip(chunk.names, chunk.data):
                    np.testing.assert_array_equal(image, images[name])
            if max_bytes > 1:  # runs of equal size stay together, a size change starts a chunk
                runs = 1 + sum(images[a].shape != images[b].shape for a, b in zip(files, files[1:]))
                assert len(chunks) == runs
        stats = measure(dataset, "channel", bins=0)
        pixels = np.concatenate([images[f].reshape(-1, 3) for f in files]).astype(np.float64)
        np.testing.assert_array_equal(stats.moments.count, len(pixels))
        np.testing.assert_allclose(stats.moments.mean, pixels.mean(axis=0), rtol=1e-14)
        np.testing.assert_allclose(stats.moments.var(), pixels.var(axis=0), rtol=1e-12)
        with pytest.raises(InputError, match="--per pixel.*differ in size"):
            measure(dataset, "pixel", bins=0)


def test_only_the_varying_dimension_is_none(tmp_path):
    write_image(tmp_path / "f" / "0.png", solid(1, (6, 4, 3)))
    write_image(tmp_path / "f" / "1.png", solid(2, (9, 4, 3)))
    with open_dataset([str(tmp_path / "f")]) as dataset:
        assert dataset.sample_shape == (None, 4, 3)


def test_differing_channel_counts_need_mode(tmp_path):
    write_image(tmp_path / "f" / "gray.png", solid(1, (4, 4)))
    write_image(tmp_path / "f" / "rgb.png", solid(2, (4, 4, 3)))
    with pytest.raises(InputError) as info:
        open_dataset([str(tmp_path / "f")])
    message = str(info.value)
    assert "differ in channels" in message and "--mode" in message
    assert "gray.png" in message and "rgb.png" in message and "\n" not in message


def test_differing_bit_depths_are_an_input_error(tmp_path):
    write_image(tmp_path / "f" / "a.png", solid(1, (4, 4)))
    write_image(tmp_path / "f" / "b.png", solid(1000, (4, 4), np.uint16))
    with pytest.raises(InputError, match="bit depth"):
        open_dataset([str(tmp_path / "f")])


@pytest.fixture
def mixed_channels(tmp_path):
    """gray, gray+alpha, RGB and RGBA 8-bit images of one size, sorted in this order."""
    rng = np.random.default_rng(10)
    root = tmp_path / "mixed"
    images = {
        "0_gray.png": rng.integers(0, 256, (5, 6, 1), dtype=np.uint8),
        "1_la.png": rng.integers(0, 256, (5, 6, 2), dtype=np.uint8),
        "2_rgb.png": rng.integers(0, 256, (5, 6, 3), dtype=np.uint8),
        "3_rgba.png": rng.integers(0, 256, (5, 6, 4), dtype=np.uint8),
    }
    for name, image in images.items():
        write_image(root / name, image[..., 0] if image.shape[-1] == 1 else image)
    return root, images


def expected_conversion(image: np.ndarray, mode: str) -> np.ndarray:
    """The contract's conversions, spelled out: gray = rounded 601 luma of RGB (gray stays gray);
    rgb = gray repeated or alpha dropped; rgba = rgb plus the alpha, or an opaque one."""
    channels = image.shape[-1]
    gray_like = channels <= 2
    rgb = np.repeat(image[..., :1], 3, axis=-1) if gray_like else image[..., :3]
    if mode == "gray":
        return image[..., :1] if gray_like else luma(image)
    if mode == "rgb":
        return rgb
    alpha = image[..., -1:] if channels in (2, 4) else np.full(image.shape[:2] + (1,), np.iinfo(image.dtype).max,
                                                                image.dtype)
    return np.concatenate([rgb, alpha], axis=-1)


@pytest.mark.parametrize("mode, channels", [("gray", 1), ("rgb", 3), ("rgba", 4)])
def test_mode_converts_every_image(mixed_channels, mode, channels):
    root, images = mixed_channels
    with open_dataset([str(root)], mode=mode, images=EVERY_CHANNEL) as dataset:
        assert dataset.sample_shape == (5, 6, channels) and dataset.dtype == np.uint8
        chunks, got = read_all(dataset)
    names = [n for c in chunks for n in c.names]
    assert names == sorted(images)
    for name, image in zip(names, got):
        np.testing.assert_array_equal(image, expected_conversion(images[name], mode), err_msg=f"{name} {mode}")


def test_gray_mode_rounds_the_luma(tmp_path):
    """Every RGB triple with a fractional luma near .5: rounding, not truncation."""
    rng = np.random.default_rng(11)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    write_image(tmp_path / "c" / "x.png", rgb)
    with open_dataset([str(tmp_path / "c")], mode="gray") as dataset:
        got = read_all(dataset)[1][0]
    want = luma(rgb)
    np.testing.assert_array_equal(got, want)
    truncated = np.floor(rgb.astype(np.float64) @ LUMA).astype(np.uint8)[..., None]
    assert (want != truncated).any()  # the test tells rounding from truncation
    rounded = np.rint(rgb.astype(np.float64) @ LUMA).astype(np.uint8)[..., None]
    assert (want != rounded).any()  # and Pillow's fixed point from float luma rounded


@pytest.mark.parametrize("mode", ["gray", "rgba"])
def test_mode_on_16bit_color(tmp_path, mode):
    image = np.random.default_rng(12).integers(0, 65536, (4, 5, 3), dtype=np.uint16)
    (tmp_path / "c").mkdir()
    write_png16(tmp_path / "c" / "x.png", image)
    with open_dataset([str(tmp_path / "c")], mode=mode, images=EVERY_CHANNEL) as dataset:
        assert dataset.dtype == np.uint16
        got = read_all(dataset)[1][0]
    np.testing.assert_array_equal(got, expected_conversion(image, mode))


def test_folder_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "readme.txt").write_text("hi")
    for name in ("empty", "text"):
        with pytest.raises(InputError) as info:
            open_dataset([str(tmp_path / name)])
        assert "holds no images" in str(info.value) and "png" in str(info.value)
        assert str(tmp_path / name) in str(info.value)


def test_layout_other_than_nhwc_for_images_is_a_usage_error(image_tree):
    with pytest.raises(UsageMismatch, match="NHWC"):
        open_dataset([str(image_tree)], layout="NCHW")


def test_unreadable_image_names_the_file(tmp_path):
    path = tmp_path / "f" / "broken.png"
    path.parent.mkdir()
    path.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(InputError, match="cannot read image") as info:
        open_dataset([str(tmp_path / "f")])
    assert "broken.png" in str(info.value)


# ----------------------------------------------------------------------------- batches
@pytest.fixture
def three_inputs(tmp_path):
    rng = np.random.default_rng(13)
    arrays = [rng.normal(size=(n, 3, 2)) for n in (7, 2, 4)]
    names = []
    for i, x in enumerate(arrays):
        names.append(str(tmp_path / f"{i}.npy"))
        np.save(names[-1], x)
    return names, np.concatenate(arrays)


@pytest.mark.parametrize("batch", [1, 2, 3, 4, 5, 7, 13, 20])
def test_batches_are_exact_across_input_boundaries(three_inputs, batch):
    names, full = three_inputs
    with open_dataset(names) as dataset:
        batches = [b.read() for b in dataset.batches(batch)]
    n = len(full)
    assert [len(b.data) for b in batches] == [batch] * (n // batch) + ([n % batch] if n % batch else [])
    assert [b.start for b in batches] == list(range(0, n, batch))
    np.testing.assert_array_equal(np.concatenate([b.data for b in batches]), full)


@pytest.mark.parametrize("batch", [1, 4, 5, 13])
def test_batches_in_a_given_order(three_inputs, batch):
    names, full = three_inputs
    order = np.random.default_rng(14).permutation(len(full))
    with open_dataset(names) as dataset:
        batches = [b.read() for b in dataset.batches(batch, order)]
    assert [b.start for b in batches] == list(range(0, len(full), batch))
    for b in batches:
        np.testing.assert_array_equal(b.data, full[order[b.start:b.start + batch]])
    assert sum(len(b.data) for b in batches) == len(full)


def test_batches_of_images_carry_their_names(tmp_path):
    rng = np.random.default_rng(15)
    root = tmp_path / "imgs"
    images = {f"{c}/{i}.png": rng.integers(0, 256, (3, 4, 3), dtype=np.uint8) for c in "ab" for i in range(3)}
    for name, image in images.items():
        write_image(root / name, image)
    names = sorted(images)
    with open_dataset([str(root)]) as dataset:
        batches = [b.read() for b in dataset.batches(4)]
        assert [b.names for b in batches] == [names[:4], names[4:]]
        for b in batches:
            np.testing.assert_array_equal(b.data, np.stack([images[n] for n in b.names]))
        order = np.array([5, 0, 3, 1, 4, 2])
        shuffled = [b.read() for b in dataset.batches(4, order)]
    assert [b.names for b in shuffled] == [[names[i] for i in order[:4]], [names[i] for i in order[4:]]]
    np.testing.assert_array_equal(shuffled[0].data, np.stack([images[names[i]] for i in order[:4]]))


def test_batches_across_image_sizes_are_an_input_error(image_tree):
    with open_dataset([str(image_tree)]) as dataset:
        with pytest.raises(InputError, match="different sizes"):
            [b.read() for b in dataset.batches(4)]


# ------------------------------------------------------------------------------ folders of .npy samples
def npy_folder(folder: Path, samples: np.ndarray, names=None) -> Path:
    """One .npy file a sample, as `-o FOLDER --ext npy` writes them (zero-padded index names)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, sample in enumerate(samples):
        np.save(folder / (names[i] if names else f"{i:06d}.npy"), sample)
    return folder


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 12), shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       dtype=st.sampled_from([np.uint8, np.int16, np.float32, np.float64]), max_bytes=st.integers(1, 400))
def test_an_npy_folder_reads_one_sample_a_file_in_sorted_order(tmp_path, n, shape, dtype, max_bytes):
    samples = (np.arange(n * max(1, int(np.prod(shape))), dtype=np.int64) % 97).astype(dtype).reshape(n, *shape)
    folder = npy_folder(tmp_path / f"f{n}_{len(shape)}_{np.dtype(dtype).name}_{max_bytes}", samples)
    (folder / ".hidden.npy").write_bytes(b"not read")  # dot-files are skipped as in image folders
    with open_dataset([str(folder)]) as dataset:
        assert (dataset.n_samples, dataset.sample_shape, dataset.dtype) == (n, tuple(shape), samples.dtype)
        got = np.concatenate([chunk.data for chunk in read_blocks(dataset, max_bytes)])
        assert dataset.sample_names() == [f"{i:06d}.npy" for i in range(n)]
        np.testing.assert_array_equal(take(dataset, list(range(n))[::-1]), samples[::-1])
    np.testing.assert_array_equal(got, samples)


def test_an_npy_folder_written_by_normcli_round_trips(chdir, rng):
    data = rng.normal(5, 2, (9, 4, 5, 3))
    np.save(chdir / "x.npy", data)
    run_cli("standardize", "x.npy", "-o", "z", "--ext", "npy", "--save-stats", "s.json", "-q")
    stats = json.loads(run_cli("stats", "z", "--per", "channel", "--format", "json").stdout)
    written = np.stack([np.load(chdir / "z" / f"{i:06d}.npy") for i in range(9)]).astype(np.float64)
    np.testing.assert_allclose([row["mean"] for row in stats["rows"]], written.mean(axis=(0, 1, 2)), rtol=0,
                               atol=1e-12)
    run_cli("standardize", "z", "--inverse", "--stats-from", "s.json", "-o", "back", "-q")  # npy in, npy out
    assert sorted(p.name for p in (chdir / "back").iterdir()) == [f"{i:06d}.npy" for i in range(9)]
    back = np.stack([np.load(chdir / "back" / f"{i:06d}.npy") for i in range(9)])
    np.testing.assert_allclose(back, data, rtol=1e-5, atol=1e-5)  # float32 outputs, twice
    per_sample = json.loads(run_cli("stats", "z", "--per", "sample", "--engine", "processes",
                                    "--format", "json").stdout)
    assert [row["file"] for row in per_sample["rows"]] == [f"{i:06d}.npy" for i in range(9)]


def test_a_folder_with_images_is_an_image_folder_whatever_npy_it_holds(tmp_path, rng):
    write_image(tmp_path / "in" / "a.png", rng.integers(0, 256, (4, 5), dtype=np.uint8))
    np.save(tmp_path / "in" / "b.npy", np.zeros((4, 5)))
    with open_dataset([str(tmp_path / "in")]) as dataset:
        assert dataset.sample_names() == ["a.png"] and dataset.dtype == np.uint8


def test_an_npy_folder_of_images_keeps_their_names(chdir, rng):
    for name in ("a.png", "b/c.png"):
        write_image(chdir / "img" / name, rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
    run_cli("normalize", "img", "-o", "arr", "--ext", "npy", "-q")
    run_cli("normalize", "arr", "-o", "png", "--ext", "png", "-q")
    assert sorted(p.relative_to(chdir / "png").as_posix() for p in (chdir / "png").rglob("*.png")) == ["a.png",
                                                                                                      "b/c.png"]


@pytest.mark.parametrize("second, message", [
    ("shape", r"a sample of shape \(3, 4\) and dtype float64, where .*a\.npy has \(2, 4\) and float64"),
    ("scalar", r"array of shape \(\): normcli wants 1 to 4 axes"),
])
def test_a_folder_that_is_not_one_set_of_npy_samples_is_refused(chdir, second, message):
    (chdir / "in").mkdir()
    np.save(chdir / "in" / "a.npy", np.zeros((2, 4)))
    np.save(chdir / "in" / "b.npy", np.zeros((3, 4)) if second == "shape" else np.float64(1))
    before = sorted(os.listdir(chdir / "in"))
    result = run_cli("normalize", "in", "-o", "out", ok=False)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and re.search(message, result.stderr)
    assert not (chdir / "out").exists() and sorted(os.listdir(chdir / "in")) == before
