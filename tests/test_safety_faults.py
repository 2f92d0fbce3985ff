"""Real faults, not mocks: a full and a read-only filesystem (tmpfs mounts, as root), /dev/full on
stdout, a name too long, and real SIGINT/SIGTERM/SIGKILL to a real `python -m normcli` (issue 9: 4,
6, 7). Each leaves one `error:` line, no output and no temporaries."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import write_image
from refusals import assert_message, snapshot

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80", "NO_COLOR": "1"}


def normcli(*args, cwd: Path, tmpdir: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "normcli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env={**ENV, "TMPDIR": str(tmpdir)}, timeout=120, **kwargs)


@pytest.fixture
def place(tmp_path):
    """A working folder with a 2.4 MB array (too big for the 1 MiB tmpfs), and an empty $TMPDIR."""
    work, tmpdir = tmp_path / "work", tmp_path / "tmpdir"
    work.mkdir()
    tmpdir.mkdir()
    np.save(work / "d.npy", np.random.default_rng(0).normal(5, 2, (300, 32, 32, 1)))
    return work, tmpdir


def _mount(path: Path, options: str) -> Path:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("this machine cannot mount a tmpfs")
    return path


@pytest.fixture
def mounts(tmp_path):
    made = []

    def mount(name: str, options: str) -> Path:
        made.append(_mount(tmp_path / name, options))
        return made[-1]

    yield mount
    for path in made:
        subprocess.run(["umount", str(path)], check=True)


# -- a full and a read-only filesystem --------------------------------------------------------------
FULL = [
    # (id, command line with OUT for the output on the full disk, the message holds)
    ("npy", ["normalize", "d.npy", "-o", "OUT/o.npy", "--dtype", "float64"], "No space left on device (OUT/o.npy)"),
    ("npz", ["normalize", "d.npy", "-o", "OUT/o.npz", "--dtype", "float64"], "(OUT/o.npz)"),
    ("folder", ["normalize", "d.npy", "-o", "OUT/o", "--dtype", "float64"], "(OUT/o)"),
    ("save-stats fits, output does not", ["standardize", "d.npy", "-o", "OUT/z.npy", "--save-stats", "OUT/s.json"],
     "No space left on device (OUT/z.npy)"),
]


@pytest.mark.parametrize("case", FULL, ids=[c[0] for c in FULL])
def test_a_full_disk_leaves_nothing(place, mounts, case):
    work, tmpdir = place
    full = mounts("full", "size=1m")
    _, args, contains = case
    before = snapshot(work)
    result = normcli(*[a.replace("OUT", str(full)) for a in args], "--quiet", cwd=work, tmpdir=tmpdir)
    assert_message(result.returncode, result.stderr, 1, contains=contains.replace("OUT", str(full)))
    assert list(full.iterdir()) == [] and list(tmpdir.iterdir()) == [] and snapshot(work) == before


def test_stdin_spooled_onto_a_full_disk_is_removed(place, mounts):
    work, _ = place
    full = mounts("full", "size=1m")
    result = normcli("stats", "-", cwd=work, tmpdir=full, input=None, stdin=open(work / "d.npy", "rb"))
    assert_message(result.returncode, result.stderr, 1, contains="cannot spool stdin: No space left on device")
    assert list(full.iterdir()) == []


def test_a_read_only_output_fails_before_work(place, mounts):
    work, tmpdir = place
    readonly = mounts("ro", "ro,size=1m")
    result = normcli("normalize", "d.npy", "-o", readonly / "o.npy", cwd=work, tmpdir=tmpdir)
    assert_message(result.returncode, result.stderr, 1, contains=f"Read-only file system ({readonly}/o.npy)")


def test_a_save_stats_that_cannot_be_written_takes_the_output_with_it(place, mounts):
    work, tmpdir = place
    readonly = mounts("ro", "ro,size=1m")
    before = snapshot(work)
    result = normcli("standardize", "d.npy", "-o", "z.npy", "--save-stats", readonly / "s.json", cwd=work,
                     tmpdir=tmpdir)
    assert_message(result.returncode, result.stderr, 1, contains="Read-only file system")
    assert snapshot(work) == before  # no z.npy: the outputs of one run commit together


def test_force_onto_a_mount_point_is_one_line(place, mounts):
    work, tmpdir = place
    busy = mounts("busy", "size=1m")  # an empty folder that cannot be renamed aside
    result = normcli("normalize", "d.npy", "-o", busy, "--force", "--quiet", cwd=work, tmpdir=tmpdir)
    assert_message(result.returncode, result.stderr, 1, contains=f"({busy})")
    assert list(busy.iterdir()) == [] and [p.name for p in busy.parent.iterdir() if p.name.startswith(".")] == []


def test_an_output_linked_onto_another_filesystem_is_replaced_through_the_link(place, mounts):
    work, tmpdir = place
    other = mounts("other", "size=4m")
    np.save(other / "old.npy", np.zeros(3))
    (work / "link.npy").symlink_to(other / "old.npy")
    result = normcli("normalize", "d.npy", "-o", "link.npy", "--force", "--quiet", cwd=work, tmpdir=tmpdir)
    assert result.returncode == 0, result.stderr
    assert (work / "link.npy").is_symlink() and np.load(other / "old.npy").shape == (300, 32, 32, 1)
    assert sorted(p.name for p in other.iterdir()) == ["old.npy"]  # no temporary or backup left


# -- streams and names ------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["normalize", "d.npy", "-o", "-"], ["stats", "d.npy"]], ids=["data", "report"])
def test_dev_full_on_stdout_is_one_line(place, args):
    work, tmpdir = place
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "normcli", *args], cwd=work, stdout=full,
                                stderr=subprocess.PIPE, text=True, env={**ENV, "TMPDIR": str(tmpdir)}, timeout=120)
    assert_message(result.returncode, result.stderr, 1, contains="No space left on device (stdout)")


def test_a_closed_pipe_on_stdout_ends_quietly(place):
    work, tmpdir = place
    process = subprocess.Popen([sys.executable, "-m", "normcli", "standardize", "d.npy", "-o", "-", "-q"], cwd=work,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**ENV, "TMPDIR": str(tmpdir)})
    process.stdout.read(100)  # of 1.2 MB: far more than a pipe holds
    process.stdout.close()
    stderr = process.communicate(timeout=60)[1].decode()
    assert (process.returncode, stderr) == (1, "")


def test_a_name_too_long_after_the_suffix_change_is_one_line(place):
    work, tmpdir = place
    write_image(work / "imgs" / ("x" * 251 + ".png"), np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    before = snapshot(work)
    result = normcli("normalize", "imgs", "-o", "out", "--ext", "tiff", cwd=work, tmpdir=tmpdir)
    assert_message(result.returncode, result.stderr, 1, contains="File name too long (out)")
    assert snapshot(work) == before and list(tmpdir.iterdir()) == []


# -- signals ----------------------------------------------------------------------------------------
# Seconds a test waits for normcli to reach the moment it is signalled at, or to end: a pass of
# seconds takes minutes on a loaded machine (a budget of 3,000 polls, some 30 s, ran out at load 12
# before the writing pass began).
WAIT = 300


def _wait_for(condition, what: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if condition():
            return
        if process.poll() is not None:
            pytest.fail(f"normcli ended before {what}: {process.stderr.read()}")
        time.sleep(0.01)
    pytest.fail(f"no {what} after {WAIT} s")


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"),
                                                (signal.SIGTERM, 143, "terminated")], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_write_removes_the_temporary(tmp_path, signum, code, word):
    work, tmpdir = tmp_path / "work", tmp_path / "tmpdir"
    work.mkdir()
    tmpdir.mkdir()
    np.save(work / "d.npy", np.random.default_rng(0).normal(size=(1500, 8, 8, 1)))  # ~2 s of TIFF files
    before = snapshot(work)
    process = subprocess.Popen([sys.executable, "-m", "normcli", "normalize", "d.npy", "-o", "out", "-q"], cwd=work,
                               env={**ENV, "TMPDIR": str(tmpdir)}, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: any(any(t.iterdir()) for t in _temporaries(work)), "a temporary output", process)
    process.send_signal(signum)
    stderr = process.communicate(timeout=60)[1]
    assert_message(process.returncode, stderr, code, contains=f"{word}; nothing was written")
    assert snapshot(work) == before and list(tmpdir.iterdir()) == []


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_spooling_stdin_removes_the_spool(place, signum, code):
    work, tmpdir = place
    process = subprocess.Popen([sys.executable, "-m", "normcli", "stats", "-"], cwd=work, stdin=subprocess.PIPE,
                               stderr=subprocess.PIPE, env={**ENV, "TMPDIR": str(tmpdir)})
    process.stdin.write((work / "d.npy").read_bytes()[:100_000])  # and then nothing: the reader waits
    process.stdin.flush()
    _wait_for(lambda: any(tmpdir.iterdir()), "a spool file", process)
    process.send_signal(signum)
    stderr = process.communicate(timeout=60)[1].decode()
    assert_message(process.returncode, stderr, code)
    assert list(tmpdir.iterdir()) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_as_normcli_exits_leaves_the_run_as_it_ended(place, signum):
    """A real signal once the command has ended (here from an exit handler: as the interpreter shuts
    down), which once printed a traceback from its shutdown: the exit code, stderr and output of the run."""
    work, tmpdir = place
    code = (f"import atexit, os, sys; atexit.register(os.kill, os.getpid(), {int(signum)}); "
            "sys.argv = ['normcli', 'normalize', 'd.npy', '-o', 'o.npy', '-q']; from normcli.cli import main; main()")
    result = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True,
                            env={**ENV, "TMPDIR": str(tmpdir)}, timeout=WAIT)
    assert (result.returncode, result.stderr) == (0, "")
    assert np.load(work / "o.npy").shape == np.load(work / "d.npy").shape and list(tmpdir.iterdir()) == []


@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"),
                                                (signal.SIGTERM, 143, "terminated")], ids=["SIGINT", "SIGTERM"])
def test_a_signal_as_the_report_is_shown_names_what_was_written(place, signum, code, word):
    """A real signal after the outputs were committed, as the report is being shown: they stay, and
    the one line says so (it once said "nothing was written")."""
    work, tmpdir = place
    script = ("import os, sys; from normcli import cli; show = cli._show_transform; "
              f"cli._show_transform = lambda *a: (os.kill(os.getpid(), {int(signum)}), show(*a)); "
              "sys.argv = ['normcli', 'standardize', 'd.npy', '-o', 'z.npy', '--save-stats', 's.json']; cli.main()")
    result = subprocess.run([sys.executable, "-c", script], cwd=work, capture_output=True, text=True,
                            env={**ENV, "TMPDIR": str(tmpdir)}, timeout=WAIT)
    assert_message(result.returncode, result.stderr, code,
                   contains=f"{word}; z.npy, s.json were written, the report cut short")
    assert np.load(work / "z.npy").shape == np.load(work / "d.npy").shape and (work / "s.json").exists()
    assert list(tmpdir.iterdir()) == [] and sorted(p.name for p in work.iterdir()) == ["d.npy", "s.json", "z.npy"]


def test_sigkill_never_leaves_the_output_path(place):
    work, tmpdir = place
    np.save(work / "d.npy", np.random.default_rng(0).normal(size=(5000, 8, 8, 1)))
    process = subprocess.Popen([sys.executable, "-m", "normcli", "normalize", "d.npy", "-o", "out", "-q"], cwd=work,
                               env={**ENV, "TMPDIR": str(tmpdir)}, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: any(any(t.iterdir()) for t in _temporaries(work)), "a temporary output", process)
    process.kill()
    process.wait(timeout=60)
    assert not (work / "out").exists()  # a temporary may stay beside it; the output itself never half-appears


# -- every engine under every fault (issue 19) ------------------------------------------------------
ENGINES = ["threads", "processes", "dask", "cluster"]  # cluster: a real scheduler and two workers
FAULTS = ["SIGINT", "SIGTERM", "full disk", "failing block"]
OUTPUTS = {"npy": "o.npy", "npz": "o.npz", "folder": "o"}
# 2,000 batches of 2 small samples: about a second of writing on any engine (after as long fitting),
# so that a signal lands mid-write; 1.6 MB of float32 out, so that a 1 MiB disk fills mid-write too
BATCHNORM = ["batchnorm", "--batch-size", "2", "-q"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    pytest.importorskip("distributed", reason="the Dask engine needs the [dask] extra")
    from helpers import dask_cluster

    with dask_cluster(tmp_path_factory.mktemp("dask-logs")) as (address, _):
        yield address


@pytest.fixture(scope="module")
def faults_input(tmp_path_factory):
    """The input (kept apart from -o's folder), and a copy with NaN in a late batch: with --ignore-nan
    it passes through, then cannot be stored as uint8, so that block fails on whichever worker has it."""
    folder = tmp_path_factory.mktemp("in")
    x = np.random.default_rng(0).normal(5, 2, (4_000, 10, 10, 1))
    np.save(folder / "x.npy", x)
    x[801, 1, 1, 0] = np.nan
    np.save(folder / "nan.npy", x)
    return folder


def _engine_args(engine: str, request) -> list[str]:
    if engine == "cluster":
        return ["--scheduler", request.getfixturevalue("cluster")]
    return ["--engine", engine, "--workers", "2"]


def _mid_write(out: Path) -> bool:
    """Whether a temporary output in `out` holds written blocks (beyond a .npy header)."""
    for temporary in out.iterdir():
        if temporary.is_dir() and any(temporary.iterdir()):
            return True
        if temporary.is_file() and temporary.stat().st_size > 4096:
            return True
    return False


@pytest.mark.parametrize("output", list(OUTPUTS))
@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_leaves_nothing_after_any_fault(tmp_path, faults_input, mounts, request, engine, fault,
                                                     output):
    """A real signal (SIGINT to the process group, as a terminal's Ctrl-C; SIGTERM to normcli alone),
    a real full disk (a 1 MiB tmpfs), or a block that fails on a worker: one line, its exit code,
    nothing under -o's folder, nothing in $TMPDIR, the input as it was."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    out = mounts("full", "size=1m") if fault == "full disk" else tmp_path / "out"
    out.mkdir(exist_ok=True)
    before = snapshot(faults_input)
    args = [*BATCHNORM, faults_input / ("nan.npy" if fault == "failing block" else "x.npy"), "-o",
            out / OUTPUTS[output], *_engine_args(engine, request)]
    if fault == "failing block":
        args += ["--dtype", "uint8", "--clip", "--ignore-nan"]
    process = subprocess.Popen([sys.executable, "-m", "normcli", *map(str, args)], cwd=tmp_path,
                               env={**ENV, "TMPDIR": str(tmpdir)}, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        if fault in ("SIGINT", "SIGTERM"):
            _wait_for(lambda: _mid_write(out), "a temporary output with blocks in it", process)
            if fault == "SIGINT":
                os.killpg(process.pid, signal.SIGINT)
            else:
                process.send_signal(signal.SIGTERM)
        stderr = process.communicate(timeout=WAIT)[1]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    code, contains = {"SIGINT": (130, "interrupted; nothing was written"),
                      "SIGTERM": (143, "terminated; nothing was written"),
                      "full disk": (1, f"No space left on device ({out / OUTPUTS[output]})"),
                      "failing block": (1, "NaN cannot be stored as uint8")}[fault]
    assert_message(process.returncode, stderr, code, contains=contains)
    assert list(out.iterdir()) == [] and list(tmpdir.iterdir()) == []
    assert snapshot(faults_input) == before


@pytest.mark.parametrize("engine", ["processes", "dask"])
def test_any_number_of_ctrl_c_ends_the_run_with_one_line_and_nothing_left(tmp_path, faults_input, engine):
    """Ctrl-C pressed again and again (SIGINT to the whole process group, pool workers included)
    while the first one is being handled: the cleanup runs to its end, once."""
    tmpdir, out = tmp_path / "tmpdir", tmp_path / "out"
    tmpdir.mkdir()
    out.mkdir()
    process = subprocess.Popen([sys.executable, "-m", "normcli", *BATCHNORM, faults_input / "x.npy", "-o", out / "o",
                                "--engine", engine, "--workers", "2"], cwd=tmp_path,
                               env={**ENV, "TMPDIR": str(tmpdir)}, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        _wait_for(lambda: _mid_write(out), "a temporary output with blocks in it", process)
        for _ in range(5):
            if process.poll() is not None:
                break
            os.killpg(process.pid, signal.SIGINT)
            time.sleep(0.05)
        stderr = process.communicate(timeout=WAIT)[1]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert_message(process.returncode, stderr, 130, contains="interrupted; nothing was written")
    assert list(out.iterdir()) == [] and list(tmpdir.iterdir()) == []


# -- a task that outlives Engine.stop()'s wait ------------------------------------------------------
def test_a_task_still_writing_while_its_output_is_discarded_leaves_nothing(tmp_path, monkeypatch):
    """A task the engine could not stop (a Dask worker still busy after Engine.stop's STOP_WAIT, as
    under load) writes its next file just as the failed run removes the temporary folder, after
    rmtree emptied it: the folder still goes, and the late write fails instead of landing."""
    import dataclasses
    import threading

    from helpers import transform
    from normcli import engine as engines, sinks
    from normcli.errors import OutputError
    from normcli.plans import ScalePlan
    from normcli.sources import open_dataset
    from normcli.transforms import Affine

    np.save(tmp_path / "x.npy", np.arange(16, dtype=np.float64).reshape(4, 2, 2, 1))
    out = tmp_path / "out"
    out.mkdir()
    late_started, removing, late_done = threading.Event(), threading.Event(), threading.Event()
    late: list = []
    write, rmdir = sinks.FolderWriter.write.__wrapped__, os.rmdir

    def slow_write(writer, encoded, start, names=None, profiles=None):
        if start == 0:  # the first task fails once the second is under way
            late_started.wait(60)
            raise OutputError("this block fails", writer.target)
        if start == 1:  # the second is still writing as the folder is removed
            late_started.set()
            removing.wait(60)
            try:
                write(writer, encoded, start, names, profiles)
                late.append("written")
            except OSError as error:
                late.append(error.__class__)
            finally:
                late_done.set()
            return
        write(writer, encoded, start, names, profiles)

    def rmdir_after_the_late_write(path, *args, **kwargs):
        removing.set()
        late_done.wait(60)
        return rmdir(path, *args, **kwargs)

    monkeypatch.setattr(sinks.FolderWriter, "write", slow_write)
    monkeypatch.setattr(engines, "STOP_WAIT", 0.0)  # the wait ran out: the second task is still running
    monkeypatch.setattr(os, "rmdir", rmdir_after_the_late_write)
    plan = ScalePlan("global", lambda m: Affine(np.zeros(1), np.ones(1), np.zeros(1)))
    with open_dataset([str(tmp_path / "x.npy")]) as dataset, engines.ThreadEngine(2) as engine:
        dataset = dataclasses.replace(dataset, block_bytes=4 * 8)  # one sample a block, one block a task
        with pytest.raises(OutputError, match="this block fails"):
            transform(dataset, plan, str(out / "o"), ext="npy", engine=engine)
    assert late == [FileNotFoundError] and list(out.iterdir()) == []


def test_a_dask_cluster_that_does_not_close_in_time_leaves_the_error_and_no_scratch(tmp_path, monkeypatch):
    """A local cluster whose close times out (a task that outlived Engine.stop's wait, as under load):
    the run still ends in its own error (a signal's included), the cluster's scratch folder in $TMPDIR
    still goes, and a run that succeeded does not fail for it."""
    import tempfile

    distributed = pytest.importorskip("distributed", reason="the Dask engine needs the [dask] extra")
    from normcli import engine as engines
    from normcli.errors import Terminated

    close = distributed.LocalCluster.close

    def close_in_vain(cluster, timeout=None):
        close(cluster, timeout=timeout)
        raise TimeoutError(f"timed out after {timeout} s.")  # as distributed says it

    monkeypatch.setattr(distributed.LocalCluster, "close", close_in_vain)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(Terminated):
        with engines.DaskEngine(1):
            raise Terminated()
    with engines.DaskEngine(1):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_signal_as_the_local_dask_cluster_starts_closes_it_and_leaves_no_scratch(tmp_path, monkeypatch):
    """A real SIGTERM just as the in-process cluster has started, before the engine holds it: the run
    ends in it, with the cluster closed and its scratch folder in $TMPDIR gone."""
    import tempfile

    distributed = pytest.importorskip("distributed", reason="the Dask engine needs the [dask] extra")
    from distributed.core import Status

    from normcli import engine as engines
    from normcli.cli import _stop_on_signal
    from normcli.errors import Terminated

    started, start = [], distributed.LocalCluster.__init__

    def start_then_a_signal(cluster, *args, **kwargs):
        start(cluster, *args, **kwargs)
        started.append(cluster)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(distributed.LocalCluster, "__init__", start_then_a_signal)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    previous = {signum: signal.signal(signum, _stop_on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(Terminated):
            engines.DaskEngine(1)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    assert [cluster.status for cluster in started] == [Status.closed] and list(tmp_path.iterdir()) == []
