"""Chunks -> outputs: .npy, .npz, a .npy stream on stdout, a folder of images or arrays, or a chunked
store (a Zarr array, an HDF5 dataset: storewriters.py).

Every file output is written under a temporary name beside its target and renamed into
place only when the whole run succeeded: a failed run leaves nothing behind. All outputs of
one run (data, saved statistics) are staged in one `Outputs` and commit together or not at all.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import weakref
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from normcli.encoding import INTEGER_DTYPES, check_clipped, to_integers
from normcli.errors import OutputError, UsageMismatch, from_os_error
from normcli.images import output_name, write_image
from normcli.layout import Layout
from normcli.signals import signals_held
from normcli.sources import IMAGE_EXTENSIONS

# The targets committed in this run, in order: what a signal that ends the run after a commit (as
# its report is shown) leaves written, for cli.py to say so. cli.py empties it as a command starts.
COMMITTED: list[str] = []


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; set straight back
    os.umask(mask)
    return mask


def temp_beside(target: str, *, folder: bool = False, suffix: str = ".tmp") -> str:
    """A new temporary file or folder next to `target` (so a rename can replace it atomically),
    with the permissions a plainly created one would get (mkstemp alone makes them private)."""
    parent = Path(target).resolve().parent
    prefix = f".{Path(target).name}."
    try:
        if folder:
            path, mode = tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent), 0o777
        else:
            fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=parent)
            os.close(fd)
            mode = 0o666
        os.chmod(path, mode & ~_umask())
    except OSError as error:  # read-only folder, name too long: about the target, not the temporary
        raise from_os_error(error, target, OutputError) from None
    return path


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(_renamed_away(path), ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _renamed_away(folder: str) -> str:
    """`folder` under a new name, to be removed there: a task the engine could not stop (a Dask
    worker still running past Engine.stop's wait) writes by path, so it cannot add a file while
    rmtree empties the folder (the folder would stay, ENOTEMPTY); its next write fails instead.
    The folder itself where it cannot be renamed."""
    path, away = Path(folder), None
    try:
        away = tempfile.mkdtemp(prefix=f"{path.name}.", suffix=".gone", dir=path.parent)
        os.replace(folder, away)  # onto the empty folder just made
        return away
    except OSError:  # e.g. a mount point
        if away is not None:
            os.rmdir(away)
        return folder


class Outputs:
    """Every output of one run, committed together or not at all: used as a context manager, they
    commit as the block ends without an error, and are discarded if it raises.

    stage() prepares a temporary file or folder beside each target; commit() sets each existing
    target aside (a hard link for a file, so it is replaced atomically; a rename for a folder),
    renames every temporary into place, and only then removes what was set aside. If a rename
    fails, or a signal comes before the last one is done, the ones already done are undone from
    those backups. discard() removes every temporary. Signals are held while a temporary is made
    and registered, and through commit() and discard(), so that a signal at any moment leaves the
    old state or the whole new one, and no temporary; outputs dropped uncommitted (a signal as
    their block ends) are discarded as they are collected, or as the process exits.
    `stdout`: the binary stream an output `-` is written to (the run's, handed in).
    """

    def __init__(self, stdout=None):
        self.stdout = stdout
        self._staged: list[tuple[str, str, bool, str]] = []  # (temporary, target, is a folder, as named)
        self._scratch: list[str] = []  # temporaries never committed (removed at commit and discard)
        weakref.finalize(self, _discard, self._staged, self._scratch)

    def stage(self, target: str, *, folder: bool = False) -> str:
        """A new temporary beside `target`; a symbolic link keeps pointing at the new output (and the
        rename stays on one filesystem)."""
        with signals_held():
            temp = temp_beside(target, folder=folder)
            self._staged.append((temp, os.path.realpath(target), folder, target))
        return temp

    def scratch(self, target: str, suffix: str) -> str:
        """A new temporary file beside `target` that is never committed, e.g. what an archive is made
        from: removed as the outputs commit or are discarded."""
        with signals_held():
            temp = temp_beside(target, suffix=suffix)
            self._scratch.append(temp)
        return temp

    def commit(self) -> None:
        with signals_held() as arrived:
            placed: list[tuple[str, str, str | None, bool]] = []  # (temporary, target, backup, renamed in)
            named = None
            try:
                for temp, target, folder, named in self._staged:
                    backup = _set_aside(target, folder) if os.path.lexists(target) else None
                    placed.append((temp, target, backup, False))
                    os.replace(temp, target)
                    placed[-1] = (temp, target, backup, True)
            except BaseException as error:
                _undo(placed)
                self.discard()
                if isinstance(error, OSError):
                    raise from_os_error(error, named, OutputError) from None
                raise
            if arrived:  # the signal, delivered as the block ends, ends the run: the old state is back
                _undo(placed)
                self.discard()
                return
            for _, target, backup, _ in placed:
                if backup is not None:
                    _remove(backup)
                COMMITTED.append(target)
            self._staged.clear()
            self.discard()  # what is left: the scratch files

    def discard(self) -> None:
        _discard(self._staged, self._scratch)

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


def _undo(placed: list) -> None:
    """Each target as it was before commit() placed its temporary (`placed`: commit's record)."""
    for temp, target, backup, renamed in reversed(placed):
        if renamed:
            os.replace(target, temp)  # back under its temporary name, which discard() removes
        if backup is not None and os.path.lexists(backup):
            os.replace(backup, target)


def _discard(staged: list, scratch: list) -> None:
    """Remove the temporaries of `staged` (Outputs' records) and `scratch` (paths), emptying both;
    no signal stops it halfway."""
    with signals_held():
        for temp, *_ in staged:
            _remove(temp)
        staged.clear()
        for temp in scratch:
            _remove(temp)
        scratch.clear()


def _set_aside(target: str, folder: bool) -> str:
    """A backup of the existing `target` beside it, so that a failed commit can put it back."""
    backup = temp_beside(target, folder=folder, suffix=".old")
    try:
        if not folder:
            os.unlink(backup)
            try:
                os.link(target, backup)  # the target itself stays until os.replace swaps it atomically
                return backup
            except OSError:  # a filesystem without hard links
                pass
        os.replace(target, backup)  # a folder onto the empty one just made
    except BaseException:  # e.g. a mount point cannot move: no backup either
        _remove(backup)
        raise
    return backup


@dataclass
class OutputSpec:
    """Where and how a transform writes: `kind` is npy, npz, stdout, folder, image (one image file),
    zarr or hdf5."""

    target: str
    kind: str
    dtype: np.dtype
    ext: str | None = None
    # An 8/16-bit output stores round(value * scale): the integer maximum ([0, 1] onto the full range)
    # or 1 (values already within the integers' range); chosen by choose_encoding before writing.
    scale: int | None = None
    alpha: bool = False  # the last channel is alpha (image inputs that carry it), tagged so in TIFF outputs
    # The range values within slack of an 8/16-bit output's range are clamped to (encoding.guard_range).
    clamp: tuple[float, float] | None = None
    compressor: str | None = None  # a store's codec (storewriters.check_compressor)
    key: str = "data"  # the array of an .npz or .h5 output
    # Where the writing pass's blocks begin (set once they are known): a store's chunks are whole blocks.
    starts: tuple[int, ...] = ()

    def encoding(self) -> dict | None:
        """How an integer output encodes its values, for the --save-stats file (None: a float output)."""
        if self.dtype.name not in INTEGER_DTYPES:
            return None
        return {"dtype": self.dtype.name, "scale": int(self.scale or np.iinfo(self.dtype).max)}

    def describe(self, samples: int) -> str:
        """The closing report line: what was written, e.g. 'wrote 1,000 PNG files to out/'."""
        count = f"{samples:,} sample{'' if samples == 1 else 's'}"
        if self.kind == "folder":
            return f"wrote {samples:,} {self.ext.upper()} file{'' if samples == 1 else 's'} to " \
                   f"{self.target.rstrip('/')}/"
        if self.kind == "image":
            return f"wrote {self.target} ({self.ext.upper()}, {self.dtype.name})"
        if self.kind == "stdout":
            return f"wrote {count} ({self.dtype.name}) to stdout"
        details = [count, self.dtype.name, *([self.compressor] if self.compressor else []),
                   *([f"key {self.key}"] if self.kind in ("npz", "hdf5") else [])]
        return f"wrote {self.target} ({', '.join(details)})"


# What -o accepts, for the usage error that lists it.
OUTPUT_FORMS = "NAME.npy, NAME.npz, NAME.zarr, NAME.h5/NAME.hdf5, a folder (no suffix, or ending in /), - (stdout), " \
               "or NAME.png/NAME.tiff for a single image input"
STORE_SUFFIXES = {".zarr": "zarr", ".h5": "hdf5", ".hdf5": "hdf5"}  # chunked stores: storewriters.py
_ARRAY_SUFFIXES = {".npy": "npy", ".npz": "npz", **STORE_SUFFIXES}
_IMAGE_SUFFIXES = {".png": "png", ".tif": "tiff", ".tiff": "tiff"}  # the image files normcli writes


def output_kind(target: str, *, single_image: bool = False) -> str:
    """What -o names is what the user gets: - is stdout; .npy/.npz a file; .zarr a Zarr store, .h5/.hdf5
    an HDF5 file (ending in / or not); a path ending in /, an existing folder or a path without a
    suffix a folder; an image suffix, for a single image input,
    that image file. Anything else is a usage error listing what -o accepts."""
    if target == "-":
        return "stdout"
    suffix = Path(target).suffix.lower()
    if suffix in STORE_SUFFIXES:
        return STORE_SUFFIXES[suffix]
    if target.endswith(("/", os.sep)) or (suffix not in _ARRAY_SUFFIXES and Path(target).is_dir()):
        return "folder"
    if suffix in _ARRAY_SUFFIXES:
        return _ARRAY_SUFFIXES[suffix]
    if not suffix:
        return "folder"
    if single_image and suffix in _IMAGE_SUFFIXES:
        return "image"
    if single_image and suffix in IMAGE_EXTENSIONS:
        raise UsageMismatch(f"-o {target}: normcli writes images as PNG or TIFF, not {suffix[1:].upper()}; "
                            "use NAME.png or NAME.tiff")
    raise UsageMismatch(f"-o {target}: unknown output type {suffix!r}; -o takes {OUTPUT_FORMS}")


def _single_image(dataset) -> bool:
    return len(dataset.inputs) == 1 and dataset.n_samples == 1 and bool(dataset.image_suffixes) \
        and not Path(dataset.inputs[0]).is_dir()


def plan_output(target: str, *, dataset, dtype: str | None, ext: str | None, force: bool,
                compressor: str | None = None, key: str | None = None) -> OutputSpec:
    """Decide the output's kind, dtype (and a store's codec, and its array: `key`, else the input's) and
    check it can be written, before any work is done."""
    kind = output_kind(target, single_image=_single_image(dataset))
    compressor = _store_compressor(kind, compressor, target)
    if key is not None and kind not in ("npz", "hdf5"):
        raise UsageMismatch(f"--output-key names the array of an .npz or .h5 output; {target} is a {kind} output"
                            + (" (one array at the store's root)" if kind == "zarr" else ""))
    key = key or dataset.key  # a store input's own key is kept
    if ext is not None and kind != "folder":
        raise UsageMismatch(f"--ext picks the file type inside an output folder; {target} is a {kind} output")
    if kind == "image":
        check_target(target, dataset.inputs, force, folder=False)
        ext = _IMAGE_SUFFIXES[Path(target).suffix.lower()]
        return OutputSpec(target, kind, np.dtype(dtype or _default_folder_dtype(ext, dataset)), ext,
                          alpha=dataset.has_alpha)
    if kind != "folder":
        if kind != "stdout":
            check_target(target, dataset.inputs, force, store=compressor is not None)
        if kind == "hdf5":
            from normcli.storewriters import hdf5_key

            key = hdf5_key(key)  # a usage error before any work
        if not dataset.uniform:
            raise OutputError("images of different sizes cannot form one array; write to a folder instead", target)
        return OutputSpec(target, kind, np.dtype(dtype or "float32"), compressor=compressor, key=key or "data")
    ext = ext or _default_ext(dataset)
    if ext != "npy" and dataset.layout.name not in ("NHWC", "NCHW", "NHW"):
        raise UsageMismatch(f"layout {dataset.layout.name} holds no images; write .npy/.npz or use --ext npy")
    if ext == "png" and dtype in ("float32", "float64"):
        raise UsageMismatch(f"PNG holds 8- or 16-bit integers, not {dtype}; use --ext tiff or --ext npy")
    if ext == "png" and dataset.channels not in (1, 2, 3, 4):
        raise UsageMismatch(f"PNG holds 1 to 4 channels, these samples have {dataset.channels}; use --ext tiff or npy")
    writes = _check_names(dataset.sample_names(), ext, target)
    check_target(target, dataset.inputs, force, folder=True, writes=writes)
    return OutputSpec(target, "folder", np.dtype(dtype or _default_folder_dtype(ext, dataset)), ext,
                      alpha=dataset.has_alpha)


def _store_compressor(kind: str, compressor: str | None, target: str) -> str | None:
    """A store output's codec (--compressor, else the store's default); None for any other output,
    where --compressor is a usage error."""
    if kind in STORE_SUFFIXES.values():
        from normcli.storewriters import check_compressor

        return check_compressor(kind, compressor)
    if compressor is not None:
        raise UsageMismatch(f"--compressor picks the codec of a .zarr or .h5 output; {target} is a {kind} output")
    return None


def relative_name(name: str | None, index: int, ext: str, samples: int) -> str:
    """A sample's file in an output folder: its image path with the new type, else its zero-padded index."""
    if name:
        return output_name(name, ext)
    return f"{index:0{max(6, len(str(max(samples - 1, 0))))}d}.{ext}"


def _check_names(names: list, ext: str, target: str) -> set[str]:
    """The files an output folder will hold, proven to lie inside it; two images that would land
    on one file (a.jpg and a.png as PNGs) are refused, before any work."""
    seen: dict[str, str] = {}
    for index, name in enumerate(names):
        relative = relative_name(name, index, ext, len(names))
        inside(target, relative, target)
        if relative in seen:
            raise OutputError(f"{seen[relative]} and {name} would both be written as {relative}; "
                              "rename one of them, or write .npy", target)
        seen[relative] = name
    return set(seen)


def inside(folder: str, relative: str, target: str) -> Path:
    """`folder`/`relative`, proven (resolved) to lie inside `folder`: no name ever escapes an output."""
    base = Path(folder).resolve()
    path = (base / relative).resolve()
    if base not in path.parents:
        raise OutputError(f"{relative} would be written outside the output folder; nothing was written", target)
    return path


def _first_foreign(folder: Path, writes: set[str]) -> str | None:
    """The first entry of an existing output folder that this run would not write (--force keeps it)."""
    parents = {p.as_posix() for w in writes for p in Path(w).parents}
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files) + dirs:
            relative = (Path(root) / name).relative_to(folder).as_posix()
            if relative not in (parents if name in dirs else writes):
                return relative
    return None


def _default_ext(dataset) -> str:
    """The input's file type where normcli writes it losslessly (PNG, TIFF, .npy for folders of
    .npy samples); else PNG for other images (JPEG, BMP, GIF, WebP) and TIFF for arrays."""
    if dataset.array_folders:
        return "npy"
    suffixes = dataset.image_suffixes
    if not suffixes or suffixes <= {".tif", ".tiff"}:
        return "tiff"
    return "png"


def _default_folder_dtype(ext: str, dataset) -> str:
    """Images keep their bit depth: PNG outputs are 16-bit for integer inputs wider than 8 bits (int16
    elevation, uint16, int32), else 8-bit; TIFF outputs of 8/16-bit integer TIFF inputs (signed too) stay
    8/16-bit; any other TIFF output (arrays, float images, --ext tiff) is float32."""
    integer_bits = 8 * dataset.dtype.itemsize if dataset.dtype.kind in "iu" else 0
    if ext == "png":
        return "uint16" if integer_bits > 8 else "uint8"
    suffixes = dataset.image_suffixes
    if suffixes and suffixes <= {".tif", ".tiff"} and integer_bits in (8, 16):
        return f"uint{integer_bits}"
    return "float32"


def check_target(target: str, inputs, force: bool, *, folder: bool | None = None,
                 writes: set[str] | None = None, store: bool = False) -> None:
    """Refuse, before any work, an output that cannot or must not be written: a missing parent
    folder, an input or a folder holding one, an existing file without --force, or (even with
    --force) an existing folder holding anything but the files `writes` names: --force replaces
    what this run writes, never deletes anything else. `folder`: whether the output is one
    (default: by its suffix, as for -o); `store`: a Zarr or HDF5 output, which --force replaces
    only over a store of its kind (storewriters.check_store_target)."""
    path = Path(target).resolve()
    folder = output_kind(target) == "folder" if folder is None else folder
    if not path.parent.is_dir():
        raise OutputError(f"folder {path.parent} does not exist; normcli creates only the output itself", target)
    for name in inputs:
        source = Path(name).resolve()
        if name != "-" and (source == path or path in source.parents):
            raise OutputError("the output is, or holds, an input; write somewhere else", target)
    if store:
        from normcli.storewriters import check_store_target

        check_store_target(target, force)
        return
    if path.exists() and not force:
        raise OutputError("already exists; use --force to replace it", target)
    if path.exists() and path.is_dir() != folder:
        raise OutputError("exists and is of another kind (file vs folder); remove it first", target)
    if path.is_dir():
        foreign = _first_foreign(path, writes or set())
        if foreign is not None:
            raise OutputError(f"--force replaces only the files this run writes, and {foreign} is not one of "
                              "them; remove it or write elsewhere", target)


def _naming_target(method):
    """OSErrors while writing (full disk, /dev/full on stdout) become one line naming the output."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except BrokenPipeError:
            raise  # `normcli ... -o - | head` ends quietly (Click's own handling)
        except OSError as error:
            raise from_os_error(error, self.target, OutputError) from None
    return wrapper


@dataclass(frozen=True)
class Encoder:
    """Floats -> what the output stores: its dtype, or [0, 1] onto the integer range."""

    dtype: np.dtype
    clip: bool
    target: str
    scale: int | None = None  # integer outputs: stored = round(value * scale) (see choose_encoding)
    clamp: tuple[float, float] | None = None  # OutputSpec.clamp

    def settle(self, values: np.ndarray) -> None:
        """Clamp, in place, values within the allowed slack of an integer output's range into it (the
        output's statistics are taken after this, as of the values stored)."""
        if self.clamp is not None:
            np.clip(values, *self.clamp, out=values)

    def encode(self, values: np.ndarray) -> tuple[np.ndarray, int]:
        """The stored values and how many were clipped to fit."""
        if self.dtype.name in INTEGER_DTYPES:
            return to_integers(values, self.dtype, self.clip, self.target, self.scale)
        return values.astype(self.dtype, copy=False), 0

    def put(self, values: np.ndarray, start: int, names=None, profiles=None) -> "Stored":
        """Encode the samples `start`.. and store them (see store)."""
        encoded, clipped = self.encode(values)
        return self.store(encoded, clipped, start, names, profiles)

    def store(self, encoded: np.ndarray, clipped: int, start: int, names=None, profiles=None) -> "Stored":
        """Encoded samples `start`.. (`clipped` of their values clipped to fit, refused unless
        --clip) written at their position, or handed back to be written in order on the driver."""
        check_clipped(clipped, self.clip, self.dtype, self.target, self.scale)
        if not self.positional:
            return Stored(len(encoded), clipped, encoded)
        self.write(encoded, start, names, profiles)
        return Stored(len(encoded), clipped)

    def overflow(self) -> OutputError:
        """The error of a map whose finite values overflow this output's floats."""
        return OutputError(f"the output overflows {self.dtype.name}; pass --dtype float64", self.target)


@dataclass(frozen=True)
class Stored:
    """What a writer stored of consecutive blocks: samples, values clipped to fit, and (for an output
    written in order) the encoded samples themselves, until the driver writes them."""

    samples: int = 0
    clipped: int = 0
    data: np.ndarray | None = None

    def merge(self, later: "Stored") -> "Stored":
        return Stored(self.samples + later.samples, self.clipped + later.clipped)


@dataclass(frozen=True)
class StreamWriter(Encoder):
    """An output written in order by the driver (a .npy stream on stdout)."""

    positional = False


@dataclass(frozen=True)
class NpyWriter(Encoder):
    """Samples written at their offsets into a full-size .npy under its temporary name, by
    whichever thread, process or worker holds them (the file system must be shared)."""

    positional = True
    path: str = ""
    data_offset: int = 0
    sample_bytes: int = 0

    @_naming_target
    def write(self, encoded: np.ndarray, start: int, names=None, profiles=None) -> None:
        view = memoryview(np.ascontiguousarray(encoded)).cast("B")
        offset = self.data_offset + start * self.sample_bytes
        fd = os.open(self.path, os.O_WRONLY)
        try:
            while view:
                done = os.pwrite(fd, view, offset)
                view, offset = view[done:], offset + done
        finally:
            os.close(fd)


@dataclass(frozen=True)
class FolderWriter(Encoder):
    """One file per sample inside the temporary output folder (the image's own relative path with
    the new type, else the sample's zero-padded index), or the one image file -o names."""

    positional = True
    folder: str = ""
    ext: str = "tiff"
    layout: Layout = Layout("NHWC")
    samples: int = 0
    single_file: bool = False
    alpha: bool = False  # the last channel is alpha: tagged so in TIFF outputs

    @_naming_target
    def write(self, encoded: np.ndarray, start: int, names=None, profiles=None) -> None:
        """Each sample's file, named by `names` (else by index), images with the ICC `profiles` of
        the images they came from; inside the temporary output only: its folders are made below
        that root, never the root itself, and the one image file is only ever rewritten, so a write
        after the run was discarded fails (No such file or directory) instead of leaving files."""
        for i, sample in enumerate(encoded):
            if self.single_file:
                path, mode = Path(self.folder), "r+b"  # the staged file, never made anew
            else:
                relative = relative_name(names[i] if names else None, start + i, self.ext, self.samples)
                path, mode = inside(self.folder, relative, self.target), "wb"
                _folders_below(Path(self.folder).resolve(), path.parent)
            with open(path, mode) as f:
                f.truncate()
                if self.ext == "npy":
                    np.save(f, sample, allow_pickle=False)
                else:
                    write_image(f, self.layout.image(sample), self.ext, alpha=self.alpha,
                                icc=profiles[i] if profiles else None)


def _folders_below(root: Path, folder: Path) -> None:
    """`folder` and its parents up to `root` (which must exist: FileNotFoundError if it is gone)."""
    for parent in [*reversed(folder.relative_to(root).parents), folder.relative_to(root)][1:]:
        try:
            os.mkdir(root / parent)
        except FileExistsError:
            pass


def _store_writer(spec: OutputSpec, shape: tuple, outputs: Outputs, clip: bool) -> Encoder:
    """An empty Zarr array (a staged folder) or HDF5 dataset (a staged file), chunked as whole blocks
    of the writing pass (spec.starts), and its writer."""
    from normcli.storewriters import chunk_rows, create_hdf5, create_zarr

    rows = chunk_rows(spec.starts, shape[0])
    if spec.kind == "zarr":
        return create_zarr(outputs.stage(spec.target, folder=True), spec, shape, rows, clip=clip)
    return create_hdf5(outputs.stage(spec.target), spec, shape, rows, clip=clip)


def _npy_header(dtype: np.dtype, shape: tuple) -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
    return buffer.getvalue()


class Sink:
    """An output under its temporary name, staged in the run's `outputs`: workers write blocks by
    position through `writer` (picklable) and hand back what they stored; finish() checks that every
    sample was stored and finishes the output, which appears when `outputs` commit. Its temporaries
    are all the run's `outputs`' (which remove them at commit or discard)."""

    @_naming_target
    def __init__(self, spec: OutputSpec, layout: Layout, sample_shape, samples: int, outputs: Outputs, *,
                 clip: bool = False):
        self.spec = spec
        self.shape = (samples, *sample_shape)
        self._stream = None
        target, dtype = spec.target, spec.dtype
        if spec.kind == "stdout":
            if outputs.stdout is None:
                raise OutputError("no stdout stream was handed in to write the .npy stream to", target)
            self._stream = outputs.stdout
            self._stream.write(_npy_header(dtype, self.shape))
            self.writer = StreamWriter(dtype, clip, target, spec.scale, spec.clamp)
        elif spec.kind in STORE_SUFFIXES.values():
            self.writer = _store_writer(spec, self.shape, outputs, clip)
        elif spec.kind in ("folder", "image"):
            folder = outputs.stage(target, folder=spec.kind == "folder")
            self.writer = FolderWriter(dtype, clip, target, spec.scale, spec.clamp, folder=folder, ext=spec.ext,
                                       layout=layout, samples=samples, single_file=spec.kind == "image",
                                       alpha=spec.alpha)
        else:
            self._staged = outputs.stage(target)
            path = self._staged
            if spec.kind == "npz":  # written by position as a .npy, stored in the archive at commit
                path = outputs.scratch(target, suffix=".npy.tmp")
            header = _npy_header(dtype, self.shape)
            sample_bytes = int(np.prod(sample_shape, dtype=np.int64)) * dtype.itemsize
            # Only the header: blocks extend the file as they land (see benchmarks/PROFILE.md).
            with open(path, "r+b") as f:
                f.write(header)
            self.writer = NpyWriter(dtype, clip, target, spec.scale, spec.clamp, path=path, data_offset=len(header),
                                    sample_bytes=sample_bytes)

        self._written = 0  # samples written in order so far (stdout, HDF5)
        self._writing = None  # the thread of an HDF5 output's writes (see _off_main_thread)

    @property
    def target(self) -> str:
        return self.spec.target

    @property
    def in_order(self) -> bool:
        """Whether the driver writes the samples, in order, as the writer hands them back (stdout)."""
        return not self.writer.positional

    def describe(self) -> str:
        """What this sink writes, as the closing report line says it."""
        return self.spec.describe(self.shape[0])

    @_naming_target
    def write_in_order(self, stored: Stored) -> Stored:
        """The next samples of an output written in order (stdout, HDF5), as the writer handed them
        back; returns what was stored, without the data."""
        if self._stream is not None:
            self._stream.write(memoryview(np.ascontiguousarray(stored.data)).cast("B"))
        else:
            self._off_main_thread().submit(self.writer.write, stored.data, self._written).result()
        self._written += stored.samples
        return Stored(stored.samples, stored.clipped)

    @_naming_target
    def finish(self, stored: Stored) -> None:
        """Finish the output, given what its writer stored in all; it appears as the run's Outputs commit."""
        if stored.samples != self.shape[0]:
            raise OutputError(f"wrote {stored.samples} of {self.shape[0]} samples", self.spec.target)
        if self.spec.kind == "stdout":
            self._stream.flush()
            return
        if self.spec.kind == "npz":
            _store_in_zip(self.writer.path, self._staged, f"{self.spec.key}.npy")
        self.stop_writing()

    def _off_main_thread(self):
        """The one thread that writes an HDF5 output: a signal (Ctrl-C) raises in the main thread, as it
        waits, never inside HDF5, which a Python exception in its file callbacks crashes. An
        interrupted block finishes into the staged file, which the run's Outputs then remove."""
        if self._writing is None:
            from concurrent.futures import ThreadPoolExecutor

            self._writing = ThreadPoolExecutor(1, thread_name_prefix="normcli-hdf5")
        return self._writing

    def stop_writing(self) -> None:
        """Let the writing thread end (its writes were awaited, or are into what the run's Outputs discard)."""
        if self._writing is not None:
            self._writing.shutdown(wait=False)


# The member's timestamp and permissions in an .npz output: fixed, so that one input gives the same bytes
# on every run (zip's earliest date; the file's own time would differ from run to run).
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def _store_in_zip(path: str, archive_path: str, name: str) -> None:
    """The file `path` as the one member `name` of a new zip at `archive_path` (stored, as np.savez does)."""
    info = zipfile.ZipInfo(name, ZIP_TIME)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    with zipfile.ZipFile(archive_path, "w", allowZip64=True) as archive, open(path, "rb") as source, \
            archive.open(info, "w", force_zip64=os.path.getsize(path) >= zipfile.ZIP64_LIMIT) as member:
        shutil.copyfileobj(source, member, 1 << 20)


def write_array(target: str, array: np.ndarray, outputs: Outputs, *, force: bool, layout: Layout) -> str:
    """Write a whole in-memory array (e.g. `normcli sample`) through the same sinks, staged in the
    run's `outputs`; returns what was written (the closing report line)."""
    kind = output_kind(target)
    compressor = _store_compressor(kind, None, target)
    spec = OutputSpec(target, kind, array.dtype, "tiff" if kind == "folder" else None, compressor=compressor)
    if kind == "folder":
        check_target(target, [], force, folder=True,
                     writes={relative_name(None, i, "tiff", len(array)) for i in range(len(array))})
    elif kind != "stdout":
        check_target(target, [], force, store=compressor is not None)
    sink = Sink(spec, layout, array.shape[1:], len(array), outputs)
    try:
        stored = sink.writer.put(array, 0)
        sink.finish(sink.write_in_order(stored) if stored.data is not None else stored)
    finally:
        sink.stop_writing()
    return sink.describe()
