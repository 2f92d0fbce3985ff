"""Chunks -> outputs: .npy, .npz, a .npy stream on stdout, or a folder of images or arrays.

Every file output is written under a temporary name beside its target and renamed into
place only when the whole run succeeded: a failed run leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from normcli.errors import OutputError, StatsFileError, UsageMismatch
from normcli.images import output_name, write_image
from normcli.layout import Layout

INTEGER_DTYPES = ("uint8", "uint16")
# Values this close outside the encoding's range (as a fraction of it) are rounding, not data:
# clamped silently for integer outputs.
TOLERANCE = 1e-6


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; set straight back
    os.umask(mask)
    return mask


def temp_beside(target: str, *, folder: bool = False, suffix: str = ".tmp") -> str:
    """A new temporary file or folder next to `target` (so a rename can replace it atomically),
    with the permissions a plainly created one would get (mkstemp alone makes them private)."""
    parent = Path(target).resolve().parent
    prefix = f".{Path(target).name}."
    if folder:
        path, mode = tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent), 0o777
    else:
        fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=parent)
        os.close(fd)
        mode = 0o666
    os.chmod(path, mode & ~_umask())
    return path


@dataclass
class OutputSpec:
    """Where and how a transform writes: `kind` is npy, npz, stdout or folder."""

    target: str
    kind: str
    dtype: np.dtype
    ext: str | None = None
    # An 8/16-bit output stores round(value * scale): the integer maximum ([0, 1] onto the full range)
    # or 1 (values already within the integers' range); chosen by choose_encoding before writing.
    scale: int | None = None
    alpha: bool = False  # the last channel is alpha (image inputs that carry it), tagged so in TIFF outputs

    def encoding(self) -> dict | None:
        """How an integer output encodes its values, for the --save-stats file (None: a float output)."""
        if self.dtype.name not in INTEGER_DTYPES:
            return None
        return {"dtype": self.dtype.name, "scale": int(self.scale or np.iinfo(self.dtype).max)}


def plan_output(target: str, *, dataset, dtype: str | None, ext: str | None, force: bool) -> OutputSpec:
    """Decide the output's kind and dtype and check it can be written, before any work is done."""
    kind = output_kind(target)
    if kind != "stdout":
        check_target(target, dataset.inputs, force)
    if ext is not None and kind != "folder":
        raise UsageMismatch(f"--ext picks the file type inside an output folder; {target} is a {kind} output")
    if kind != "folder":
        if not dataset.uniform:
            raise OutputError("images of different sizes cannot form one array; write to a folder instead", target)
        return OutputSpec(target, kind, np.dtype(dtype or "float32"))
    ext = ext or _default_ext(dataset)
    if ext != "npy" and dataset.layout.name not in ("NHWC", "NCHW", "NHW"):
        raise UsageMismatch(f"layout {dataset.layout.name} holds no images; write .npy/.npz or use --ext npy")
    if ext == "png" and dtype in ("float32", "float64"):
        raise UsageMismatch(f"PNG holds 8- or 16-bit integers, not {dtype}; use --ext tiff or --ext npy")
    if ext == "png" and dataset.channels not in (1, 2, 3, 4):
        raise UsageMismatch(f"PNG holds 1 to 4 channels, these samples have {dataset.channels}; use --ext tiff or npy")
    _check_unique_names(dataset.sample_names(), ext, target)
    return OutputSpec(target, "folder", np.dtype(dtype or _default_folder_dtype(ext, dataset)), ext,
                      alpha=dataset.has_alpha)


def relative_name(name: str | None, index: int, ext: str, samples: int) -> str:
    """A sample's file in an output folder: its image path with the new type, else its zero-padded index."""
    if name:
        return output_name(name, ext)
    return f"{index:0{max(6, len(str(max(samples - 1, 0))))}d}.{ext}"


def _check_unique_names(names: list, ext: str, target: str) -> None:
    """Two images that would land on one file (a.jpg and a.png as PNGs) are refused before any work."""
    seen: dict[str, str] = {}
    for index, name in enumerate(names):
        relative = relative_name(name, index, ext, len(names))
        if relative in seen:
            raise OutputError(f"{seen[relative]} and {name} would both be written as {relative}; "
                              "rename one of them, or write .npy", target)
        seen[relative] = name


def _default_ext(dataset) -> str:
    """The input's file type where normcli writes it losslessly (PNG, TIFF); else PNG for other
    images (JPEG, BMP, GIF, WebP) and TIFF for arrays."""
    suffixes = dataset.image_suffixes
    if not suffixes or suffixes <= {".tif", ".tiff"}:
        return "tiff"
    return "png"


