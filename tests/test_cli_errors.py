"""Bad inputs, outputs and options: the exit code, one `error:` line naming the file, no traceback,
and nothing written.

One table of cases runs against every command it applies to (as csvkit runs its shared
error cases against each of its tools).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import write_image
from refusals import snapshot
from normcli.cli import cli

ALL = ("stats", "normalize", "standardize", "batchnorm", "groupnorm")
TRANSFORMS = ALL[1:]
FITTING = ("normalize", "standardize")


def command_line(command: str, inputs: list[str], output: str, options: list[str]) -> list[str]:
    required = {"stats": [], "normalize": [], "standardize": [], "batchnorm": ["-b", "2"], "groupnorm": ["-g", "1"]}
    out = [] if command == "stats" else ["-o", output]
    return [command, *inputs, *out, *required[command], *options]


def data(shape=(6, 5, 4, 2), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(10.0, 3.0, shape)


# -- the cases ------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    setup: Callable[[], None]
    inputs: list[str]
    commands: tuple = ALL
    options: list[str] = field(default_factory=list)
    output: str = "out.npy"
    exit_code: int = 1
    names: str | None = None  # the file the message must name
    words: tuple = ()  # further words the message must hold


def save_x():
    np.save("x.npy", data())


def write_text(name, text):
    def setup():
        save_x()
        Path(name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return setup


def truncated():
    np.save("trunc.npy", data((50, 5, 4, 2)))
    raw = Path("trunc.npy").read_bytes()
    Path("trunc.npy").write_bytes(raw[:len(raw) // 2])


def tabular_with_image_stats():
    np.save("tab.npy", data((10, 2)))
    Path("s.json").write_text(json.dumps(valid_stats_doc()))


def same_name_two_types():
    rng = np.random.default_rng(4)
    write_image(Path("imgs", "a.png"), rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    write_image(Path("imgs", "a.jpg"), rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))


def object_npy():
    np.save("obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)


def two_arrays():
    np.savez("two.npz", a=data(), b=data(seed=1))


def with_nan():
    x = data()
    x[3, 1, 2, 0] = np.nan
    x[4, 0, 0, 1] = np.nan
    np.save("nan.npy", x)


def mismatched_shapes():
    np.save("x.npy", data())
    np.save("y.npy", data((6, 5, 3, 2)))


def empty_folder():
    os.mkdir("empty")
    Path("empty", "notes.txt").write_text("no images here")


def broken_image():
    write_image(Path("imgs", "0.png"), np.zeros((4, 4, 3), np.uint8))
    Path("imgs", "1.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")


def empty_array():
    np.save("empty.npy", np.zeros((0, 5, 4, 2)))


def empty_nchw_looking_array():
    """Zero PyTorch-shaped samples: the error alone, not the NCHW warning before it (issue 24.6)."""
    np.save("empty.npy", np.zeros((0, 3, 32, 32)))


def huge_values():
    np.save("huge.npy", np.full((3, 5, 4, 2), 1.7e308))


def output_exists():
    save_x()
    Path("out.npy").write_bytes(b"keep me")


def png_folder():
    rng = np.random.default_rng(4)
    for i in range(3):
        write_image(Path("imgs", f"{i}.png"), rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))


def mixed_sizes():
    rng = np.random.default_rng(4)
    write_image(Path("imgs", "a.png"), rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    write_image(Path("imgs", "b.png"), rng.integers(0, 256, (5, 7, 3), dtype=np.uint8))


def stats_file(doc):
    def setup():
        save_x()
        Path("s.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return setup


def valid_stats_doc(**changes):
    x = data().reshape(-1, 2)
    doc = {"normcli_stats": 1, "per": "channel", "layout": "NHWC", "sample_shape": [5, 4, 2],
           "count": [len(x)] * 2, "mean": x.mean(0).tolist(), "m2": (x.var(0) * len(x)).tolist(),
           "var": x.var(0).tolist(), "min": x.min(0).tolist(), "max": x.max(0).tolist(), "ddof": 0,
           "inputs": ["x.npy"], "running_mean": x.mean(0).tolist(), "running_var": x.var(0).tolist(),
           "momentum": 0.1, "batches": 3}
    doc.update(changes)
    return doc


STATS_FROM = ["--stats-from", "s.json"]

CASES = [
    # Inputs: every command.
    Case("missing-file", save_x, ["missing.npy"], names="missing.npy"),
    Case("missing-second-input", save_x, ["x.npy", "missing.npy"], names="missing.npy"),
    Case("unknown-suffix", write_text("data.txt", "1,2,3\n"), ["data.txt"], names="data.txt"),
    Case("corrupt-npy", write_text("bad.npy", b"this is not an array at all"), ["bad.npy"], names="bad.npy"),
    Case("truncated-npy", truncated, ["trunc.npy"], names="trunc.npy", words=("truncated",)),
    Case("object-npy", object_npy, ["obj.npy"], names="obj.npy"),
    Case("npz-several-arrays", two_arrays, ["two.npz"], names="two.npz", words=("--key",)),
    Case("npz-unknown-key", two_arrays, ["two.npz"], options=["--key", "c"], names="two.npz"),
    Case("not-an-npz", write_text("bad.npz", b"PK but not a zip"), ["bad.npz"], names="bad.npz"),
    Case("nan-without-ignore-nan", with_nan, ["nan.npy"], names="nan.npy",
         words=("2 NaN", "sample 3", "--ignore-nan")),
    Case("shapes-differ", mismatched_shapes, ["x.npy", "y.npy"], names="y.npy"),
    Case("folder-without-images", empty_folder, ["empty"], names="empty"),
    Case("no-samples", empty_array, ["empty.npy"], names="empty.npy", words=("no samples",)),
    Case("no-samples-nchw-looking", empty_nchw_looking_array, ["empty.npy"], names="empty.npy",
         words=("no samples",)),
    Case("sums-overflow-float64", huge_values, ["huge.npy"], words=("too large",)),
    Case("broken-image", broken_image, ["imgs"], names="1.png"),
    # Outputs: the transforms.
    Case("output-exists", output_exists, ["x.npy"], TRANSFORMS, names="out.npy", words=("--force",)),
    Case("output-parent-missing", save_x, ["x.npy"], TRANSFORMS, output="nodir/out.npy", names="nodir/out.npy"),
    Case("output-is-input", save_x, ["x.npy"], TRANSFORMS, output="x.npy", names="x.npy"),
    Case("standardized-into-png", png_folder, ["imgs"], ("standardize", "batchnorm", "groupnorm"),
         output="pngout", names="pngout", words=("--clip", "tiff")),
    Case("normalize-range-into-png", png_folder, ["imgs"], ("normalize",), options=["--range", "-1", "1"],
         output="pngout", names="pngout", words=("--clip",)),
    Case("mixed-sizes-into-one-array", mixed_sizes, ["imgs"], TRANSFORMS, names="out.npy", words=("folder",)),
    Case("two-images-onto-one-output-file", same_name_two_types, ["imgs"], ("normalize",), output="outdir",
         names="outdir", words=("a.png", "a.jpg")),
    Case("save-stats-exists", stats_file("{}"), ["x.npy"], FITTING + ("batchnorm",),
         options=["--save-stats", "s.json"], names="s.json"),
    Case("save-stats-parent-missing", save_x, ["x.npy"], FITTING + ("batchnorm",),
         options=["--save-stats", "nodir/s.json"], names="nodir/s.json", words=("does not exist",)),
    Case("save-over-the-input", save_x, ["x.npy"], ("stats",), options=["--save", "x.npy", "--force"],
         names="x.npy", words=("input",)),
    # Usage errors: exit 2.
    Case("groups-do-not-divide-channels", save_x, ["x.npy"], ("groupnorm",), options=["-g", "3"], exit_code=2),
    Case("inverse-without-stats-from", save_x, ["x.npy"], FITTING, options=["--inverse"], exit_code=2),
    Case("save-stats-and-stats-from", stats_file(valid_stats_doc()), ["x.npy"], FITTING,
         options=["--save-stats", "t.json", *STATS_FROM], exit_code=2),
    Case("bad-scope", save_x, ["x.npy"], ALL[:3], options=["--per", "everything"], exit_code=2),
    Case("layout-does-not-fit", save_x, ["x.npy"], ALL, options=["--layout", "NC"], exit_code=2),
    # Saved statistics that are missing, malformed or do not fit.
    Case("stats-file-missing", save_x, ["x.npy"], FITTING, options=STATS_FROM, names="s.json"),
    Case("stats-file-not-json", stats_file("{not json"), ["x.npy"], FITTING, options=STATS_FROM, names="s.json"),
    Case("stats-file-not-normcli", stats_file({"mean": [1]}), ["x.npy"], FITTING, options=STATS_FROM,
         names="s.json"),
    Case("stats-file-missing-key", stats_file({k: v for k, v in valid_stats_doc().items() if k != "m2"}),
         ["x.npy"], FITTING, options=STATS_FROM, names="s.json"),
    Case("stats-file-wrong-length", stats_file(valid_stats_doc(mean=[1.0, 2.0, 3.0])), ["x.npy"], FITTING,
         options=STATS_FROM, names="s.json"),
    Case("stats-file-wrong-channels", stats_file(valid_stats_doc(
        sample_shape=[5, 4, 3], **{k: [1.0, 1.0, 1.0] for k in ("count", "mean", "m2", "var", "min", "max")})),
         ["x.npy"], FITTING, options=STATS_FROM, names="s.json"),
    Case("stats-file-sample-scope", stats_file(valid_stats_doc(per="sample")), ["x.npy"], FITTING,
         options=STATS_FROM, names="s.json"),
    Case("stats-file-ddof-5", stats_file(valid_stats_doc(ddof=5)), ["x.npy"], FITTING, options=STATS_FROM,
         names="s.json", words=("ddof",)),
    Case("stats-file-layout-does-not-fit-the-data", tabular_with_image_stats, ["tab.npy"], FITTING,
         options=STATS_FROM, names="s.json", words=("NHWC",)),
    Case("ddof-contradicts-stats-file", stats_file(valid_stats_doc()), ["x.npy"], ("standardize",),
         options=[*STATS_FROM, "--ddof", "1"], exit_code=2),
    Case("truncated-npy-shuffled", truncated, ["trunc.npy"], ("batchnorm",), options=["--shuffle"],
         names="trunc.npy", words=("truncated",)),
    Case("pixel-scope-on-mixed-sizes", mixed_sizes, ["imgs"], ("stats", "normalize", "standardize", "batchnorm"),
         options=["--per", "pixel"], output="outdir", names="imgs", words=("--per pixel",)),
]
BATCHNORM_EVAL = ["--eval", *STATS_FROM]
CASES += [
    Case("eval-stats-file-not-json", stats_file("[1, 2"), ["x.npy"], ("batchnorm",), options=BATCHNORM_EVAL,
         names="s.json"),
    Case("eval-stats-file-wrong-length", stats_file(valid_stats_doc(running_mean=[0.0])), ["x.npy"],
         ("batchnorm",), options=BATCHNORM_EVAL, names="s.json"),
    Case("eval-stats-file-without-running", stats_file({k: v for k, v in valid_stats_doc().items()
                                                        if not k.startswith("running")}),
         ["x.npy"], ("batchnorm",), options=BATCHNORM_EVAL, names="s.json"),
]

PAIRS = [pytest.param(case, command, id=f"{case.id}-{command}") for case in CASES for command in case.commands]


def check_failure(result, case_exit_code: int, names: str | None = None, words=()):
    assert result.exit_code == case_exit_code, (result.exit_code, result.stdout, result.stderr)
    # No traceback: the error left through the one error boundary, not as a Python exception.
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    if case_exit_code == 1:
        assert len(lines) == 1, result.stderr
        line = lines[0]
        assert line.startswith("error: ")
        if names is not None:
            assert f"({names})" in line or names in line, line
        for word in words:
            assert word in line, line
    else:
        assert lines[0].startswith("Usage: ")
        assert lines[-1].startswith("Error: ")


@pytest.mark.parametrize("case, command", PAIRS)
def test_bad_input_fails_cleanly_and_writes_nothing(chdir, case, command):
    case.setup()
    before = snapshot(chdir)
    args = command_line(command, case.inputs, case.output, case.options)
    result = CliRunner().invoke(cli, args)
    check_failure(result, case.exit_code, case.names, case.words)
    assert snapshot(chdir) == before  # no output, no temporary files, an existing output untouched


def test_the_error_names_the_output_parent_folder(chdir):
    save_x()
    result = CliRunner().invoke(cli, ["standardize", "x.npy", "-o", "nodir/z.npy"])
    check_failure(result, 1, "nodir/z.npy", ("nodir", "does not exist"))


def test_output_exists_is_replaced_with_force(chdir):
    output_exists()
    result = CliRunner().invoke(cli, ["standardize", "x.npy", "-o", "out.npy", "--force", "-q"])
    assert result.exit_code == 0, result.stderr
    assert np.load("out.npy").shape == data().shape
    assert sorted(os.listdir(".")) == ["out.npy", "x.npy"]


def test_existing_output_folder_untouched_by_a_failed_run(chdir):
    png_folder()
    os.mkdir("pngout")
    Path("pngout", "old.png").write_bytes(b"old")
    before = snapshot(chdir)
    result = CliRunner().invoke(cli, ["standardize", "imgs", "-o", "pngout", "--force"])
    check_failure(result, 1, "pngout")
    assert snapshot(chdir) == before


@pytest.mark.parametrize("args, bad", [
    (["stats", "x.npy", "--bins", "-1"], "--bins"),
    (["stats", "x.npy", "--format", "yaml"], "--format"),
    (["batchnorm", "x.npy", "-o", "o.npy", "-b", "0"], "--batch-size"),
    (["batchnorm", "x.npy", "-o", "o.npy"], "--batch-size"),
    (["batchnorm", "x.npy", "-o", "o.npy", "-b", "2", "--momentum", "2"], "--momentum"),
    (["batchnorm", "x.npy", "-o", "o.npy", "-b", "2", "--gamma", "1,2,3"], "--gamma"),
    (["groupnorm", "x.npy", "-o", "o.npy", "-g", "1", "--beta", "x"], "--beta"),
    (["groupnorm", "x.npy", "-o", "o.npy", "-g", "3"], "--groups"),
    (["normalize", "x.npy", "-o", "o.npy", "--range", "1", "0"], "--range"),
    (["normalize", "x.npy"], "-o"),
    (["stats"], "INPUT"),
])
def test_usage_errors_exit_2_and_name_the_option(chdir, args, bad):
    save_x()
    before = snapshot(chdir)
    result = CliRunner().invoke(cli, args)
    check_failure(result, 2)
    assert bad in result.stderr
    assert snapshot(chdir) == before


def test_merge_stats_malformed_file(chdir):
    stats_file("{oops")()
    Path("good.json").write_text(json.dumps(valid_stats_doc()))
    before = snapshot(chdir)
    result = CliRunner().invoke(cli, ["merge-stats", "good.json", "s.json", "-o", "all.json"])
    check_failure(result, 1, "s.json")
    assert snapshot(chdir) == before


def test_drop_last_leaving_nothing_is_a_usage_error(chdir):
    save_x()
    result = CliRunner().invoke(cli, ["batchnorm", "x.npy", "-o", "o.npy", "-b", "100", "--drop-last"])
    check_failure(result, 2)
    assert not os.path.exists("o.npy")


def test_batch_of_one_sample_has_no_variance(chdir):
    np.save("x.npy", data((5, 1)))  # NC: each channel's batch of one sample has a single value
    before = snapshot(chdir)
    result = CliRunner().invoke(cli, ["batchnorm", "x.npy", "-o", "o.npy", "-b", "2"])
    check_failure(result, 2)
    assert "--drop-last" in result.stderr
    assert snapshot(chdir) == before


# -- --debug -----------------------------------------------------------------------------
def test_debug_raises_the_exception_itself(chdir):
    from normcli.errors import InputError

    result = CliRunner().invoke(cli, ["--debug", "stats", "missing.npy"])
    assert result.exit_code == 1
    assert isinstance(result.exception, InputError)
    assert result.exception.path == "missing.npy"


def test_debug_shows_a_traceback_in_a_real_process(chdir):
    with_nan()
    command = [sys.executable, "-m", "normcli"]
    quiet = subprocess.run([*command, "standardize", "nan.npy", "-o", "z.npy"], capture_output=True, text=True,
                           timeout=60)
    loud = subprocess.run([*command, "--debug", "standardize", "nan.npy", "-o", "z.npy"], capture_output=True,
                          text=True, timeout=60)
    assert quiet.returncode == 1 and loud.returncode == 1
    assert "Traceback" not in quiet.stderr and quiet.stderr.startswith("error: ")
    assert "Traceback (most recent call last)" in loud.stderr
    assert "NonFiniteError" in loud.stderr
    assert sorted(os.listdir(".")) == ["nan.npy"]
