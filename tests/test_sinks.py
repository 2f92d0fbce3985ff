"""Outputs through passes.transform: .npy, .npz, stdout, folders of PNG (8/16-bit), TIFF and .npy;
range checks before writing, --clip, and atomic writes that leave nothing behind on failure."""

from __future__ import annotations

import io
import itertools
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli, write_image
from normcli.errors import OutputError, UsageMismatch
from normcli.plans import ScalePlan
from normcli.sources import Dataset, open_dataset
from normcli.transforms import Affine, minmax, zscore

from helpers import read_blocks, save, transform



def linear_plan(scale: float, offset: float = 0.0) -> ScalePlan:
    """y = x * scale + offset, the same for every value."""
    return ScalePlan("global", lambda m: Affine(np.zeros(1), np.full(1, scale), np.full(1, offset)))


def standardize_plan() -> ScalePlan:
    return ScalePlan("global", lambda m: zscore(m))


def run(inputs, plan, output, **kw):
    with open_dataset([str(i) for i in inputs], layout=kw.pop("layout", None), key=kw.pop("key", None)) as dataset:
        return transform(dataset, plan, str(output), bins=kw.pop("bins", 0), **kw)


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def listing(folder: Path) -> list[str]:
    """Everything in a folder, hidden temporary files included."""
    return sorted(p.name for p in folder.iterdir())


def read_png(path: Path) -> np.ndarray:
    """A PNG as (H, W, C) in its own bit depth (16-bit RGB through the project's own decoder)."""
    from normcli.png16 import png16_channels, read_png16

    if png16_channels(path) is not None and Image.open(path).mode not in ("I;16", "I;16B", "I;16L", "I"):
        return read_png16(path)
    with Image.open(path) as im:
        image = np.asarray(im)
    return image.reshape(image.shape[0], image.shape[1], -1)


@pytest.fixture
def array(rng):
    """12 samples of 5×4×1 float64, values well outside [0, 1]."""
    return rng.normal(26.0, 17.0, (12, 5, 4, 1))


@pytest.fixture
def gray16_tree(tmp_path, rng) -> Path:
    root = tmp_path / "gray16"
    for name in ("x/0.png", "x/1.png", "y/2.png"):
        write_image(root / name, rng.integers(0, 65536, (6, 7), dtype=np.uint16))
    return root


@pytest.fixture
def rgb16_tree(tmp_path, rng) -> Path:
    root = tmp_path / "rgb16"
    for name in ("0.png", "1.png"):
        write_image(root / name, rng.integers(0, 65536, (5, 6, 3), dtype=np.uint16))
    return root


def tree_images(root: Path) -> dict[str, np.ndarray]:
    return {name: read_png(root / name) for name in files_under(root)}


# ------------------------------------------------------------------------------ arrays
@pytest.mark.parametrize("dtype", [None, "float32", "float64"])
def test_npy_output_reads_back(tmp_path, array, dtype):
    out = tmp_path / "out.npy"
    run([save(tmp_path, array)], ScalePlan("global", lambda m: minmax(m)), out, dtype=dtype)
    y = np.load(out, allow_pickle=False)
    assert y.dtype == np.dtype(dtype or "float32") and y.shape == array.shape
    expected = (array - array.min()) / (array.max() - array.min())
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-12 if dtype == "float64" else 1e-6)


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_integer_npy_output_maps_0_1_onto_the_full_range(tmp_path, array, dtype):
    out = tmp_path / "out.npy"
    run([save(tmp_path, array)], ScalePlan("global", lambda m: minmax(m)), out, dtype=dtype)
    y = np.load(out)
    top = np.iinfo(dtype).max
    expected = np.rint((array - array.min()) / (array.max() - array.min()) * top)
    assert y.dtype == np.dtype(dtype) and y.min() == 0 and y.max() == top
    assert np.abs(y.astype(np.int64) - expected).max() <= 1 and (y == expected).mean() > 0.99


def test_npz_output_keeps_the_input_key(tmp_path, array, rng):
    source = tmp_path / "in.npz"
    np.savez(source, images=array, labels=rng.integers(0, 3, 12))
    out = tmp_path / "out.npz"
    run([source], linear_plan(2.0, 1.0), out, key="images", dtype="float64")
    with np.load(out, allow_pickle=False) as archive:
        assert archive.files == ["images"]
        np.testing.assert_array_equal(archive["images"], array * 2.0 + 1.0)


