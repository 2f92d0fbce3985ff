"""Every command gives the same numbers on every engine: threads, a process pool, and Dask
(a LocalCluster of two worker processes, and a real `dask scheduler` with two `dask worker`
processes on 127.0.0.1, as a user would start them)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, write_image
from helpers import dask_cluster, free_port
from normcli.sources import Dataset

distributed = pytest.importorskip("distributed", reason="the Dask tests need the [dask] extra")

REL = 1e-12
SMALL_BLOCKS = 4096  # bytes: every dataset below spans many blocks


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of two worker processes, shared by this module's tests."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c.scheduler_address


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(Dataset, "block_bytes", SMALL_BLOCKS)  # the blocks of every dataset opened from now


@pytest.fixture
def data(tmp_path, rng):
    """Float data far from zero, uint8 data, and a folder of PNGs of two sizes."""
    x = 1e9 + rng.normal(0.0, 1.0, (40, 6, 5, 3))
    np.save(tmp_path / "far.npy", x)
    np.save(tmp_path / "u8.npy", rng.integers(0, 256, (40, 6, 5, 3), dtype=np.uint8))
    for i in range(12):
        size = (9, 7) if i % 3 else (8, 8)
        write_image(tmp_path / "pngs" / f"{i:02d}.png", rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    return tmp_path


ENGINES = ["threads", "processes", "dask"]


def engine_args(engine: str, address: str) -> list[str]:
    if engine == "dask":
        return ["--engine", "dask", "--scheduler", address]
    return ["--engine", engine, "--workers", "2"]


def close(a, b, path="") -> None:
    """JSON values equal: integers exactly, floats within REL relative."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert abs(a - b) <= REL * max(abs(a), abs(b), 1e-300), f"{path}: {a!r} vs {b!r}"
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


STATS_CASES = [("far.npy", scope) for scope in ("global", "channel", "sample", "pixel")] + \
              [("u8.npy", scope) for scope in ("global", "channel", "sample", "pixel")] + \
              [("pngs", "channel"), ("pngs", "sample")]


@pytest.mark.parametrize("name,scope", STATS_CASES)
def test_stats_are_the_same_on_every_engine(data, cluster, small_blocks, name, scope):
    reports = []
    for engine in ENGINES:
        result = run_cli("stats", data / name, "--per", scope, "--format", "json", "--bins", "7",
                         *engine_args(engine, cluster))
        reports.append(json.loads(result.stdout))
    for other in reports[1:]:
        close(reports[0], other)


TRANSFORMS = [
    ("normalize", ["--per", "channel"]),
    ("standardize", ["--per", "pixel"]),
    ("standardize", ["--per", "sample"]),
    ("batchnorm", ["--batch-size", "7", "--shuffle", "--seed", "3"]),
    ("groupnorm", ["--groups", "3"]),
]


@pytest.mark.parametrize("command,options", TRANSFORMS)
@pytest.mark.parametrize("name", ["far.npy", "u8.npy"])
def test_transforms_write_the_same_on_every_engine(data, cluster, small_blocks, command, options, name):
    outputs, reports, saved = [], [], []
    for engine in ENGINES:
        out = data / f"{command}-{engine}.npy"
        extra = ["--save-stats", data / f"{engine}.json"] if command == "batchnorm" else []
        result = run_cli(command, data / name, "-o", out, "--dtype", "float64", "--format", "json", *options,
                         *extra, *engine_args(engine, cluster))
        reports.append(json.loads(result.stdout))
        outputs.append(np.load(out))
        if extra:
            saved.append(json.loads(Path(extra[1]).read_text()))
    for other in outputs[1:]:
        scale = np.abs(outputs[0]).max()
        assert np.abs(other - outputs[0]).max() <= REL * scale
    for other in reports[1:]:
        close({**reports[0], "output": None}, {**other, "output": None})
    for other in saved[1:]:  # running statistics in batch order whatever the engine
        close({**saved[0], "inputs": None}, {**other, "inputs": None})


