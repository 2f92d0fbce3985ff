"""Hostile inputs: .npy/.npz headers checked against the file before any allocation, damaged
archives, statistics files with impossible numbers, option values that are not finite (issue 9:
5, 7, 8). Each refusal is one line, exit 1 or 2, and leaves everything as it was."""

from __future__ import annotations

import json
import math
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import run_cli
from normcli import arrayparts, statsfile
from normcli.errors import StatsFileError
from refusals import workspace  # noqa: F401  (the fixture)

_FIXTURE = [HealthCheck.function_scoped_fixture]


def npy_bytes(descr, shape, data: bytes, fortran=False, version=(1, 0)) -> bytes:
    """A .npy file with any header at all: what a hostile or damaged file may claim."""
    import io

    stream = io.BytesIO()
    header = {"descr": descr, "fortran_order": fortran, "shape": tuple(shape)}
    writer = np.lib.format.write_array_header_1_0 if version == (1, 0) else np.lib.format.write_array_header_2_0
    writer(stream, header)
    return stream.getvalue() + data


# -- .npy headers --------------------------------------------------------------------------------
_NUMERIC = ["<f8", "<f4", "<i2", "|u1", "|b1", ">u2"]
_OTHER = ["<c16", "|S3", "<U2", "|V4", "<M8[s]", [("a", "<f4")], "(2,)<f4"]
_DIMS = st.one_of(st.integers(0, 6), st.integers(-5, -1), st.sampled_from([2**40, 10**15, 2**63 - 1, 2**64]))


@given(descr=st.sampled_from(_NUMERIC + _OTHER), shape=st.lists(_DIMS, min_size=0, max_size=5),
       data_bytes=st.integers(0, 2000), version=st.sampled_from([(1, 0), (2, 0)]))
@settings(max_examples=60, deadline=None, suppress_health_check=_FIXTURE)
# every run, not only with some seeds: zero samples whose shape looks like NCHW (one line, no warning)
@example(descr="<f8", shape=[0, 3, 32, 32], data_bytes=0, version=(1, 0))
def test_npy_headers_are_checked_against_the_file(workspace, descr, shape, data_bytes, version):
    Path("x.npy").write_bytes(npy_bytes(descr, shape, bytes(data_bytes), version=version))
    dtype = np.dtype(descr if not isinstance(descr, list) else [tuple(f) for f in descr])
    numeric = dtype.fields is None and dtype.subdtype is None and dtype.kind in "biuf"
    readable = (numeric and all(d >= 0 for d in shape) and 1 <= len(shape) <= 4
                and math.prod(shape) * dtype.itemsize <= data_bytes
                and shape[0] > 0 and math.prod(shape[1:]) > 0)
    if readable:
        run_cli("stats", "x.npy", "--bins", "0", "--per", "global")
    else:
        workspace.refused("stats", "x.npy", contains="(x.npy)")


HEADERS = [
    # (id, descr, shape, data bytes, the message holds)
    ("negative samples", "<f8", (-5, 3), 0, "negative dimension"),
    ("a petabyte claimed", "<f8", (10**15,), 128, "8,000,000,000,000,000 bytes"),
    ("2**40 squared", "|u1", (2**40, 2**40), 128, "truncated or damaged"),
    ("zero-size samples", "<f4", (5, 0, 3), 0, "samples hold no values"),
    ("complex", "<c8", (2, 2), 32, "complex"),
    ("strings", "<U3", (2,), 24, "string"),
    ("structured", [("a", "<f4"), ("b", "<i4")], (2,), 16, "structured"),
    ("void", "|V8", (2,), 16, "void"),
]


@pytest.mark.parametrize("command", ["stats", "standardize", "batchnorm-shuffle"])
@pytest.mark.parametrize("case", HEADERS, ids=[c[0] for c in HEADERS])
def test_bad_headers_are_refused_at_open(workspace, case, command):
    _, descr, shape, data, contains = case
    Path("x.npy").write_bytes(npy_bytes(descr, shape, bytes(data)))
    args = {"stats": ["stats", "x.npy"], "standardize": ["standardize", "x.npy", "-o", "z.npy"],
            "batchnorm-shuffle": ["batchnorm", "x.npy", "-o", "z.npy", "-b", "2", "--shuffle"]}[command]
    workspace.refused(*args, contains=contains)


