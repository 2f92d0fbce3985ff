"""The "Add an input format" recipe of docs/ARCHITECTURE.md, followed in this file alone: a toy raw
format (a tiny header, then the samples in C order) as a part class, a piece class and one
(recognizer, opener) pair in sources.FORMATS. Every report and output of it equals that of the same
data as .npy, on the threads and the processes engines."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np
import pytest

from conftest import run_cli
from normcli import sources
from normcli.arrayparts import check_array_header
from normcli.errors import InputError
from normcli.parts import OpenOptions, Part, Piece, file_with_suffix
from normcli.sources import Dataset

MAGIC = b"TOY1"


def write_toy(path, x: np.ndarray) -> None:
    """MAGIC, the dtype's length and str, the number of axes, each axis (uint64), then the values."""
    dtype = x.dtype.str.encode()
    with open(path, "wb") as f:
        f.write(MAGIC + bytes([len(dtype)]) + dtype + bytes([x.ndim]) + struct.pack(f"<{x.ndim}Q", *x.shape))
        f.write(np.ascontiguousarray(x).tobytes())


class ToyPart(Part):
    """A .toy file: its header read and checked against the file's size before anything is allocated."""

    def __init__(self, name: str):
        self.name = name
        self.path = os.path.abspath(name)  # pieces are read by workers that may not share our cwd
        with open(self.path, "rb") as f:
            head = f.read(len(MAGIC) + 1)
            if head[:len(MAGIC)] != MAGIC or len(head) != len(MAGIC) + 1:
                raise InputError("not a toy array", name)
            try:
                dtype = np.dtype(f.read(head[-1]).decode())
                ndim = f.read(1)[0]
                shape = struct.unpack(f"<{ndim}Q", f.read(8 * ndim))
            except (TypeError, ValueError, IndexError, struct.error) as exc:
                raise InputError(f"damaged toy header: {exc}", name) from None
            self.offset = f.tell()
        check_array_header(shape, False, dtype, os.path.getsize(self.path) - self.offset, name)
        self.n_samples, self.sample_shape, self.dtype, self.ndim = shape[0], tuple(shape[1:]), dtype, len(shape)
        self.sample_bytes = int(np.prod(self.sample_shape)) * dtype.itemsize

    def blocks(self, max_bytes: int) -> list[Piece]:
        per_block = max(1, max_bytes // self.sample_bytes)
        return [self.piece(range(start, min(start + per_block, self.n_samples)))
                for start in range(0, self.n_samples, per_block)]

    def piece(self, local) -> Piece:
        return ToyPiece(self.path, self.offset, self.dtype, self.sample_shape, tuple(int(i) for i in local))


@dataclass(frozen=True)
class ToyPiece(Piece):
    """Samples of a .toy file at `indices`: all that a worker needs to read them, no open file."""

    path: str
    offset: int
    dtype: np.dtype
    sample_shape: tuple
    indices: tuple[int, ...]

    def read(self) -> np.ndarray:
        out = np.empty((len(self.indices), *self.sample_shape), self.dtype)
        with open(self.path, "rb") as f:
            for sample, index in zip(out, self.indices):
                f.seek(self.offset + index * sample.nbytes)
                f.readinto(memoryview(sample.reshape(-1)).cast("B"))
        return out

    @property
    def count(self) -> int:
        return len(self.indices)


def open_toy(name: str, options: OpenOptions) -> ToyPart:
    return ToyPart(name)


@pytest.fixture
def toy_format(monkeypatch):
    """The recipe's one registration line, and blocks small enough that every input spans several."""
    monkeypatch.setattr(sources, "FORMATS", [*sources.FORMATS, (file_with_suffix(".toy"), open_toy)])
    monkeypatch.setattr(Dataset, "block_bytes", 1000)


@pytest.fixture(params=["float32", "uint8"])
def twins(request, chdir, rng):
    """The same samples as data.toy and as data.npy (names of one length, so tables line up alike)."""
    x = rng.normal(100.0, 20.0, (23, 6, 5, 3))
    x = x.astype(np.float32) if request.param == "float32" else np.clip(x, 0, 255).astype(np.uint8)
    write_toy(chdir / "data.toy", x)
    np.save(chdir / "data.npy", x)
    return chdir


def as_npy(text: str) -> str:
    return text.replace("data.toy", "data.npy")


@pytest.mark.parametrize("engine", ["threads", "processes"])
@pytest.mark.parametrize("per", ["channel", "sample", "global"])
def test_a_format_added_as_the_recipe_says_reports_and_applies_as_npy(twins, toy_format, engine, per):
    run = ["--engine", engine, "--workers", "2"]
    for report in ("table", "json", "csv"):
        toy = run_cli("stats", "data.toy", "--per", per, "--format", report, *run).stdout
        npy = run_cli("stats", "data.npy", "--per", per, "--format", report, *run).stdout
        assert as_npy(toy) == npy, report
    run_cli("standardize", "data.toy", "--per", per, "-o", "fit_toy.npy", "--save-stats", "toy.json", "-q", *run)
    run_cli("standardize", "data.npy", "--per", per, "-o", "fit_npy.npy", "--save-stats", "npy.json", "-q", *run)
    assert as_npy((twins / "toy.json").read_text()) == (twins / "npy.json").read_text()
    np.testing.assert_array_equal(np.load(twins / "fit_toy.npy"), np.load(twins / "fit_npy.npy"))
    if per == "sample":
        return  # per-sample statistics fit their own samples only: they are not applied to others
    run_cli("standardize", "data.toy", "--stats-from", "npy.json", "-o", "applied_toy.npy", "-q", *run)
    run_cli("standardize", "data.npy", "--stats-from", "toy.json", "-o", "applied_npy.npy", "-q", *run)
    np.testing.assert_array_equal(np.load(twins / "applied_toy.npy"), np.load(twins / "fit_npy.npy"))
    np.testing.assert_array_equal(np.load(twins / "applied_npy.npy"), np.load(twins / "fit_npy.npy"))


def test_a_toy_header_that_claims_more_than_the_file_holds_is_one_line(chdir, toy_format):
    write_toy(chdir / "data.toy", np.zeros((4, 3), np.float64))
    with open(chdir / "data.toy", "r+b") as f:
        f.truncate(os.path.getsize(chdir / "data.toy") - 8)
    result = run_cli("stats", "data.toy", ok=False)
    assert result.exit_code == 1
    assert result.stderr == ("error: its header claims shape (4, 3) of float64, 96 bytes, but the file holds 88 "
                             "(truncated or damaged) (data.toy)\n")
    assert sorted(p.name for p in chdir.iterdir()) == ["data.toy"]