def test_an_image_folder_is_written_the_same_on_every_engine(data, cluster, small_blocks):
    from PIL import Image

    folders = []
    for engine in ENGINES:
        out = data / f"out-{engine}"
        run_cli("normalize", data / "pngs", "-o", out, "--per", "channel", "-q", *engine_args(engine, cluster))
        folders.append({p.relative_to(out).as_posix(): np.asarray(Image.open(p)) for p in sorted(out.rglob("*.png"))})
    assert len(folders[0]) == 12
    for other in folders[1:]:
        assert other.keys() == folders[0].keys()
        for name, pixels in folders[0].items():
            np.testing.assert_array_equal(other[name], pixels)


def test_scheduler_options_contradict_another_engine(data):
    result = run_cli("stats", data / "far.npy", "--engine", "threads", "--scheduler", "tcp://127.0.0.1:1", ok=False)
    assert result.exit_code == 2
    assert "--scheduler and --scheduler-file run on Dask, not --engine threads" in result.stderr


def test_a_scheduler_implies_the_dask_engine(data):
    """--scheduler alone runs on Dask (here: on no scheduler at all, so the Dask engine's own error)."""
    result = run_cli("stats", data / "far.npy", "--scheduler", f"tcp://127.0.0.1:{free_port()}", ok=False)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot reach the Dask scheduler") and result.stderr.count("\n") == 1


def test_an_unreachable_scheduler_is_one_line(data):
    result = run_cli("stats", data / "far.npy", "--engine", "dask", "--scheduler", f"tcp://127.0.0.1:{free_port()}",
                     ok=False)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot reach the Dask scheduler") and result.stderr.count("\n") == 1