def _raw_npy(header: bytes, version: bytes = b"\x01\x00") -> bytes:
    """A .npy whose header text is anything at all (padded as numpy pads it)."""
    magic = b"\x93NUMPY" + version
    padding = (64 - (len(magic) + 2 + len(header) + 1) % 64) % 64
    text = header + b" " * padding + b"\n"
    return magic + struct.pack("<H", len(text)) + text + bytes(64)


MALFORMED = [
    ("unterminated header", _raw_npy(b"{'descr': '<f8', 'fortran_order': False, 'shape': (2,), ")),
    ("float dimension", _raw_npy(b"{'descr': '<f8', 'fortran_order': False, 'shape': (2.0,), }")),
    ("unknown dtype", _raw_npy(b"{'descr': 'zz', 'fortran_order': False, 'shape': (2,), }")),
    ("code in the header", _raw_npy(b"__import__('os').system('true')")),
    ("unknown version", _raw_npy(b"{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", b"\x09\x00")),
    ("no axes", _raw_npy(b"{'descr': '<f8', 'fortran_order': False, 'shape': (), }")),
    ("empty file", b""),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_headers_are_one_line(workspace, case):
    Path("x.npy").write_bytes(case[1])
    workspace.refused("stats", "x.npy", contains="(x.npy)")


# -- .npz archives --------------------------------------------------------------------------------
def _npz(path: str, array: np.ndarray, compression=zipfile.ZIP_STORED, member="data.npy", header=None) -> None:
    import io

    stream = io.BytesIO()
    if header is None:
        np.save(stream, array)
    else:
        stream.write(npy_bytes(*header))
    with zipfile.ZipFile(path, "w", compression) as archive:
        archive.writestr(member, stream.getvalue())


def _corrupt(path: str, at_fraction: float) -> None:
    raw = bytearray(Path(path).read_bytes())
    at = int(len(raw) * at_fraction)
    raw[at:at + 8] = bytes(b ^ 0xFF for b in raw[at:at + 8])
    Path(path).write_bytes(bytes(raw))


def _unsupported_compression(path: str) -> None:
    raw = bytearray(Path(path).read_bytes())
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):  # local and central headers
        at = raw.index(signature)
        raw[at + offset:at + offset + 2] = struct.pack("<H", 99)
    Path(path).write_bytes(bytes(raw))


ARRAY = np.random.default_rng(0).normal(size=(64, 8, 8))


def _bad_crc():
    _npz("x.npz", ARRAY)
    _corrupt("x.npz", 0.5)


def _bad_deflate():
    _npz("x.npz", np.repeat(ARRAY, 2, axis=0), zipfile.ZIP_DEFLATED)
    _corrupt("x.npz", 0.4)


NPZ = [
    ("bad CRC", _bad_crc, "damaged .npz member"),
    ("corrupt deflate", _bad_deflate, "damaged .npz member"),
    ("unsupported compression", lambda: (_npz("x.npz", ARRAY), _unsupported_compression("x.npz")),
     "damaged .npz member"),
    ("member header claims more than it holds", lambda: _npz("x.npz", ARRAY, header=("<f8", (10**9, 8), bytes(64))),
     "truncated or damaged"),
    ("negative shape in a member", lambda: _npz("x.npz", ARRAY, header=("<f8", (-3, 8), b"")),
     "negative dimension"),
]


@pytest.mark.parametrize("case", NPZ, ids=[c[0] for c in NPZ])
def test_damaged_npz_is_one_line(workspace, case):
    _, setup, contains = case
    setup()
    workspace.refused("standardize", "x.npz", "-o", "z.npy", contains=contains)