def _default_folder_dtype(ext: str, dataset) -> str:
    """Images keep their bit depth: PNG outputs are 16-bit for 16-bit inputs, else 8-bit; TIFF outputs of
    8/16-bit TIFF inputs stay 8/16-bit; any other TIFF output (arrays, float images, --ext tiff) is float32."""
    if ext == "png":
        return "uint16" if dataset.dtype == np.uint16 else "uint8"
    suffixes = dataset.image_suffixes
    if suffixes and suffixes <= {".tif", ".tiff"} and dataset.dtype.name in INTEGER_DTYPES:
        return dataset.dtype.name
    return "float32"


def output_kind(target: str) -> str:
    """stdout for -, npy or npz by suffix, else a folder."""
    if target == "-":
        return "stdout"
    return {".npy": "npy", ".npz": "npz"}.get(Path(target).suffix.lower(), "folder")


def check_target(target: str, inputs, force: bool, *, folder: bool | None = None) -> None:
    """Refuse, before any work, an output that cannot or must not be written: a missing parent
    folder, an input or a folder holding one (--force would delete it), or an existing file
    without --force. `folder`: whether the output is one (default: by its suffix, as for -o)."""
    path = Path(target).resolve()
    folder = output_kind(target) == "folder" if folder is None else folder
    if not path.parent.is_dir():
        raise OutputError(f"folder {path.parent} does not exist; normcli creates only the output itself", target)
    for name in inputs:
        source = Path(name).resolve()
        if name != "-" and (source == path or path in source.parents):
            raise OutputError("the output is, or holds, an input; write somewhere else", target)
    if path.exists() and not force:
        raise OutputError("already exists; use --force to replace it", target)
    if path.exists() and path.is_dir() != folder:
        raise OutputError("exists and is of another kind (file vs folder); remove it first", target)


def choose_encoding(spec: OutputSpec, low: float, high: float, clip: bool) -> None:
    """Decide, before writing, how an 8/16-bit output stores the predicted range [low, high]:
    values that reach 2 or more without going negative are stored as those integers (0..255,
    0..65535); any other values map [0, 1] onto the full integer range. Values outside the chosen
    encoding's range are refused, or clipped to it with --clip. (Between 1 and 2 nothing is guessed:
    as integers they would leave only the levels 0 and 1.)"""
    if spec.dtype.name not in INTEGER_DTYPES:
        return
    top = np.iinfo(spec.dtype).max
    integers = high >= 2 and low >= -TOLERANCE * top
    spec.scale = 1 if integers else top
    limit = top if integers else 1  # the encoding's range in values: [0, limit]
    if clip or (low >= -TOLERANCE * limit and high <= limit * (1 + TOLERANCE)):
        return
    what = f"{spec.ext.upper()} ({spec.dtype.name})" if spec.kind == "folder" else spec.dtype.name
    floats = "--dtype float32" if spec.ext == "tiff" or spec.kind != "folder" else "--ext tiff, --ext npy or .npy"
    raise OutputError(
        f"the output spans [{low:.4g}, {high:.4g}], but {what} holds [0, 1] (mapped onto 0..{top}) or "
        f"0..{top} as integers; write floats ({floats}), or pass --clip", spec.target)


def input_scale(encoding, input_dtype: np.dtype, path: str, out_range=None) -> int | None:
    """The scale an input of `input_dtype` was written with, from a --save-stats file's `encoding`.
    Without one, 8/16-bit inputs of a normalize whose `out_range` lies within [0, 1] can only have been
    written as [0, 1] onto the full range; otherwise (and for float inputs) None: taken as they are."""
    input_dtype = np.dtype(input_dtype)
    if encoding is None and out_range is not None and input_dtype.name in INTEGER_DTYPES \
            and 0 <= min(out_range) and max(out_range) <= 1:
        return int(np.iinfo(input_dtype).max)
    if encoding is None or input_dtype.kind == "f":
        return None
    try:
        dtype, scale = np.dtype(encoding["dtype"]), encoding["scale"]
        if dtype.name not in INTEGER_DTYPES or scale not in (1, np.iinfo(dtype).max):
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise StatsFileError(f"malformed encoding {encoding!r}; expected {{\"dtype\": \"uint8\" or \"uint16\", "
                             "\"scale\": 1 or the integer maximum}", path) from None
    if dtype != input_dtype:
        raise StatsFileError(f"its outputs were written as {dtype.name}, but these inputs are {input_dtype.name}; "
                             "give the files it wrote", path)
    return scale