def test_npz_output_of_an_npy_input_is_called_data(tmp_path, array):
    out = tmp_path / "out.npz"
    run([save(tmp_path, array)], linear_plan(0.5), out)
    with np.load(out, allow_pickle=False) as archive:
        assert archive.files == ["data"]
        np.testing.assert_array_equal(archive["data"], (array * 0.5).astype(np.float32))


def test_stdout_output_is_a_npy_stream(tmp_path, array):
    stdout = io.BytesIO()
    run([save(tmp_path, array)], linear_plan(-1.0, 3.0), "-", dtype="float64", stdout=stdout)
    y = np.load(io.BytesIO(stdout.getvalue()), allow_pickle=False)
    np.testing.assert_array_equal(y, 3.0 - array)


# ------------------------------------------------------------------------------ folders
def test_png_folder_mirrors_the_input_tree_8bit(tmp_path, image_tree):
    out = tmp_path / "out"
    result = run([image_tree], linear_plan(1 / 255), out)
    assert files_under(out) == files_under(image_tree) == ["a/0.png", "a/1.png", "b/2.png", "b/c/3.png"]
    originals, written = tree_images(image_tree), tree_images(out)
    for name, image in originals.items():
        assert written[name].dtype == np.uint8
        np.testing.assert_array_equal(written[name], image, err_msg=name)
    assert result.clipped == 0


@pytest.mark.parametrize("tree", ["gray16_tree", "rgb16_tree"])
def test_png_16bit_input_stays_16bit(tmp_path, tree, request):
    root = request.getfixturevalue(tree)
    out = tmp_path / "out16"
    run([root], linear_plan(1 / 65535), out)
    originals, written = tree_images(root), tree_images(out)
    assert sorted(written) == sorted(originals)
    for name, image in originals.items():
        assert written[name].dtype == np.uint16
        np.testing.assert_array_equal(written[name], image, err_msg=name)


@pytest.mark.parametrize("dtype, ext, written_dtype", [
    ("int16", "png", "uint16"), ("int16", "tiff", "uint16"), ("int8", "tiff", "uint8"),
    ("int32", "png", "uint16"), ("int32", "tiff", "float32"), ("int8", "png", "uint8")])
def test_signed_integer_tiffs_keep_their_bit_depth(tmp_path, rng, dtype, ext, written_dtype):
    """An int16 elevation TIFF (with -32768 as nodata) normalized to PNG is 16-bit, as a uint16 one is."""
    import tifffile

    info = np.iinfo(dtype)
    image = rng.integers(info.min, info.max, (6, 7), dtype=dtype, endpoint=True)
    image[0, 0], image[0, 1] = info.min, info.max
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "e.tif", image)
    out = tmp_path / "out"
    result = run_cli("normalize", tmp_path / "in", "-o", out, "--ext", ext, "--quiet")
    assert result.exit_code == 0, result.output
    (name,) = files_under(out)  # e.png, or e.tif kept as named
    written = (read_png if ext == "png" else tifffile.imread)(out / name).reshape(image.shape)
    assert written.dtype == written_dtype
    exact = (image.astype(np.float64) - info.min) / (float(info.max) - info.min)
    top, step = (1.0, 1e-7) if written_dtype == "float32" else (np.iinfo(written_dtype).max, 0.5)
    assert np.abs(written / top - exact).max() <= step / top  # the nearest level (float32: its rounding)


def test_png_16bit_input_to_8bit_with_dtype(tmp_path, gray16_tree):
    out = tmp_path / "out8"
    run([gray16_tree], linear_plan(1 / 65535), out, dtype="uint8")
    for name, image in tree_images(gray16_tree).items():
        written = read_png(out / name)
        assert written.dtype == np.uint8
        np.testing.assert_array_equal(written, np.rint(image / 65535 * 255).astype(np.uint8), err_msg=name)


def test_tiff_folder_of_float32_with_zero_padded_names(tmp_path, array):
    tifffile = pytest.importorskip("tifffile")
    out = tmp_path / "tiffs"
    run([save(tmp_path, array)], standardize_plan(), out)  # arrays default to TIFF
    assert files_under(out) == [f"{i:06d}.tiff" for i in range(len(array))]
    expected = ((array - array.mean()) / array.std()).astype(np.float32)
    for i in range(len(array)):
        image = tifffile.imread(out / f"{i:06d}.tiff")
        assert image.dtype == np.float32 and image.shape == (5, 4)
        np.testing.assert_allclose(image, expected[i, ..., 0], rtol=0, atol=1e-6)


