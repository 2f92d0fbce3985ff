"""What several test modules share: writing inputs, and the plain float64 numpy references that
normcli's results are checked against (each written once, so that every test checks the same thing)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
from pathlib import Path

import numpy as np

from normcli.moments import merge
from normcli.scopes import SCOPES as _SCOPES

SCOPES = tuple(_SCOPES)  # the core's registry, in its order
_names = itertools.count()


def save(folder: Path, array: np.ndarray, name: str | None = None) -> str:
    """`array` as a .npy file in `folder` (a fresh name unless `name` is given); returns its path."""
    path = Path(folder) / (name or f"in{next(_names)}.npy")
    np.save(path, array)
    return str(path)


def merge_all(parts):
    """Every block's statistics (moments.BlockStats) as one, merged in the order given."""
    return functools.reduce(merge, parts)


def reference_rows(x: np.ndarray, layout: str, scope: str) -> list[np.ndarray]:
    """The values of every key of `scope`, in the key order of the result (pixel: sample order)."""
    n = x.shape[0]
    if scope == "global":
        return [x.reshape(-1)]
    if scope == "sample":
        return list(x.reshape(n, -1))
    if scope == "pixel":
        return list(x.reshape(n, -1).T)
    if "C" not in layout:
        return [x.reshape(-1)]
    axis = layout.index("C")
    return list(np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1))


def ref_batchnorm(x, axes, batch_size, gamma=1.0, beta=0.0, eps=1e-5, momentum=0.1, drop_last=False, nan=False):
    """Training-mode batch norm in float64 numpy: each batch by its own biased variance over `axes`;
    PyTorch's running statistics (start 0 / 1, unbiased batch variance, momentum or the cumulative
    average when None). Returns (output, running mean, running var, batches)."""
    x = x.astype(np.float64)
    outs, running_mean, running_var, batches = [], 0.0, 1.0, 0
    mean_fn, var_fn = (np.nanmean, np.nanvar) if nan else (np.mean, np.var)
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size]
        if drop_last and len(batch) < batch_size:
            break
        mean = mean_fn(batch, axis=axes, keepdims=True)
        var = var_fn(batch, axis=axes, keepdims=True)
        out = (batch - mean) / np.sqrt(var + eps) * gamma + beta
        outs.append(np.where(np.isfinite(batch), out, batch) if nan else out)
        count = np.isfinite(batch).sum(axis=axes, keepdims=True) if nan else batch.size // mean.size
        batches += 1
        factor = 1.0 / batches if momentum is None else momentum
        running_mean = (1 - factor) * running_mean + factor * mean
        running_var = (1 - factor) * running_var + factor * var * count / (count - 1)
    return np.concatenate(outs), np.reshape(running_mean, -1), np.reshape(running_var, -1), batches


def ref_groupnorm(x, groups, gamma=1.0, beta=0.0, eps=1e-5, *, channel_axis=1):
    """Group norm in float64 numpy: per sample, over each group's channels and positions; `gamma`
    and `beta` one number or one per channel."""
    x = np.moveaxis(x.astype(np.float64), channel_axis, 1)
    n, c = x.shape[:2]
    grouped = x.reshape(n, groups, -1)
    mean = grouped.mean(axis=2, keepdims=True)
    var = grouped.var(axis=2, keepdims=True)
    normed = ((grouped - mean) / np.sqrt(var + eps)).reshape(x.shape)
    affine_shape = (1, c) + (1,) * (x.ndim - 2)
    out = normed * np.broadcast_to(gamma, (c,)).reshape(affine_shape) + np.broadcast_to(beta, (c,)).reshape(affine_shape)
    return np.moveaxis(out, 1, channel_axis)


def transform(dataset, plan, target: str, *, dtype=None, ext=None, clip=False, force=False, bins=30,
              ignore_nan=False, report=True, engine=None, progress=None, stdout=None):
    """passes.transform into `target` alone, committed as a run commits its Outputs."""
    from normcli.options import Output
    from normcli.passes import Measuring, transform as run_plan
    from normcli.sinks import Outputs

    with Outputs(stdout) as outputs:
        return run_plan(dataset, plan, Output(target, dtype, ext, clip, force), outputs,
                        Measuring(bins, ignore_nan, report), engine, progress)


def fresh_path(folder: Path, stem: str, suffix: str = ".npy") -> Path:
    """A name in `folder` that no other call has given (`stem` followed by a number)."""
    return Path(folder) / f"{stem}{next(_names)}{suffix}"


# -- a real Dask cluster, started as a user would -----------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dask_command() -> list[str]:
    import sys

    beside = Path(sys.executable).parent / "dask"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "dask"]


# `dask worker` in an environment without normcli: the checkout off its path (no PYTHONPATH), and the
# editable install's import hook gone
_WORKER_WITHOUT_NORMCLI = (
    "import os, sys; "
    "sys.meta_path[:] = [f for f in sys.meta_path if 'normcli' not in getattr(f, '__module__', '')]; "
    "sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p or os.curdir, 'normcli'))]; "
    "from distributed.cli.dask_worker import main; sys.argv[0] = 'dask-worker'; main()")


@contextlib.contextmanager
def dask_cluster(logs: Path, workers: int = 2, hidden: Path | None = None, without_normcli: bool = False):
    """`dask scheduler` and `workers` `dask worker` processes (no nanny, so a kill is final) on
    127.0.0.1, in `logs` as their current folder (not the driver's); yields the address and the
    processes (the scheduler first). `hidden`: a folder the workers see empty (an empty tmpfs over
    it in a mount namespace of their own), as a worker on a machine without the driver's disk.
    `without_normcli`: workers whose environment cannot import normcli."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import distributed

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs.mkdir(exist_ok=True)
    procs = [subprocess.Popen([*dask_command(), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], cwd=logs, stdout=subprocess.DEVNULL,
                              stderr=open(logs / "scheduler", "w"))]
    client = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        hide = [] if hidden is None else ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                          'mount -t tmpfs none "$0" && exec "$@"', str(hidden)]
        worker = [sys.executable, "-c", _WORKER_WITHOUT_NORMCLI] if without_normcli else [*dask_command(), "worker"]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} if without_normcli else None
        for i in range(workers):
            procs.append(subprocess.Popen([*hide, *worker, address, "--nthreads", "1", "--no-nanny",
                                           "--no-dashboard", "--name", f"w{i}"], cwd=logs, env=env,
                                          stdout=subprocess.DEVNULL, stderr=open(logs / f"worker{i}", "w")))
        client = distributed.Client(address, timeout="30s")
        client.wait_for_workers(workers, timeout=60)
        yield address, procs
    finally:
        if client is not None:
            client.close()
        for proc in procs:  # killed, not asked: a worker asked to close waits ~20 s for its gone scheduler
            proc.kill()
            proc.wait()


def read_blocks(dataset, max_bytes: int | None = None):
    """Every block of `dataset` read in order, here (passes read them on their engine), in blocks of
    about `max_bytes` where given."""
    if max_bytes is not None:
        dataset = dataclasses.replace(dataset, block_bytes=max_bytes)
    for block in dataset.blocks():
        yield block.read()


def take(dataset, indices) -> np.ndarray:
    """The samples of `dataset` at global `indices`, in that order: the first batch of an order that
    starts with them."""
    order = np.resize(np.asarray(indices, dtype=np.int64), dataset.n_samples)
    return dataset.batches(len(indices), order)[0].read().data