def to_integers(values: np.ndarray, dtype: np.dtype, clip: bool, target: str,
                scale: int | None = None) -> tuple[np.ndarray, int]:
    """round(values * scale) as `dtype` (scale: the integer maximum, [0, 1] onto the full range, by
    default; or 1); returns the integers and how many values were clipped to the encoding's range."""
    if np.isnan(values).any():
        raise OutputError(f"NaN cannot be stored as {dtype.name}; write a float output", target)
    top = np.iinfo(dtype).max
    limit = top / (scale or top)  # the encoding's range in values: [0, 1] or [0, top]
    outside = (values < -TOLERANCE * limit) | (values > limit * (1 + TOLERANCE))
    clipped = int(outside.sum())
    if clipped and not clip:
        raise OutputError(f"{clipped} values fall outside [0, {limit:g}] and cannot be stored as {dtype.name}; "
                          "write a float output or pass --clip", target)
    return np.rint(np.clip(values, 0.0, limit) * (scale or top)).astype(dtype), clipped


class Sink:
    """Writes samples in order; commit() makes the output appear, discard() removes every trace."""

    clipped = 0

    def __init__(self, spec: OutputSpec, layout: Layout, sample_shape, samples: int, *, key: str | None = None,
                 clip: bool = False):
        self.spec = spec
        self.layout = layout
        self.clip = clip
        self.shape = (samples, *sample_shape)
        self.key = key or "data"
        self.written = 0
        self._temp: str | None = None
        self._file = None
        self._zip = None
        target = spec.target
        if spec.kind == "stdout":
            self._file = sys.stdout.buffer
            self._write_header(self._file)
        elif spec.kind == "folder":
            self._temp = temp_beside(target, folder=True)
        else:
            self._temp = temp_beside(target)
            self._file = open(self._temp, "wb")
            if spec.kind == "npz":
                self._zip = zipfile.ZipFile(self._file, "w", zipfile.ZIP_STORED, allowZip64=True)
                self._member = self._zip.open(f"{self.key}.npy", "w", force_zip64=True)
                self._write_header(self._member)
            else:
                self._write_header(self._file)

    def _write_header(self, stream) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(self.spec.dtype), "fortran_order": False,
                  "shape": self.shape}
        np.lib.format.write_array_header_1_0(stream, header)

    def _encode(self, values: np.ndarray) -> np.ndarray:
        if self.spec.dtype.name in INTEGER_DTYPES:
            encoded, clipped = to_integers(values, self.spec.dtype, self.clip, self.spec.target, self.spec.scale)
            self.clipped += clipped
            return encoded
        return values.astype(self.spec.dtype, copy=False)

    def write(self, values: np.ndarray, start: int, names: list[str] | None = None) -> None:
        """Samples `start`.. of the output, as floats (encoded here for integer outputs)."""
        data = self._encode(values)
        if self.spec.kind == "folder":
            for i, sample in enumerate(data):
                self._write_file(sample, names[i] if names else None, start + i)
        else:
            stream = self._member if self._zip else self._file
            stream.write(memoryview(np.ascontiguousarray(data)).cast("B"))
        self.written += len(data)

    def _write_file(self, sample: np.ndarray, name: str | None, index: int) -> None:
        ext = self.spec.ext
        relative = relative_name(name, index, ext, self.shape[0])
        path = Path(self._temp) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if ext == "npy":
            np.save(path, sample, allow_pickle=False)
            return
        write_image(path, self.layout.image(sample), ext, alpha=self.spec.alpha)

    def commit(self) -> None:
        if self.written != self.shape[0]:
            raise OutputError(f"wrote {self.written} of {self.shape[0]} samples", self.spec.target)
        target = Path(self.spec.target)
        if self.spec.kind == "stdout":
            self._file.flush()
            return
        if self.spec.kind == "folder":
            old = None
            if target.exists():
                old = temp_beside(str(target), folder=True, suffix=".old")
                os.replace(target, Path(old) / target.name)
            os.replace(self._temp, target)
            if old:
                shutil.rmtree(old, ignore_errors=True)
        else:
            if self._zip:
                self._member.close()
                self._zip.close()
            self._file.close()
            os.replace(self._temp, target)
        self._temp = None

    def discard(self) -> None:
        """Remove the partial output (the target is left as it was)."""
        if self._temp is None:
            return
        if self.spec.kind == "folder":
            shutil.rmtree(self._temp, ignore_errors=True)
        else:
            try:
                if self._zip:
                    self._member.close()  # else the ZipFile refuses to close, and complains again when collected
                    self._zip.close()
            except Exception:
                pass
            self._file.close()
            os.unlink(self._temp)
        self._temp = None


def write_array(target: str, array: np.ndarray, *, force: bool, layout: Layout) -> None:
    """Write a whole in-memory array (e.g. `normcli sample`) through the same atomic sinks."""
    kind = output_kind(target)
    if kind != "stdout":
        check_target(target, [], force)
    spec = OutputSpec(target, kind, array.dtype, "tiff" if kind == "folder" else None)
    sink = Sink(spec, layout, array.shape[1:], len(array))
    try:
        sink.write(array, 0)
        sink.commit()
    except BaseException:
        sink.discard()
        raise