def test_tiff_folder_from_nchw_arrays_writes_hwc_images(tmp_path, rng):
    tifffile = pytest.importorskip("tifffile")
    x = rng.normal(size=(3, 3, 5, 4))
    out = tmp_path / "tiffs"
    run([save(tmp_path, x)], linear_plan(1.0), out, layout="NCHW", ext="tiff")
    for i in range(3):
        np.testing.assert_array_equal(tifffile.imread(out / f"{i:06d}.tiff"),
                                      x[i].transpose(1, 2, 0).astype(np.float32))


@pytest.mark.parametrize("channels", [1, 2, 3, 4, 5])
@pytest.mark.filterwarnings("error::DeprecationWarning")  # tifffile's guess about RGB is going away
def test_tiff_folder_holds_every_channel_count(tmp_path, rng, channels):
    tifffile = pytest.importorskip("tifffile")
    x = rng.normal(size=(3, 5, 4, channels))
    out = tmp_path / "tiffs"
    run([save(tmp_path, x)], linear_plan(1.0), out, layout="NHWC")
    for i in range(3):
        with tifffile.TiffFile(out / f"{i:06d}.tiff") as tif:
            assert len(tif.pages) == 1  # one image, not a stack of rows
            image = tif.pages[0].asarray()
        np.testing.assert_array_equal(image.reshape(5, 4, channels), x[i].astype(np.float32))
        assert image.shape[:2] == (5, 4)
    # ...and normcli reads its own output back as the same samples.
    with open_dataset([str(out)]) as dataset:
        assert dataset.sample_shape == (5, 4, channels)
        np.testing.assert_array_equal(np.concatenate([c.data for c in read_blocks(dataset)]), x.astype(np.float32))


def test_npy_folder(tmp_path, array):
    out = tmp_path / "arrays"
    run([save(tmp_path, array)], linear_plan(3.0), out, ext="npy", dtype="float64")
    assert files_under(out) == [f"{i:06d}.npy" for i in range(len(array))]
    for i in range(len(array)):
        np.testing.assert_array_equal(np.load(out / f"{i:06d}.npy"), array[i] * 3.0)


def test_images_of_different_sizes_go_to_a_folder_not_an_array(tmp_path, image_tree):
    with pytest.raises(OutputError, match="different sizes"):
        run([image_tree], linear_plan(1 / 255), tmp_path / "all.npy")
    assert not (tmp_path / "all.npy").exists()


def test_png_cannot_take_a_float_dtype_and_ext_needs_a_folder(tmp_path, array, image_tree):
    with pytest.raises(UsageMismatch, match="PNG"):
        run([image_tree], linear_plan(1 / 255), tmp_path / "f", dtype="float32", ext="png")
    with pytest.raises(UsageMismatch, match="--ext"):
        run([save(tmp_path, array)], linear_plan(1.0), tmp_path / "x.npy", ext="png")
    assert not (tmp_path / "f").exists() and not (tmp_path / "x.npy").exists()


# ------------------------------------------------------------------------------ range checks and --clip
def test_values_outside_0_1_into_png_fail_before_writing(tmp_path, image_tree):
    out = tmp_path / "z"
    before = listing(tmp_path)
    with pytest.raises(OutputError) as info:
        run([image_tree], standardize_plan(), out)
    message = str(info.value)
    assert "\n" not in message and str(out) in message
    assert "PNG" in message and "tiff" in message and "--clip" in message  # names what can hold them
    assert not out.exists()
    assert listing(tmp_path) == before  # no temporary folder left beside the target


def test_values_outside_0_1_into_integer_npy_fail_before_writing(tmp_path, array):
    source = save(tmp_path, array)
    before = listing(tmp_path)
    with pytest.raises(OutputError, match="uint8"):
        run([source], linear_plan(1.0), tmp_path / "u8.npy", dtype="uint8")
    assert listing(tmp_path) == before


def test_clip_clips_and_counts(tmp_path, image_tree):
    out = tmp_path / "z"
    result = run([image_tree], standardize_plan(), out, clip=True)
    originals = tree_images(image_tree)
    pooled = np.concatenate([image.reshape(-1) for image in originals.values()]).astype(np.float64)
    mean, std = pooled.mean(), pooled.std()
    outside = 0
    for name, image in originals.items():
        z = (image.astype(np.float64) - mean) / std
        outside += int(((z < -1e-6) | (z > 1 + 1e-6)).sum())
        expected = np.rint(np.clip(z, 0.0, 1.0) * 255)
        written = read_png(out / name).astype(np.int64)
        assert np.abs(written - expected).max() <= 1, name  # float32 rounding may move a .5 case
        assert (written == expected).mean() > 0.99
    assert outside > 0 and result.clipped == outside