def test_without_dask_the_engine_says_how_to_install_it(data, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed raises ImportError
    result = run_cli("stats", data / "far.npy", "--engine", "dask", ok=False)
    assert result.exit_code == 1
    # what the README installs: normcli is installed from a clone, so 'normcli[dask]' named no package
    assert result.stderr == ("error: --engine dask needs Dask (normcli's [dask] extra): pip install "
                             "'dask[distributed]', or pip install '.[dask]' in a clone of normcli\n")


# -- a real cluster, started as a user would --------------------------------------------------------
def normcli_command() -> list[str]:
    return [sys.executable, "-m", "normcli"]


@pytest.fixture
def real_cluster(tmp_path):
    """`dask scheduler` and two `dask worker` processes (no nanny, so a kill is final) on 127.0.0.1."""
    with dask_cluster(tmp_path / "dask-logs") as (address, procs):
        yield address, procs[1:]


@pytest.fixture
def scheduler_and_workers(tmp_path):
    """As real_cluster, with the scheduler's process too (first)."""
    with dask_cluster(tmp_path / "dask-logs") as (address, procs):
        yield address, procs


def run(args, cwd, **kwargs):
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run([*normcli_command(), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300, **kwargs)


def test_stats_and_standardize_on_a_real_scheduler_and_workers(data, real_cluster):
    address, _ = real_cluster
    here = run(["stats", "far.npy", "--format", "json"], data)
    there = run(["stats", "far.npy", "--format", "json", "--engine", "dask", "--scheduler", address], data)
    assert here.returncode == 0 and there.returncode == 0, there.stderr
    close(json.loads(here.stdout), json.loads(there.stdout))
    done = run(["standardize", "far.npy", "-o", "z.npy", "--dtype", "float64", "-q", "--engine", "dask",
                "--scheduler", address], data)
    assert done.returncode == 0, done.stderr
    x = np.load(data / "far.npy")
    want = (x - x.mean()) / x.std()
    assert np.abs(np.load(data / "z.npy") - want).max() < 1e-6  # the mean is known to float64 at 1e9


def test_a_worker_killed_mid_run_leaves_a_complete_output_or_none(tmp_path, rng, real_cluster):
    """Dask reruns the lost worker's tasks on the other one; blocks are written by position, so
    a rerun writes the same bytes again."""
    address, workers = real_cluster
    x = rng.normal(5.0, 2.0, (4096, 64, 64)).astype(np.float32)  # 64 MiB: 64 blocks of 1 MiB
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.Popen([*normcli_command(), "standardize", "x.npy", "-o", "z.npy", "-q", "--engine", "dask",
                             "--scheduler", address], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".z.npy.*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before a worker could be killed: make the data larger"
    workers[0].send_signal(signal.SIGKILL)
    _, stderr = proc.communicate(timeout=300)
    assert "Traceback" not in stderr
    if proc.returncode == 0:
        mean, std = x.mean(dtype=np.float64), x.std(dtype=np.float64)
        np.testing.assert_allclose(np.load(tmp_path / "z.npy"), (x - mean) / std, rtol=0, atol=1e-5)
    else:
        assert stderr.startswith("error: ") and not (tmp_path / "z.npy").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"x.npy", "dask-logs"} |
                                                               ({"z.npy"} if proc.returncode == 0 else set()))


@pytest.mark.parametrize("content, problem", [
    (None, "does not exist"),
    ("", "is not a Dask scheduler file (JSON with an address)"),
    ('{"type": "Scheduler", "addr', "is not a Dask scheduler file (JSON with an address)"),  # half-written
    ("address: tcp://127.0.0.1:8786", "is not a Dask scheduler file (JSON with an address)"),
    ('{"type": "Scheduler"}', "is not a Dask scheduler file (JSON with an address)"),
], ids=["missing", "empty", "half-written", "not JSON", "no address"])
def test_a_scheduler_file_that_never_becomes_whole_is_one_line(data, content, problem):
    """normcli waits for a complete file (a scheduler may be writing it), --cluster-timeout at most."""
    path = data / "scheduler.json"
    if content is not None:
        path.write_text(content)
    result = run_cli("stats", data / "far.npy", "--scheduler-file", path, "--cluster-timeout", "0.3", ok=False)
    assert result.exit_code == 1
    assert result.stderr == (f"error: the scheduler file {problem} after 0.3 s (--cluster-timeout); start "
                             f"`dask scheduler --scheduler-file FILE` first ({path})\n")


def test_a_local_dask_run_that_fails_on_a_worker_is_one_line_and_leaves_tmpdir_empty(tmp_path, rng):
    """The in-process cluster's scratch folder is removed, and Dask's own log of the failed task is
    not shown: the user sees normcli's one line."""
    x = rng.uniform(0.0, 1.0, (20, 4, 4))
    x[13, 1, 1] = np.nan  # passed through by --ignore-nan, then unstorable as uint8: fails on a worker
    np.save(tmp_path / "x.npy", x)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    done = subprocess.run([*normcli_command(), "stats", "x.npy", "--engine", "dask", "--bins", "0", "--ignore-nan"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    failed = subprocess.run([*normcli_command(), "normalize", "x.npy", "-o", "u8.npy", "--dtype", "uint8",
                             "--ignore-nan", "--engine", "dask", "-q"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert failed.returncode == 1
    assert failed.stderr.startswith("error: NaN cannot be stored as uint8") and failed.stderr.count("\n") == 1
    assert list(scratch.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp", "x.npy"]


def test_every_engine_and_worker_count_gives_the_same_bytes(tmp_path, rng, cluster, small_blocks):
    """The merge tree is a function of the block index alone: statistics and outputs are identical
    bytes, not merely close, on threads, processes and Dask, with 1, 2 or 3 workers."""
    np.save(tmp_path / "x.npy", 1e3 + rng.normal(0.0, 1.0, (2000, 6, 5, 3)))  # ~350 blocks: runs of 5
    reports, outputs = set(), set()
    for engine, workers in [("threads", 1), ("threads", 2), ("threads", 3), ("processes", 2), ("processes", 3),
                            ("dask", 1), ("dask", 3), ("cluster", None)]:
        where = ["--scheduler", cluster] if engine == "cluster" else ["--engine", engine, "--workers", str(workers)]
        out = tmp_path / f"z-{engine}-{workers}.npy"
        result = run_cli("standardize", tmp_path / "x.npy", "-o", out, "--per", "channel", "--dtype", "float64",
                         "--format", "json", *where)
        reports.add(json.dumps({**json.loads(result.stdout), "output": None}))
        outputs.add(out.read_bytes())
        reports.add(run_cli("stats", tmp_path / "x.npy", "--format", "json", *where).stdout + "stats")
    assert len(outputs) == 1 and len(reports) == 2


def test_an_npz_output_is_the_same_bytes_on_every_run(tmp_path, rng):
    np.save(tmp_path / "x.npy", rng.normal(0.0, 1.0, (20, 4, 4)))
    run_cli("normalize", tmp_path / "x.npy", "-o", tmp_path / "a.npz", "-q")
    time.sleep(2.1)  # past the zip format's 2-second resolution: the file's own time would differ
    run_cli("normalize", tmp_path / "x.npy", "-o", tmp_path / "b.npz", "-q")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_per_sample_tasks_carry_only_their_share_of_the_tables(tmp_path, rng, small_blocks):
    """standardize --per sample with a report: every run's task holds its own samples' rows of the
    affine maps and histogram edges, so all tasks together hold each row once."""
    import pickle

    from normcli import engine

    np.save(tmp_path / "x.npy", rng.normal(0.0, 1.0, (3000, 4, 4)))
    sent = []

    class Counting(engine.ProcessEngine):
        def map(self, work, items, done=None):
            sent.extend(len(pickle.dumps(item)) for item in items)
            return super().map(work, items, done)

    from helpers import transform
    from normcli.plans import ScalePlan
    from normcli.sources import open_dataset
    from normcli.transforms import zscore

    with open_dataset([str(tmp_path / "x.npy")]) as dataset, Counting(2) as running:
        transform(dataset, ScalePlan("sample", zscore), str(tmp_path / "z.npy"), bins=30, engine=running)
    rows = 3000 * (3 * 8 + 2 * 31 * 8)  # each sample's affine (shift, scale, offset) and its two edge rows
    assert sum(sent) < 2 * rows + 3000 * 16 * 8  # once each (the fit pass's tasks carry no table)


# -- hangs and faults of a cluster: one line, bounded -------------------------------------------------
class _Silent:
    """A TCP listener that accepts connections and never says a word."""

    def __enter__(self):
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        return f"tcp://127.0.0.1:{self.sock.getsockname()[1]}"

    def __exit__(self, *exc):
        self.sock.close()


class _Http:
    """A web server (it answers Dask's handshake with HTTP 400)."""

    def __enter__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, HTTPServer

        class Quiet(BaseHTTPRequestHandler):
            def log_message(self, *args):  # its log would share the test's stderr
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Quiet)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"tcp://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("listener, message", [(_Silent, "no answer as a Dask scheduler within 1 s (--cluster-timeout)"),
                                               (_Http, "as a Dask scheduler")], ids=["silent", "http"])
def test_an_address_that_does_not_speak_dask_is_refused_within_the_timeout(data, listener, message):
    with listener() as address:
        result = run_cli("stats", data / "far.npy", "--scheduler", address, "--cluster-timeout", "1", ok=False)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr and f"({address})" in result.stderr


def test_a_cluster_whose_workers_all_died_stops_within_the_timeout(data, real_cluster):
    address, workers = real_cluster
    for worker in workers:
        worker.kill()
        worker.wait()
    result = run(["stats", "far.npy", "--scheduler", address, "--cluster-timeout", "1"], data)
    assert result.returncode == 1
    assert result.stderr == f"error: the Dask cluster has had no workers for 1 s (--cluster-timeout) ({address})\n"


def _can_hide_a_folder(folder: Path) -> bool:
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "mount", "-t", "tmpfs", "none",
                           str(folder)], capture_output=True).returncode == 0


def test_the_event_loop_dask_runs_on_logs_nothing_on_the_terminal():
    """An interrupted Dask run can leave a failed asyncio future no one awaited (a connection attempt
    that timed out), which asyncio logs at exit under the one error line: its logs are Dask's too."""
    script = ("import asyncio, gc\n"
              "from normcli.engine import _quiet_dask_logs\n"
              "_quiet_dask_logs()\n"
              "loop = asyncio.new_event_loop()\n"
              "future = loop.create_future()\n"
              "future.set_exception(TimeoutError('Timeout'))\n"
              "del future\n"
              "gc.collect()\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert result.returncode == 0 and result.stderr == ""


def test_an_input_a_worker_cannot_see_says_so(tmp_path, rng):
    """The driver opens the file, the workers (another machine's view: the folder empty) cannot."""
    from helpers import dask_cluster

    data = tmp_path / "data"
    data.mkdir()
    if not _can_hide_a_folder(data):
        pytest.skip("needs mount namespaces (root)")
    np.save(data / "x.npy", rng.normal(size=(64, 3)))
    with dask_cluster(tmp_path / "dask-logs", workers=1, hidden=data) as (address, _):
        result = run(["stats", "x.npy", "--scheduler", address], data)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == ("error: a Dask worker cannot see this file: inputs and outputs must be on a filesystem "
                             f"every worker sees ({data / 'x.npy'})\n")


def _long_run(tmp_path, rng, *engine):
    x = rng.normal(5.0, 2.0, (10_000, 4, 4, 1))  # seconds of batches of 2, whatever the engine
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "out").mkdir()
    proc = subprocess.Popen([*normcli_command(), "batchnorm", "x.npy", "--batch-size", "2", "-o", "out/z.npy", "-q",
                             *engine], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "out").glob(".z.npy.*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before the fault: make the data larger"
    return proc


def test_a_scheduler_killed_mid_run_is_one_line(tmp_path, rng, scheduler_and_workers):
    address, procs = scheduler_and_workers
    proc = _long_run(tmp_path, rng, "--scheduler", address, "--cluster-timeout", "2")
    procs[0].kill()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1 and stderr.count("\n") == 1, stderr
    assert stderr.startswith("error: lost the Dask scheduler mid-run") and stderr.endswith(f"({address})\n")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_pool_process_killed_mid_run_is_one_line(tmp_path, rng):
    proc = _long_run(tmp_path, rng, "--engine", "processes", "--workers", "2")
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    # the pool's workers are the forkserver's children
    workers = [c for p in children for c in subprocess.run(["pgrep", "-P", p], capture_output=True,
                                                           text=True).stdout.split()]
    assert workers, "no pool process found"
    os.kill(int(workers[0]), signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    assert (proc.returncode, stderr) == (1, "error: a worker process of --engine processes died (killed, or out of "
                                            "memory)\n")
    assert list((tmp_path / "out").iterdir()) == []


def test_stdin_is_refused_with_a_scheduler_before_it_is_read(tmp_path):
    """- is spooled to this machine's $TMPDIR, which a cluster's workers cannot read."""
    from click.testing import CliRunner

    from normcli.cli import cli

    result = CliRunner().invoke(cli, ["stats", "-", "--scheduler", "tcp://127.0.0.1:1"], input=b"not read")
    assert result.exit_code == 2 and "- (stdin) is spooled to this machine's $TMPDIR" in result.stderr


def test_cluster_timeout_belongs_to_dask(data):
    result = run_cli("stats", data / "far.npy", "--engine", "processes", "--cluster-timeout", "5", ok=False)
    assert result.exit_code == 2 and "--cluster-timeout is for --engine dask" in result.stderr


def test_workers_without_normcli_are_one_line_that_says_what_to_install(tmp_path, rng):
    """Workers started where normcli cannot be imported (a PYTHONPATH without the checkout, no
    install): each would die unpickling its first task; the run says so in one line instead."""
    np.save(tmp_path / "x.npy", rng.normal(size=(64, 3)))
    with dask_cluster(tmp_path / "dask-logs", workers=1, without_normcli=True) as (address, _):
        result = run(["stats", "x.npy", "--scheduler", address], tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == ("error: a Dask worker cannot import normcli (No module named 'normcli'): install the "
                             "same environment as here (normcli and its dependencies) on the scheduler and every "
                             f"worker ({address})\n")