def test_fortran_npz_members_are_read_whole_only_below_the_limit(workspace, monkeypatch):
    array = np.asfortranarray(ARRAY)
    np.savez("f.npz", data=array)
    np.save("c.npy", ARRAY)
    run_cli("standardize", "f.npz", "-o", "zf.npy")
    run_cli("standardize", "c.npy", "-o", "zc.npy")
    np.testing.assert_array_equal(np.load("zf.npy"), np.load("zc.npy"))
    monkeypatch.setattr(arrayparts, "FORTRAN_NPZ_MAX_BYTES", ARRAY.nbytes - 1)
    workspace.refused("stats", "f.npz", contains="save it in C order")


def test_a_file_name_with_a_newline_stays_one_line(workspace):
    Path("a\nb.npy").write_bytes(npy_bytes("<f8", (10, 2), bytes(8)))
    result = workspace.refused("stats", "a\nb.npy")
    assert result.stderr.rstrip("\n").endswith("(a\\nb.npy)")


# -- statistics files ---------------------------------------------------------------------------
def _saved(workspace) -> dict:
    np.save("d.npy", np.random.default_rng(2).normal(3, 1, (5, 4, 4, 3)))
    run_cli("standardize", "d.npy", "-o", "z.npy", "--per", "channel", "--save-stats", "s.json")
    Path("z.npy").unlink()
    return json.loads(Path("s.json").read_text())


def _deeply_nested(doc: dict) -> str:
    doc["mean"] = "NESTED"
    return json.dumps(doc).replace('"NESTED"', "[" * 100_000 + "]" * 100_000)


BAD_FIELDS = [
    ("count", lambda d: d["count"].__setitem__(0, -1), "'count'"),
    ("count", lambda d: d["count"].__setitem__(0, 2.5), "'count'"),
    ("count", lambda d: d["count"].__setitem__(0, float("nan")), "'count'"),
    ("mean", lambda d: d["mean"].__setitem__(1, float("nan")), "'mean'"),
    ("mean", lambda d: d["mean"].__setitem__(1, float("inf")), "'mean'"),
    ("m2", lambda d: d["m2"].__setitem__(2, -1.0), "'m2'"),
    ("m2", lambda d: d["m2"].__setitem__(2, float("-inf")), "'m2'"),
    ("min > max", lambda d: d["min"].__setitem__(0, d["max"][0] + 1), "'min' is above 'max'"),
    ("max", lambda d: d["max"].__setitem__(0, float("inf")), "'max'"),
    ("length", lambda d: d["m2"].__delitem__(-1), "'m2' has 2 values"),
    ("var length", lambda d: d["var"].append(1.0), "'var' has 4 values"),
    ("not numbers", lambda d: d["mean"].__setitem__(0, "x"), "'mean'"),
    ("sample_shape", lambda d: d.__setitem__("sample_shape", [4, -4, 3]), "'sample_shape'"),
    ("nesting", _deeply_nested, "nested too deeply"),
]


@pytest.mark.parametrize("use", ["stats-from", "merge-stats"])
@pytest.mark.parametrize("case", BAD_FIELDS, ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD_FIELDS)])
def test_impossible_statistics_are_refused_naming_the_field(workspace, case, use):
    _, mutate, contains = case
    doc = _saved(workspace)
    text = mutate(doc) or json.dumps(doc)  # json writes NaN and Infinity as their tokens
    Path("bad.json").write_text(text)
    args = (["standardize", "d.npy", "-o", "z.npy", "--stats-from", "bad.json"] if use == "stats-from"
            else ["merge-stats", "s.json", "bad.json", "-o", "all.json"])
    workspace.refused(*args, contains=contains)


_VALUES = st.floats(allow_nan=True, allow_infinity=True, width=64) | st.integers(-3, 10**6)


@given(count=st.lists(_VALUES, min_size=3, max_size=3), mean=st.lists(_VALUES, min_size=3, max_size=3),
       m2=st.lists(_VALUES, min_size=3, max_size=3), low=st.lists(_VALUES, min_size=3, max_size=3),
       high=st.lists(_VALUES, min_size=3, max_size=3))
