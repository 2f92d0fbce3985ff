"""Engines: where a pass's work runs. An engine maps a work function over blocks and yields
the results in block order; the pass merges them (associatively) on the driver.

Work is a module-level function of picklable arguments (a frozen task and a block descriptor),
and a block is read by whoever runs it, so threads, a process pool and Dask workers run the
same code; only small values (statistics, counts) come back. Adding an engine is adding one
class here and its name to ENGINES.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from functools import cache, partial, reduce
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

from normcli.errors import NormcliError, UsageMismatch

T = TypeVar("T")
R = TypeVar("R")

ENGINES = ("threads", "processes", "dask")
# numpy's kernels, file reads and image decoders release the GIL, so threads use every core.
DEFAULT_WORKERS = max(1, min(os.cpu_count() or 1, 8))


_MALLOC_KEEP = 256 << 20  # bytes of freed memory glibc may keep (far above a few blocks in flight)


@cache
def keep_freed_memory() -> None:
    """Let glibc keep freed block buffers for the next block instead of handing them back.

    Worker threads allocate from arenas of their own, which glibc shrinks (madvise) whenever a
    block's arrays are freed, so every block paid for page faults that zero its memory again: a
    1 GiB standardize spent 2.5 s of system time on it, 0.6 s with this. Peak memory is unchanged
    (it is what a few blocks in flight need). A no-op where glibc's mallopt is missing. The
    settings are the process's: once a process is enough.
    """
    import ctypes

    try:
        # the symbols the process already has (libc's among them): ctypes.util.find_library would
        # run ldconfig in a subprocess, ~5 ms of start-up
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    mallopt(M_TRIM_THRESHOLD, _MALLOC_KEEP)
    mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's maximum; arrays below it come from the (kept) heap


def _in_order(submit: Callable, fn: Callable, items: Iterable, ahead: int) -> Iterator:
    """fn over items through `submit(fn, item) -> future`, results in input order, at most
    `ahead` in flight (so memory stays bounded however many items there are)."""
    pending: deque = deque()
    try:
        for item in items:
            pending.append(submit(fn, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def runs(items: Sequence[T], workers: int, most: int) -> list[list[T]]:
    """items cut into consecutive runs of up to `most`, at least 8 runs a worker where there are
    enough items (so that the workers finish together)."""
    size = max(1, min(most, len(items) // (8 * workers)))
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def fold_run(work: Callable, combine: Callable, run: Sequence):
    """combine(combine(work(run[0]), work(run[1])), ...): one task's results merged where they
    were made, so the driver merges one value a run instead of one a block."""
    return reduce(combine, map(work, run))


def _run_batch(work: Callable, batch: list) -> list:
    """work over several items in one task (a process or a cluster worker)."""
    return [work(item) for item in batch]


def _batched(submit: Callable, work: Callable, items: Sequence, workers: int, most: int) -> Iterator:
    """work over items as tasks of up to `most` items each, results in order, one per item: a task
    to another process or a cluster costs milliseconds, so each should carry several blocks' work."""
    for results in _in_order(submit, partial(_run_batch, work), runs(items, workers, most), 2 * workers):
        yield from results


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int = DEFAULT_WORKERS) -> Iterator[R]:
    """Like map(fn, items) on `workers` threads, results in input order."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        yield from _in_order(pool.submit, fn, items, 2 * workers)


class Engine:
    """Runs work over blocks, results in block order. Use as a context manager; `map` may be
    called once per pass."""

    name: str

    def __init__(self, workers: int | None = None):
        self.workers = workers or DEFAULT_WORKERS

    def map(self, work: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ThreadEngine(Engine):
    """Threads of this process (the default): numpy, reads and decoders release the GIL."""

    name = "threads"

    def __init__(self, workers: int | None = None):
        super().__init__(workers)
        keep_freed_memory()

    def map(self, work, items):
        return ordered_map(work, items, workers=self.workers)


class ProcessEngine(Engine):
    """A pool of worker processes, for work that holds the GIL (counting with bincount, encoding)."""

    name = "processes"

    def __init__(self, workers: int | None = None):
        super().__init__(workers)
        self._pool = None

    def map(self, work, items):
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # forkserver: no fork of a process that may hold threads; the server imports normcli once
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["normcli.passes"])
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=keep_freed_memory)
        return _batched(self._pool.submit, work, items, self.workers, most=16)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class DaskEngine(Engine):
    """A dask.distributed cluster: the scheduler at `scheduler` (tcp://host:port), the one named
    in `scheduler_file`, or a local cluster (one worker of `workers` threads in this process).
    Workers read their blocks and write their outputs themselves, so inputs and outputs must be
    on a filesystem they share."""

    name = "dask"

    def __init__(self, workers: int | None = None, *, scheduler: str | None = None,
                 scheduler_file: str | None = None):
        super().__init__(workers)
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise NormcliError("--engine dask needs Dask: pip install 'normcli[dask]'") from None
        self._cluster = None
        self._scratch = None
        where = scheduler or scheduler_file
        try:
            if scheduler:
                self._client = Client(scheduler, timeout="10s")
            elif scheduler_file:
                _wait_for(scheduler_file)
                self._client = Client(scheduler_file=scheduler_file, timeout="10s")
            else:
                import logging
                import warnings

                # One worker of `workers` threads in this process: it starts in milliseconds, where
                # worker processes take seconds (for those, start a cluster and give --scheduler).
                keep_freed_memory()  # its worker threads are this process's
                # Its scratch folder is ours to remove (Dask leaves dask-scratch-space in $TMPDIR); its
                # logs stay quiet: a failed task reaches the user as normcli's own one-line error.
                self._scratch = tempfile.mkdtemp(prefix="normcli-dask-")
                import dask

                with warnings.catch_warnings(), dask.config.set({"temporary-directory": self._scratch}):
                    warnings.simplefilter("ignore")  # e.g. "Port 8787 is already in use": not the user's concern
                    self._cluster = LocalCluster(n_workers=1, threads_per_worker=self.workers, processes=False,
                                                 dashboard_address=None, silence_logs=logging.CRITICAL,
                                                 local_directory=self._scratch)
                self._client = Client(self._cluster)
        except (OSError, TimeoutError, ValueError, RuntimeError) as exc:
            self._close_cluster()
            raise NormcliError(f"cannot reach the Dask scheduler: {exc}", where) from None

    def map(self, work, items):
        workers = max(self.workers, len(self._client.scheduler_info().get("workers", {})) or 1)
        # A Dask task costs about 5 ms: 64 blocks a task took a 1 GiB pass from 2x to 1.2x the threads'.
        return _batched(lambda fn, batch: self._client.submit(fn, batch, pure=False), work, items, workers, most=64)

    def close(self) -> None:
        self._client.close()
        self._close_cluster()

    def _close_cluster(self) -> None:
        if self._cluster is not None:
            self._cluster.close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)


SCHEDULER_FILE_WAIT = 30.0  # seconds: a scheduler started just before may not have written it yet


def _wait_for(scheduler_file: str) -> None:
    """Wait a little for a scheduler file to appear (Dask's client would wait for ever)."""
    import time

    deadline = time.monotonic() + SCHEDULER_FILE_WAIT
    while not os.path.exists(scheduler_file):
        if time.monotonic() > deadline:
            raise NormcliError(f"no scheduler file after {SCHEDULER_FILE_WAIT:g} s; start `dask scheduler "
                               "--scheduler-file FILE` first", scheduler_file)
        time.sleep(0.1)


def open_engine(engine: str = "threads", *, workers: int | None = None, scheduler: str | None = None,
                scheduler_file: str | None = None) -> Engine:
    """The engine called `engine`; --scheduler and --scheduler-file belong to Dask alone."""
    name = engine
    if (scheduler or scheduler_file) and name != "dask":
        raise UsageMismatch("--scheduler and --scheduler-file need --engine dask")
    if scheduler and scheduler_file:
        raise UsageMismatch("--scheduler and --scheduler-file exclude each other: give one")
    if name == "threads":
        return ThreadEngine(workers)
    if name == "processes":
        return ProcessEngine(workers)
    if name == "dask":
        return DaskEngine(workers, scheduler=scheduler, scheduler_file=scheduler_file)
    raise UsageMismatch(f"unknown engine {name}; use one of {', '.join(ENGINES)}")