def test_values_within_1e6_of_the_range_are_clamped_silently(tmp_path, image_tree):
    out = tmp_path / "near"
    result = run([image_tree], linear_plan((1 + 5e-7) / 255), out)
    assert result.clipped == 0
    for name, image in tree_images(image_tree).items():
        np.testing.assert_array_equal(read_png(out / name), image)
    with pytest.raises(OutputError):
        run([image_tree], linear_plan((1 + 1e-4) / 255), tmp_path / "beyond")
    assert not (tmp_path / "beyond").exists()


# ------------------------------------------------------------------------------ targets
@pytest.mark.parametrize("name", ["out.npy", "out.npz", "outdir"])
def test_existing_output_needs_force(tmp_path, array, name):
    source = save(tmp_path, array)
    target = tmp_path / name
    run([source], linear_plan(1.0), target, ext="npy" if name == "outdir" else None)
    stamp = files_under(target) if target.is_dir() else target.read_bytes()
    with pytest.raises(OutputError, match="already exists"):
        run([source], linear_plan(2.0), target, ext="npy" if name == "outdir" else None)
    assert (files_under(target) if target.is_dir() else target.read_bytes()) == stamp
    run([source], linear_plan(2.0), target, force=True, ext="npy" if name == "outdir" else None)
    first = np.load(target / "000000.npy") if target.is_dir() else np.load(target)
    if name == "out.npz":
        first = first["data"]
    np.testing.assert_array_equal(first if target.is_dir() else first[0], (array[0] * 2.0).astype(np.float32))


def test_a_file_where_a_folder_goes_is_an_error_even_with_force(tmp_path, array):
    target = tmp_path / "outdir"
    target.write_text("a file")
    with pytest.raises(OutputError, match="another kind"):
        run([save(tmp_path, array)], linear_plan(1.0), target, force=True)
    assert target.read_text() == "a file"


def test_missing_parent_folder_is_an_error(tmp_path, array):
    source = save(tmp_path, array)
    for target in (tmp_path / "no" / "such" / "out.npy", tmp_path / "missing" / "folder"):
        with pytest.raises(OutputError, match="does not exist"):
            run([source], linear_plan(1.0), target)
    assert not (tmp_path / "no").exists() and not (tmp_path / "missing").exists()


def test_output_equal_to_an_input_is_an_error(tmp_path, array, image_tree):
    source = save(tmp_path, array, "same.npy")
    original = Path(source).read_bytes()
    for target in (source, str(tmp_path / "." / "same.npy")):
        with pytest.raises(OutputError, match="is, or holds, an input"):
            run([source], linear_plan(2.0), target, force=True)
    assert Path(source).read_bytes() == original
    with pytest.raises(OutputError, match="is, or holds, an input"):
        run([image_tree], linear_plan(1 / 255), image_tree, force=True)


def test_an_output_folder_holding_an_input_is_refused_even_with_force(tmp_path, image_tree):
    """--force replaces the output folder wholesale: were an input inside it, the input would go too."""
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(OutputError, match="is, or holds, an input"):
        run([image_tree / "a"], linear_plan(1 / 255), image_tree, force=True)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert files_under(image_tree) == ["a/0.png", "a/1.png", "b/2.png", "b/c/3.png"]


# ------------------------------------------------------------------------------ atomic writes
class Boom(RuntimeError):
    pass


@pytest.fixture
def small_chunks(monkeypatch):
    """One sample per chunk, so that a run writes in several steps."""
    monkeypatch.setattr(Dataset, "block_bytes", 1)  # the blocks of every dataset opened from now


def failing_on_second_chunk(plan: ScalePlan) -> ScalePlan:
    """The plan, whose pass-2 work fails on the second chunk it is given."""
    calls = itertools.count()
    lock = threading.Lock()
    make_applier = plan.applier

    class Flaky:
        def __init__(self, inner):
            self.inner = inner

        def apply(self, chunk, layout, out):
            with lock:
                call = next(calls)
            if call == 1:
                raise Boom("disk on fire")
            return self.inner.apply(chunk, layout, out)

    plan.applier = lambda: Flaky(make_applier())
    return plan


@pytest.mark.parametrize("name,ext", [("out.npy", None), ("out.npz", None), ("tiffs", "tiff"), ("arrays", "npy")])
def test_a_failure_while_writing_leaves_no_output_and_no_temp_file(tmp_path, array, small_chunks, name, ext):
    source = save(tmp_path, array)
    before = listing(tmp_path)
    with pytest.raises(Boom):
        run([source], failing_on_second_chunk(linear_plan(1.0)), tmp_path / name, ext=ext)
    assert not (tmp_path / name).exists()
    assert listing(tmp_path) == before