@settings(max_examples=150, deadline=None, suppress_health_check=_FIXTURE)
def test_a_statistics_file_is_read_exactly_when_its_numbers_are_possible(tmp_path, count, mean, m2, low, high):
    doc = {"normcli_stats": 1, "per": "channel", "layout": "NHWC", "sample_shape": [2, 2, 3], "count": count,
           "mean": mean, "m2": m2, "min": low, "max": high, "ddof": 0}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(doc))
    measured = [c > 0 if math.isfinite(c) else False for c in count]
    possible = (all(math.isfinite(c) and 0 <= c < 2**63 and c == int(c) for c in count)
                and all(math.isfinite(v) for name in (mean, m2, low, high) for v, m in zip(name, measured) if m)
                and all(v >= 0 for v, m in zip(m2, measured) if m)
                and all(a <= b for a, b, m in zip(low, high, measured) if m))
    if possible:
        read = statsfile.read(str(path))
        np.testing.assert_array_equal(read.moments.count, count)
    else:
        with pytest.raises(StatsFileError, match="malformed statistics file: '(count|mean|m2|min|max)"):
            statsfile.read(str(path))


# -- option values --------------------------------------------------------------------------------
OPTIONS = [
    # (option, command line without it, lowest valid value (None: any finite), highest valid value)
    ("--eps", ["standardize", "d.npy", "-o", "z.npy"], 0.0, None),
    ("--gamma", ["batchnorm", "d.npy", "-o", "z.npy", "-b", "2"], None, None),
    ("--beta", ["groupnorm", "d.npy", "-o", "z.npy", "-g", "1"], None, None),
    ("--momentum", ["batchnorm", "d.npy", "-o", "z.npy", "-b", "2"], 0.0, 1.0),
    ("--seed", ["batchnorm", "d.npy", "-o", "z.npy", "-b", "2", "--shuffle"], 0, None),
]
# Valid values stay moderate: an output beyond float32 is the numerics' concern, not the options'.
_TEXTS = (st.floats(-1e6, 1e6).map(repr)
          | st.sampled_from(["nan", "inf", "-inf", "Infinity", "NaN", "1e400", "-0", "x"])
          | st.integers(-10, 10).map(str))


@pytest.mark.parametrize("option", OPTIONS, ids=[o[0] for o in OPTIONS])
@given(text=_TEXTS)
@settings(max_examples=25, deadline=None, suppress_health_check=_FIXTURE)
def test_option_values_are_finite_and_in_range(workspace, option, text):
    name, args, low, high = option
    if not Path("d.npy").exists():
        np.save("d.npy", np.random.default_rng(3).normal(size=(4, 3, 3, 2)))
    try:
        value = int(text) if name == "--seed" else float(text)
    except ValueError:
        value = None
    valid = value is not None and math.isfinite(value) and (low is None or value >= low) \
        and (high is None or value <= high)
    if valid:
        run_cli(*args, name, text, "--quiet", "--force")
    else:
        workspace.refused(*args, name, text, code=2, contains=name)


@pytest.mark.parametrize("args, contains", [
    (["normalize", "d.npy", "-o", "z.npy", "--range", "-inf", "inf"], "--range"),
    (["stats", "d.npy", "--range", "0", "nan"], "--range"),
    (["sample", "s.npy", "--size", "100000"], "GiB"),
    (["sample", "s.npy", "-n", "100000000"], "GiB"),
    (["sample", "s.npy", "--seed", "-1"], "--seed"),
    (["demo", "--seed", "-1"], "--seed"),
], ids=["range inf", "stats range nan", "sample size", "sample n", "sample seed", "demo seed"])
def test_unbounded_or_non_finite_options_are_usage_errors(workspace, args, contains):
    np.save("d.npy", np.ones((2, 2)))
    workspace.refused(*args, code=2, contains=contains)
