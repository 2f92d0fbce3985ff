"""Outputs are exactly what -o names, never escape it, --force deletes nothing the run does not
write, and every output of a run commits together or not at all (issue 9: 1 to 4)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import tempfile
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run_cli, write_image
from normcli.errors import OutputError, Terminated
from normcli.layout import Layout
from normcli.sinks import OutputSpec, Outputs, Sink, inside
from helpers import read_blocks
from refusals import snapshot, workspace  # noqa: F401  (the fixture)


def _images(root: Path, names, seed=0) -> None:
    rng = np.random.default_rng(seed)
    for name in names:
        write_image(root / name, rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))


@pytest.fixture
def inputs(workspace):
    np.save("d.npy", np.random.default_rng(1).normal(5, 2, (6, 4, 4, 1)))
    _images(workspace.root / "imgs", ["a.png", "sub/b.png"])
    _images(workspace.root, ["one.png"])
    run_cli("stats", "d.npy", "--save", "a.json", "--quiet")
    run_cli("stats", "d.npy", "--save", "b.json", "--quiet")
    return workspace


# -- refused outputs: one table -------------------------------------------------------------------
def _foreign_file():
    os.mkdir("out")
    Path("out/notes.txt").write_text("mine")


def _foreign_folder():
    os.makedirs("out/keep")


def _own_plus_foreign():
    run_cli("normalize", "imgs", "-o", "out")
    Path("out/sub/notes.txt").write_text("mine")


REFUSED = [
    # (id, setup, command line, exit code, the message holds)
    ("unknown suffix", None, ["normalize", "d.npy", "-o", "out.csv"], 2, "unknown output type '.csv'"),
    ("typo of .npy", None, ["normalize", "d.npy", "-o", "out.np"], 2, "-o takes NAME.npy"),
    ("image suffix, folder input", None, ["normalize", "imgs", "-o", "result.png"], 2, "single image input"),
    ("image suffix, array input", None, ["normalize", "d.npy", "-o", "result.tiff"], 2, "unknown output type"),
    ("JPEG for one image", None, ["normalize", "one.png", "-o", "one.jpg"], 2, "PNG or TIFF"),
    ("--ext on an image file", None, ["normalize", "one.png", "-o", "x.png", "--ext", "tiff"], 2, "--ext"),
    ("sample: unknown suffix", None, ["sample", "out.csv"], 2, "unknown output type"),
    ("--force onto a foreign file", _foreign_file, ["normalize", "imgs", "-o", "out", "-f"], 1, "notes.txt"),
    ("--force onto a foreign folder", _foreign_folder, ["normalize", "imgs", "-o", "out", "-f"], 1, "keep"),
    ("--force onto own files plus one more", _own_plus_foreign, ["normalize", "imgs", "-o", "out", "-f"], 1,
     "sub/notes.txt"),
    ("sample --force onto a foreign file", _foreign_file, ["sample", "out", "-n", "2", "-f"], 1, "notes.txt"),
    ("merge-stats onto its own input", None, ["merge-stats", "a.json", "b.json", "-o", "a.json", "-f"], 1,
     "is, or holds, an input"),
    ("existing output", lambda: run_cli("normalize", "d.npy", "-o", "o.npy"),
     ["normalize", "d.npy", "-o", "o.npy"], 1, "already exists"),
    ("existing --save-stats", lambda: Path("s.json").write_text("{}"),
     ["standardize", "d.npy", "-o", "z.npy", "--save-stats", "s.json"], 1, "already exists"),
    ("--save-stats inside the output folder", lambda: run_cli("normalize", "imgs", "-o", "out"),
     ["normalize", "imgs", "-o", "out", "-f", "--save-stats", "out/s.json"], 2, "inside the -o folder"),
    ("a --save-stats that cannot be written takes the output with it", None,
     ["standardize", "d.npy", "-o", "z.npy", "--save-stats", "s" * 250 + ".json"], 1, "File name too long"),
    ("name too long for its temporary", None, ["normalize", "d.npy", "-o", "x" * 250 + ".npy"], 1,
     "File name too long"),
]


@pytest.mark.parametrize("case", REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_outputs_leave_everything_as_it_was(inputs, case):
    _, setup, args, code, contains = case
    if setup:
        setup()
    inputs.refused(*args, code=code, contains=contains)


# -- what -o names is what the user gets ----------------------------------------------------------
def _names(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("target, kind", [("o.npy", "npy"), ("o.NPZ", "npz"), ("out", "folder"),
                                          ("out.d/", "folder"), ("exists.v2", "folder")])
def test_the_output_kind_follows_the_rule(inputs, target, kind):
    if target == "exists.v2":
        os.mkdir(target)
    result = run_cli("normalize", "d.npy", "-o", target, "--force")
    path = Path(target)
    if kind == "folder":
        assert path.is_dir() and _names(path) == {f"{i:06d}.tiff" for i in range(6)}
        assert result.stdout.splitlines()[-1] == f"wrote 6 TIFF files to {target.rstrip('/')}/"
    else:
        assert path.is_file()
        key = ", key data" if kind == "npz" else ""
        assert result.stdout.splitlines()[-1] == f"wrote {target} (6 samples, float32{key})"


@pytest.mark.parametrize("suffix, ext", [(".png", "PNG"), (".tif", "TIFF"), (".TIFF", "TIFF")])
def test_one_image_input_with_an_image_suffix_writes_that_one_file(inputs, suffix, ext):
    result = run_cli("normalize", "one.png", "-o", f"result{suffix}")
    assert sorted(p.name for p in inputs.root.iterdir() if p.name.startswith("result")) == [f"result{suffix}"]
    dtype = "uint8" if ext == "PNG" else "float32"
    assert result.stdout.splitlines()[-1] == f"wrote result{suffix} ({ext}, {dtype})"
    folder = run_cli("normalize", "one.png", "-o", "as_folder", "--ext", ext.lower())
    assert folder.stdout.splitlines()[-1] == f"wrote 1 {ext} file to as_folder/"
    from normcli.sources import open_dataset

    with open_dataset([f"result{suffix}"]) as written, open_dataset([f"as_folder/one.{ext.lower()}"]) as reference:
        np.testing.assert_array_equal(next(read_blocks(written)).data, next(read_blocks(reference)).data)


def test_the_closing_line_goes_to_stderr_when_stdout_carries_data(inputs):
    result = run_cli("normalize", "d.npy", "-o", "-")
    assert result.stderr.splitlines()[-1] == "wrote 6 samples (float32) to stdout"


def test_force_replaces_a_folder_of_this_runs_own_files(inputs):
    run_cli("normalize", "imgs", "-o", "out", "--dtype", "uint8")
    first = snapshot(Path("out"))
    run_cli("normalize", "imgs", "-o", "out", "--dtype", "uint16", "--force")
    assert snapshot(Path("out")).keys() == first.keys() and snapshot(Path("out")) != first
    assert [p.name for p in inputs.root.iterdir() if p.name.startswith(".")] == []  # no backup left


# -- no file outside -o -------------------------------------------------------------------------
def test_dot_and_dotdot_inputs_name_their_folders_inside_the_output(workspace):
    _images(workspace.root / "A", ["a.png", "sub/b.png"])
    _images(workspace.root / "B", ["c.png"])
    os.makedirs("outs")
    os.chdir("A/sub")
    run_cli("normalize", "..", "../../B", ".", "-o", "../../outs/res", "--dtype", "uint8")
    os.chdir(workspace.root)
    assert _names(Path("outs")) == {"res/A/a.png", "res/A/sub/b.png", "res/B/c.png", "res/sub/b.png"}
    assert _names(workspace.root) == {"A/a.png", "A/sub/b.png", "B/c.png"} | {f"outs/{n}" for n in _names(Path("outs"))}


def test_two_inputs_resolving_to_one_name_are_refused(workspace):
    _images(workspace.root / "A", ["a.png", "sub/a.png"])
    workspace.refused("normalize", "A", "A/sub/..", "-o", "out", contains="would both be written as A/a.png")


_SEGMENTS = st.lists(st.sampled_from(["a", "b", ".", "..", "c.png"]), min_size=1, max_size=6)


@given(_SEGMENTS)
@settings(max_examples=200)
def test_inside_accepts_exactly_the_names_that_stay_inside(segments):
    relative = "/".join(segments)
    depth, escapes = 0, False
    for segment in segments:
        depth += {"..": -1, ".": 0}.get(segment, 1)
        escapes |= depth < 0
    stays = not escapes and depth > 0
    folder = "/nonexistent/base"
    if stays:
        assert inside(folder, relative, "out") == Path(folder) / PurePosixPath(os.path.normpath(relative))
    else:
        with pytest.raises(OutputError, match="outside the output folder"):
            inside(folder, relative, "out")


def test_a_sink_refuses_a_name_outside_before_writing_it(workspace):
    spec = OutputSpec("out", "folder", np.dtype("float32"), "npy")
    outputs = Outputs()
    sink = Sink(spec, Layout("NHW"), (2, 2), 2, outputs)
    try:
        sink.writer.write(np.zeros((1, 2, 2)), 0, ["ok.npy"])
        with pytest.raises(OutputError, match="outside"):
            sink.writer.write(np.zeros((1, 2, 2)), 1, ["../escaped.npy"])
    finally:
        sink.stop_writing()
        outputs.discard()
    assert list(workspace.root.iterdir()) == []


# -- every output of a run commits together -----------------------------------------------------
def _stage(outputs: Outputs, target: str, text: str, folder: bool = False) -> str:
    temp = outputs.stage(target, folder=folder)
    (Path(temp) / "f" if folder else Path(temp)).write_text(text)
    return temp


def test_outputs_commit_together(workspace):
    Path("a.txt").write_text("old a")
    with Outputs() as outputs:
        _stage(outputs, "a.txt", "new a")
        _stage(outputs, "b", "new b", folder=True)
        assert not Path("b").exists() and Path("a.txt").read_text() == "old a"
        outputs.commit()
    assert Path("a.txt").read_text() == "new a" and Path("b/f").read_text() == "new b"
    assert _names(workspace.root) == {"a.txt", "b/f"}


def test_a_failed_rename_rolls_back_the_earlier_ones(workspace):
    Path("a.txt").write_text("old a")
    os.mkdir("b")
    Path("b/f").write_text("old b")
    with Outputs() as outputs:
        _stage(outputs, "a.txt", "new a")
        _stage(outputs, "b", "new b", folder=True)
        doomed = _stage(outputs, "c.txt", "new c")
        os.unlink(doomed)  # its rename now fails, after the first two were done
        with pytest.raises(OutputError, match="No such file"):
            outputs.commit()
    assert Path("a.txt").read_text() == "old a" and Path("b/f").read_text() == "old b"
    assert _names(workspace.root) == {"a.txt", "b/f"}


def test_discard_removes_every_temporary(workspace):
    with pytest.raises(RuntimeError):
        with Outputs() as outputs:
            _stage(outputs, "a.txt", "a")
            _stage(outputs, "b", "b", folder=True)
            raise RuntimeError("the run failed")
    assert list(workspace.root.iterdir()) == []


def test_save_stats_and_output_appear_together(inputs):
    result = run_cli("standardize", "d.npy", "-o", "z.npy", "--save-stats", "s.json")
    assert result.stdout.splitlines()[-1] == "wrote z.npy (6 samples, float32); statistics to s.json"
    assert json.loads(Path("s.json").read_text())["count"] == [96]


# -- a signal at any moment of staging, committing or discarding ----------------------------------
@pytest.fixture
def run_handlers():
    """The CLI's handlers of SIGINT and SIGTERM, as during a run (the first signal raises, later ones
    are ignored)."""
    from normcli.cli import _stop_on_signal

    previous = {signum: signal.signal(signum, _stop_on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _signal_after(monkeypatch, owner, name: str, call: int = 1) -> None:
    """A real SIGTERM to this process just as the `call`-th call of owner.name has done its work (its
    handler runs as that call returns, before the caller's next line)."""
    real, calls = getattr(owner, name), itertools.count(1)

    def and_then_a_signal(*args, **kwargs):
        result = real(*args, **kwargs)
        if next(calls) == call:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(owner, name, and_then_a_signal)


@pytest.mark.parametrize("made_by, make", [("mkstemp", lambda outputs: outputs.stage("o.npy")),
                                           ("mkdtemp", lambda outputs: outputs.stage("o", folder=True)),
                                           ("mkstemp", lambda outputs: outputs.scratch("o.npz", ".npy.tmp"))],
                         ids=["file", "folder", "scratch"])
def test_a_signal_just_as_a_temporary_is_made_leaves_nothing(workspace, run_handlers, monkeypatch, made_by, make):
    """Between the temporary's creation and its registration for removal."""
    _signal_after(monkeypatch, tempfile, made_by)
    with pytest.raises(Terminated):
        with Outputs() as outputs:
            make(outputs)
    assert list(workspace.root.iterdir()) == []


def _old_and_staged(outputs: Outputs) -> None:
    """An existing file and folder, and new ones staged for them."""
    Path("a.txt").write_text("old a")
    os.mkdir("b")
    Path("b/f").write_text("old b")
    _stage(outputs, "a.txt", "new a")
    _stage(outputs, "b", "new b", folder=True)


# commit's renames: a.txt's temporary into place (its backup is a hard link), b aside, b's temporary into place
@pytest.mark.parametrize("call", [1, 2, 3])
def test_a_signal_during_the_renames_of_a_commit_leaves_the_old_state(workspace, run_handlers, monkeypatch, call):
    with pytest.raises(Terminated):
        with Outputs() as outputs:
            _old_and_staged(outputs)
            _signal_after(monkeypatch, os, "replace", call)
    assert Path("a.txt").read_text() == "old a" and Path("b/f").read_text() == "old b"
    assert _names(workspace.root) == {"a.txt", "b/f"}


def test_a_signal_once_every_output_is_in_place_leaves_the_new_state_and_no_backup(workspace, run_handlers,
                                                                                     monkeypatch):
    with pytest.raises(Terminated):
        with Outputs() as outputs:
            _old_and_staged(outputs)
            _signal_after(monkeypatch, os, "unlink", 2)  # a.txt's backup removed (after its setting aside), not b's
    assert Path("a.txt").read_text() == "new a" and Path("b/f").read_text() == "new b"
    assert _names(workspace.root) == {"a.txt", "b/f"}


def test_a_signal_while_a_failed_run_is_discarded_removes_every_temporary(workspace, run_handlers, monkeypatch):
    with pytest.raises(Terminated):
        with Outputs() as outputs:
            _stage(outputs, "a.txt", "a")
            _stage(outputs, "c.txt", "c")
            _stage(outputs, "b", "b", folder=True)
            _signal_after(monkeypatch, os, "unlink")  # a.txt's temporary removed, c.txt's not yet
            raise RuntimeError("the run failed")
    assert list(workspace.root.iterdir()) == []