def test_a_failed_png_run_over_an_image_tree_leaves_nothing(tmp_path, image_tree, small_chunks):
    before = listing(tmp_path)
    with pytest.raises(Boom):
        run([image_tree], failing_on_second_chunk(linear_plan(1 / 255)), tmp_path / "pngs")
    assert listing(tmp_path) == before


@pytest.mark.parametrize("name,ext", [("out.npy", None), ("outdir", "npy")])
def test_a_failed_forced_run_keeps_the_old_output(tmp_path, array, small_chunks, name, ext):
    source = save(tmp_path, array)
    target = tmp_path / name
    run([source], linear_plan(1.0), target, ext=ext)
    old = {n: (target / n).read_bytes() for n in files_under(target)} if target.is_dir() else target.read_bytes()
    before = listing(tmp_path)
    with pytest.raises(Boom):
        run([source], failing_on_second_chunk(linear_plan(5.0)), target, ext=ext, force=True)
    now = {n: (target / n).read_bytes() for n in files_under(target)} if target.is_dir() else target.read_bytes()
    assert now == old
    assert listing(tmp_path) == before


def test_several_chunks_write_the_same_as_one(tmp_path, array, monkeypatch):
    source = save(tmp_path, array)
    run([source], standardize_plan(), tmp_path / "one.npz")
    monkeypatch.setattr(Dataset, "block_bytes", 1)  # the blocks of every dataset opened from now
    run([source], standardize_plan(), tmp_path / "many.npz")
    with np.load(tmp_path / "one.npz") as one, np.load(tmp_path / "many.npz") as many:
        np.testing.assert_array_equal(one["data"], many["data"])


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_failed_npz_run_leaves_no_half_open_archive_behind(tmp_path, array, small_chunks):
    """The CLI promises one error line: a ZipFile left with an open member prints
    'Exception ignored in ZipFile.__del__' with a traceback when it is collected."""
    import gc

    with pytest.raises(Boom):
        run([save(tmp_path, array)], failing_on_second_chunk(linear_plan(1.0)), tmp_path / "out.npz")
    gc.collect()


@pytest.mark.parametrize("name,dtype,ext", [("u8.npy", "uint8", None), ("u16.npz", "uint16", None),
                                            ("pngs", None, "png")])
def test_nan_into_an_integer_output_fails_cleanly(tmp_path, rng, small_chunks, name, dtype, ext):
    x = rng.uniform(0.0, 1.0, (6, 4, 3, 1))
    x[3, 1, 1, 0] = np.nan  # passed through by --ignore-nan, then unstorable as an integer
    source = save(tmp_path, x)
    before = listing(tmp_path)
    with pytest.raises(OutputError, match="NaN cannot be stored"):
        run([source], linear_plan(1.0), tmp_path / name, dtype=dtype, ext=ext, ignore_nan=True)
    assert listing(tmp_path) == before


@pytest.mark.parametrize("output", ["out.npy", "out.npz", "out_folder"])
def test_outputs_get_the_permissions_a_new_file_gets(tmp_path, output):
    """Temporary files are private; the renamed output must not stay so (umask 027 -> 0640 / 0750)."""
    import os

    x = np.random.default_rng(1).normal(size=(3, 4, 4, 1))
    np.save(tmp_path / "x.npy", x)
    old = os.umask(0o027)
    try:
        run([tmp_path / "x.npy"], standardize_plan(), tmp_path / output, ext="npy" if "folder" in output else None)
    finally:
        os.umask(old)
    target = tmp_path / output
    assert target.stat().st_mode & 0o777 == (0o750 if target.is_dir() else 0o640)
    for inner in target.rglob("*") if target.is_dir() else []:
        assert inner.stat().st_mode & 0o777 == 0o640


def test_folders_given_together_keep_their_names_in_the_output(tmp_path):
    """Two folders with the same relative paths: each output path starts with its folder's name."""
    rng = np.random.default_rng(4)
    for folder in ("x", "y"):
        write_image(tmp_path / folder / "sub" / "p.png", rng.integers(0, 256, (5, 6, 3), dtype=np.uint8))
    run([tmp_path / "x", tmp_path / "y"], ScalePlan("global", lambda m: minmax(m)), tmp_path / "out")
    assert files_under(tmp_path / "out") == ["x/sub/p.png", "y/sub/p.png"]
