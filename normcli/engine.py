"""Engines: where a pass's work runs. An engine maps a work function over blocks and yields
the results in block order; the pass merges them (associatively) on the driver.

Work is a module-level function of picklable arguments (a frozen task and a block descriptor),
and a block is read by whoever runs it, so threads, a process pool and Dask workers run the
same code; only small values (statistics, counts) come back. Adding an engine is adding one
class here and its name to options.ENGINES.

A failed or interrupted run calls `Engine.stop()` before anything is removed: tasks not started
are cancelled, running ones are ended (a process pool's workers) or waited for (threads, Dask
workers: at most STOP_WAIT seconds), so that no task writes into an output after it is discarded.
A task still running after the wait (a loaded Dask worker) cannot add to a discarded output either:
the output is removed under a name no task writes to (sinks.Outputs.discard), and its writes fail.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from functools import cache, partial
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

from normcli.errors import NormcliError, UsageMismatch, warning_line
from normcli.options import ENGINES
from normcli.signals import signals_held

T = TypeVar("T")
R = TypeVar("R")

# numpy's kernels, file reads and image decoders release the GIL, so threads use every core.
DEFAULT_WORKERS = max(1, min(os.cpu_count() or 1, 8))
STOP_WAIT = 10.0  # seconds a failed run waits for tasks already running before it removes its outputs
CLUSTER_TIMEOUT = 30.0  # seconds: --cluster-timeout's default (scheduler file, handshake, no workers)
# The one knob of task size: how many blocks a task carries (Engine.task_blocks), chosen by the
# engine from the number of blocks. The merge tree (reduction.py) does not depend on it.
TASKS_PER_WORKER = 8  # at least this many tasks a worker where there are enough blocks, so they finish together


_MALLOC_KEEP = 256 << 20  # bytes of freed memory glibc may keep (far above a few blocks in flight)


@cache
def keep_freed_memory() -> None:
    """Let glibc keep freed block buffers for the next block instead of handing them back.

    Worker threads allocate from arenas of their own, which glibc shrinks (madvise) whenever a
    block's arrays are freed, so every block paid for page faults that zero its memory again (see
    benchmarks/PROFILE.md). Peak memory is unchanged
    (it is what a few blocks in flight need). A no-op where glibc's mallopt is missing. The
    settings are the process's: once a process is enough.
    """
    import ctypes

    try:
        # the symbols the process already has (libc's among them): ctypes.util.find_library would
        # run ldconfig in a subprocess
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    mallopt(M_TRIM_THRESHOLD, _MALLOC_KEEP)
    mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's maximum; arrays below it come from the (kept) heap


def _pool_worker_start() -> None:
    """A pool process leaves Ctrl-C to the driver, which ends it (a terminal sends SIGINT to the
    whole process group: each worker would print its own traceback), and shows its warnings on the
    stderr it shares with the driver as the driver's one line."""
    import signal
    import warnings

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warnings.showwarning = _show_warning_on_stderr
    keep_freed_memory()


def _show_warning_on_stderr(message, category, filename, lineno, file=None, line=None) -> None:
    import sys

    sys.stderr.write(warning_line(message, category, sys.stderr.encoding) + "\n")
    sys.stderr.flush()


Done = Callable[[int], None]  # done(i): item i's work has finished (see Engine.map)


def _in_order(submit: Callable, fn: Callable, items: Iterable, ahead: int, pending: deque,
              result: Callable = lambda future: future.result(), done: Done | None = None) -> Iterator:
    """fn over items through `submit(fn, item) -> future`, results in input order, at most
    `ahead` in flight (so memory stays bounded however many items there are). `pending` holds
    the futures in flight, for the engine's stop(). `done(i)` as Engine.map says."""
    once = None if done is None else _Once(done)
    given = taken = 0
    for item in items:
        future = submit(fn, item)
        if once is not None:
            future.add_done_callback(partial(_if_succeeded, once, given))
        given += 1
        pending.append(future)
        if len(pending) >= ahead:
            yield _head(pending, result, once, taken)
            taken += 1
    while pending:
        yield _head(pending, result, once, taken)
        taken += 1


def _head(pending: deque, result: Callable, once: "_Once | None", index: int):
    """The result of the oldest future in flight (item `index`), told done before it is handed on."""
    value = result(pending[0])
    pending.popleft()
    if once is not None:
        once(index)
    return value


class _Once:
    """done(i) once for each i, whichever thread comes first: a future's callback as the task ends, or
    the driver as it takes the result (a callback may run after the waiting driver has woken)."""

    def __init__(self, done: Done):
        self._done = done
        self._told: set[int] = set()
        self._lock = threading.Lock()

    def __call__(self, index: int) -> None:
        with self._lock:  # held while done() runs: calls never overlap, and none is still running when
            if index not in self._told:  # the driver hands on the result
                self._told.add(index)
                self._done(index)


def _if_succeeded(once: _Once, index: int, future) -> None:
    status = getattr(future, "status", None)  # a Dask future's ("finished", "error", "cancelled")
    if status is None:
        status = "finished" if not future.cancelled() and future.exception() is None else "failed"
    if status == "finished":  # a failed task fails the run when the driver reaches it
        once(index)


class Stopped(Exception):
    """A task that found its engine stopped before it began (its result is never used)."""


_STOPPED: set[str] = set()  # the engines of this process that stopped: their tasks here end early


def _unless_stopped(engine_id: str, work: Callable, item):
    """work(item), unless the engine that sent it has stopped (seen by tasks in the driver's process:
    threads and an in-process cluster; other processes are ended, or waited for)."""
    if engine_id in _STOPPED:
        raise Stopped()
    return work(item)


class Engine:
    """Runs work over blocks, results in block order. Use as a context manager; `map` may be
    called once per pass."""

    # Whether work runs on threads of this process, so that it may report to the driver itself (a
    # pass counts each block as it completes); elsewhere only a task's end is seen (Engine.map's done).
    in_process = False
    # The most blocks one task carries: a task to another process or a cluster costs milliseconds
    # (benchmarks/PROFILE.md), so there each carries many; threads pay microseconds.
    most_blocks = 16

    def __init__(self, workers: int | None = None):
        self.workers = workers or DEFAULT_WORKERS
        self._id = os.urandom(8).hex()  # names this engine's tasks for _STOPPED
        self._pending: deque = deque()  # the futures in flight of the current map

    def map(self, work: Callable[[T], R], items: Sequence[T], done: Done | None = None) -> Iterator[R]:
        """work(item) for every item, results in item order. `done(i)`, if given, is called once for
        each item i as soon as its work has finished (from any thread, never two calls at once), and
        always before its result is yielded: progress counted as work completes, not in order."""
        raise NotImplementedError

    def task_blocks(self, blocks: int) -> int:
        """How many consecutive blocks one task carries, for a pass over `blocks` blocks: up to
        `most_blocks`, at least TASKS_PER_WORKER tasks a worker where there are enough."""
        return max(1, min(self.most_blocks, blocks // (TASKS_PER_WORKER * self.workers)))

    def stop(self) -> None:
        """Cancel the tasks not started and end, or wait for, the running ones (at most STOP_WAIT
        seconds): after it, no task of this engine writes anything, but one still running past the
        wait (see above). Called before a failed run removes its outputs."""
        _STOPPED.add(self._id)
        for future in self._pending:
            future.cancel()
        wait(self._pending, timeout=STOP_WAIT)
        self._pending.clear()

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _told(results: Iterator, done: Done) -> Iterator:
    for index, result in enumerate(results):
        done(index)
        yield result


class ThreadEngine(Engine):
    """Threads of this process (the default): numpy, reads and decoders release the GIL."""

    in_process = True

    def __init__(self, workers: int | None = None):
        super().__init__(workers)
        keep_freed_memory()
        self._pool = ThreadPoolExecutor(self.workers) if self.workers > 1 else None

    def map(self, work, items, done=None):
        if self._pool is None:
            return map(work, items) if done is None else _told(map(work, items), done)
        self._pending.clear()
        return _in_order(self._pool.submit, partial(_unless_stopped, self._id, work), items, 2 * self.workers,
                         self._pending, done=done)

    def close(self) -> None:
        super().close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)  # stop() waited for the running ones


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int = DEFAULT_WORKERS) -> Iterator[R]:
    """Like map(fn, items) on `workers` threads, results in input order."""
    with ThreadEngine(workers) as engine:
        yield from engine.map(fn, list(items))


class ProcessEngine(Engine):
    """A pool of worker processes, for work that holds the GIL (counting with bincount, encoding)."""

    most_blocks = 64

    def __init__(self, workers: int | None = None):
        super().__init__(workers)
        self._pool = None

    def map(self, work, items, done=None):
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # forkserver: no fork of a process that may hold threads; the server imports normcli once
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["normcli.passes"])
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_pool_worker_start)
        self._pending.clear()
        return _in_order(partial(_pool_died, self._pool.submit), partial(_unless_stopped, self._id, work), items,
                         2 * self.workers, self._pending, partial(_pool_died, lambda future: future.result()), done)

    def stop(self) -> None:
        """Running tasks end with their processes (terminated), so nothing waits for a slow block."""
        # Nothing is cancelled first: the pool fails every task of its own once a process ends (and
        # Python 3.11's pool thread raises on a future cancelled before that).
        self._pending.clear()
        if self._pool is not None:
            processes = list((self._pool._processes or {}).values())  # no public way to end running tasks
            for process in processes:
                process.terminate()
            deadline = time.monotonic() + STOP_WAIT
            for process in processes:
                process.join(max(0.0, deadline - time.monotonic()))
            self._pool.shutdown(wait=True)
            self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _pool_died(call: Callable, *args):
    """call(*args), a pool that lost a process (submitting to it, or waiting on it) one line."""
    from concurrent.futures.process import BrokenProcessPool

    try:
        return call(*args)
    except BrokenProcessPool:
        raise NormcliError("a worker process of --engine processes died (killed, or out of memory)") from None


class DaskEngine(Engine):
    """A dask.distributed cluster: the scheduler at `scheduler` (tcp://host:port), the one named
    in `scheduler_file`, or a local cluster (one worker of `workers` threads in this process).
    Workers read their blocks and write their outputs themselves, so inputs and outputs must be
    on a filesystem they share. Every wait on the cluster (its scheduler file, the scheduler's
    answer, a cluster without workers) ends after `cluster_timeout` seconds."""

    most_blocks = 64

    def __init__(self, workers: int | None = None, *, scheduler: str | None = None,
                 scheduler_file: str | None = None, cluster_timeout: float | None = None):
        super().__init__(workers)
        try:
            import distributed
        except ImportError:
            raise NormcliError("--engine dask needs Dask (normcli's [dask] extra): pip install 'dask[distributed]', "
                               "or pip install '.[dask]' in a clone of normcli") from None
        _quiet_dask_logs()
        self.timeout = CLUSTER_TIMEOUT if cluster_timeout is None else cluster_timeout
        self._cluster = None
        self._scratch = None
        self.where = scheduler or scheduler_file or "local cluster"
        try:
            if scheduler or scheduler_file:
                address = scheduler or _scheduler_address(scheduler_file, self.timeout)
                _check_scheduler(address, self.timeout, self.where)
                self._client = distributed.Client(address, timeout=self.timeout)
                _check_environment(self._client, self.where)
            else:
                # One worker of `workers` threads in this process: it starts in milliseconds, where
                # worker processes take seconds (for those, start a cluster and give --scheduler).
                keep_freed_memory()  # its worker threads are this process's
                self._start_local_cluster()
        except (OSError, TimeoutError, ValueError, RuntimeError) as exc:
            self._close_cluster()
            raise NormcliError(f"cannot reach the Dask scheduler: {exc}", self.where) from None
        except BaseException:
            self._close_cluster()
            raise

    def _start_local_cluster(self) -> None:
        """The local cluster, its client and its scratch folder, which is ours to remove (Dask leaves
        dask-scratch-space in $TMPDIR). A signal waits until all three are ours to close: a cluster
        cut off halfway would go on starting, and write into its folder after it was removed."""
        import warnings

        import dask
        import distributed

        with signals_held():
            self._scratch = tempfile.mkdtemp(prefix="normcli-dask-")
            # should a signal come before the engine's with-block begins, the folder goes as the process exits
            weakref.finalize(self, shutil.rmtree, self._scratch, ignore_errors=True)
            with warnings.catch_warnings(), dask.config.set({"temporary-directory": self._scratch}):
                warnings.simplefilter("ignore")  # e.g. "Port 8787 is already in use": not the user's concern
                self._cluster = distributed.LocalCluster(
                    n_workers=1, threads_per_worker=self.workers, processes=False, dashboard_address=None,
                    silence_logs=False, local_directory=self._scratch)
            self._client = distributed.Client(self._cluster)

    def task_blocks(self, blocks: int) -> int:
        """As Engine.task_blocks, for the workers the cluster has now."""
        self.workers = max(self.workers, len(self._client.scheduler_info().get("workers", {})) or 1)
        return super().task_blocks(blocks)

    def map(self, work, items, done=None):
        self._pending.clear()
        return _in_order(lambda fn, item: self._client.submit(fn, item, pure=False),
                         partial(_unless_stopped, self._id, work), items, 2 * self.workers, self._pending,
                         self._result, done)

    def _result(self, future):
        """The task's result; a lost scheduler, a cluster left without workers for `timeout`
        seconds and a task whose workers kept dying are each one NormcliError."""
        from concurrent.futures import CancelledError

        from distributed import KilledWorker

        workers_seen = time.monotonic()
        while True:
            try:
                return future.result(timeout=1)
            except KilledWorker as error:
                raise NormcliError(f"Dask workers died running one task ({_first_line(error)})", self.where) from None
            except ImportError as error:  # a module that a worker lacks (one this process has not loaded)
                raise error if self._cluster is not None else _missing_module(error, self.where) from None
            except (TimeoutError, CancelledError, OSError, NormcliError) as error:
                if future.status == "error":  # the task itself raised it, on a worker
                    raise error if self._cluster is not None else _as_seen_by_a_worker(error) from None
                if not isinstance(error, TimeoutError) or future.cancelled():  # FutureCancelledError, CommClosedError
                    raise NormcliError(f"lost the Dask scheduler mid-run ({error.__class__.__name__})",
                                       self.where) from None
            if self._cluster is not None:
                continue
            workers = self._workers()
            if workers:
                workers_seen = time.monotonic()
            elif time.monotonic() - workers_seen > self.timeout:
                if workers is None:
                    raise NormcliError(f"lost the Dask scheduler mid-run (no answer for {self.timeout:g} s, "
                                       "--cluster-timeout)", self.where)
                raise NormcliError(f"the Dask cluster has had no workers for {self.timeout:g} s "
                                   "(--cluster-timeout)", self.where)

    def _workers(self) -> int | None:
        """How many workers the scheduler has now (None: it does not answer within a few seconds)."""
        try:
            return len(self._client.sync(self._client.scheduler.ncores, callback_timeout=min(5.0, self.timeout)))
        except Exception:  # noqa: BLE001 (whatever went wrong, the scheduler did not answer)
            return None

    def stop(self) -> None:
        """The tasks not yet on a worker are cancelled, those running are waited for (at most
        STOP_WAIT seconds; in the in-process cluster they end with their task). A scheduler that
        does not answer cannot say which run: then every task is waited for."""
        _STOPPED.add(self._id)
        pending = list(self._pending)
        self._pending.clear()
        if not pending:
            return
        import distributed

        try:
            on_workers = self._client.sync(self._client.scheduler.processing, callback_timeout=min(5.0, STOP_WAIT))
            running = {key for keys in on_workers.values() for key in keys}
            self._client.cancel([future for future in pending if future.key not in running])
            pending = [future for future in pending if future.key in running]
        except Exception:  # noqa: BLE001 (the scheduler is gone or does not answer)
            pass
        try:
            distributed.wait(pending, timeout=STOP_WAIT)
        except Exception:  # noqa: BLE001 (timed out, or the scheduler is gone: nothing more to wait for)
            pass
        try:
            self._client.cancel(pending)
        except Exception:  # noqa: BLE001
            pass

    def close(self) -> None:
        try:
            self.stop()
            try:
                self._client.close(timeout=STOP_WAIT)
            except Exception:  # noqa: BLE001 (a scheduler that went away: nothing to close)
                pass
        finally:
            self._close_cluster()

    def _close_cluster(self) -> None:
        """Close the local cluster, if any, and remove its scratch folder, whatever happens: its close
        raises nothing (an error here would replace the run's own, a Ctrl-C's included)."""
        try:
            if self._cluster is not None:
                self._cluster.close(timeout=STOP_WAIT)
        except Exception:  # noqa: BLE001 (timed out: a task that outlived stop()'s wait ends with this process)
            pass
        finally:
            self._cluster = None
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)
                self._scratch = None


def _check_environment(client, where: str) -> None:
    """Refuse a cluster whose scheduler or workers cannot import the normcli modules this run has
    loaded: a worker that cannot unpickle a task dies without saying why (the run would wait for
    workers in vain), and a scheduler answers with Dask's traceback."""
    import sys

    statement = "import " + ", ".join(sorted(name for name in sys.modules if name.partition(".")[0] == "normcli"))
    for who, run in (("the Dask scheduler", client.run_on_scheduler), ("a Dask worker", client.run)):
        try:
            run(exec, statement)  # builtins travel by name: the check itself needs no normcli there
        except ImportError as error:
            raise _missing_module(error, where, who) from None


def _missing_module(error: ImportError, where: str, who: str = "a Dask worker") -> NormcliError:
    return NormcliError(f"{who} cannot import {error.name or 'a module'} ({error}): install the same environment "
                        "as here (normcli and its dependencies) on the scheduler and every worker", where)


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [""])[0]


def _as_seen_by_a_worker(error: Exception) -> Exception:
    """A file a cluster worker found missing, though the driver opened it: say where to put it."""
    import errno

    if getattr(error, "errno", None) != errno.ENOENT:
        return error
    path = getattr(error, "path", None) or getattr(error, "filename", None)
    return NormcliError("a Dask worker cannot see this file: inputs and outputs must be on a filesystem every "
                        "worker sees", None if path is None else str(path))


_DASK_LOGGERS = ("distributed", "tornado", "bokeh", "asyncio")  # asyncio: the event loop Dask's client runs on


def _quiet_dask_logs() -> None:
    """Dask's own log lines never reach the terminal, nor those of its event loop (an interrupted run's
    connection attempt that times out leaves a "Future exception was never retrieved" for asyncio to
    log at exit): a fault reaches the user as normcli's one line."""
    import logging

    names = [name for name in logging.root.manager.loggerDict if name.split(".")[0] in _DASK_LOGGERS]
    for name in {*_DASK_LOGGERS, *names}:  # Dask's config gives some children handlers of their own
        logger = logging.getLogger(name)
        logger.handlers = [logging.NullHandler()]
        logger.propagate = False


def _scheduler_address(scheduler_file: str, timeout: float) -> str:
    """The address in a scheduler file, waiting up to `timeout` seconds for it to appear whole
    (a scheduler started just before may not have written it yet, or only half)."""
    import json

    deadline = time.monotonic() + timeout
    problem = "does not exist"
    while True:
        try:
            with open(scheduler_file, encoding="utf-8") as f:
                address = json.load(f)["address"]
            if isinstance(address, str) and address:
                return address
            problem = "holds no scheduler address"
        except FileNotFoundError:
            problem = "does not exist"
        except (ValueError, KeyError, TypeError):
            problem = "is not a Dask scheduler file (JSON with an address)"
        except OSError as error:
            raise NormcliError(error.strerror or str(error), scheduler_file) from None
        if time.monotonic() > deadline:
            raise NormcliError(f"the scheduler file {problem} after {timeout:g} s (--cluster-timeout); start "
                               "`dask scheduler --scheduler-file FILE` first", scheduler_file)
        time.sleep(0.1)


def _check_scheduler(address: str, timeout: float, where: str) -> None:
    """Refuse, within `timeout` seconds in all, an address that does not answer as a Dask
    scheduler (nothing listening, a silent listener, a web server): Dask's own client would wait
    minutes for a handshake that never comes."""
    import asyncio
    from urllib.parse import urlsplit

    from distributed.comm import connect

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme in ("tcp", "tls"):
        import socket

        try:  # a refused connection is known at once (Dask would retry it until the timeout)
            socket.create_connection((parts.hostname, parts.port), timeout=timeout).close()
        except (OSError, ValueError) as error:
            raise NormcliError(f"cannot reach the Dask scheduler: {getattr(error, 'strerror', None) or error}",
                               where) from None

    async def identity():
        comm = await connect(address, timeout=timeout)
        try:
            await comm.write({"op": "identity"})
            return await comm.read()
        finally:
            comm.abort()

    try:
        reply = asyncio.run(asyncio.wait_for(identity(), timeout))
    except (asyncio.TimeoutError, TimeoutError):
        raise NormcliError(f"no answer as a Dask scheduler within {timeout:g} s (--cluster-timeout)", where) from None
    except Exception as error:  # noqa: BLE001 (whatever the peer sent, it is not Dask)
        raise NormcliError(f"does not answer as a Dask scheduler ({error.__class__.__name__})", where) from None
    if not isinstance(reply, dict) or reply.get("type") != "Scheduler":
        raise NormcliError("does not answer as a Dask scheduler", where)


def open_engine(engine: str | None = None, *, workers: int | None = None, scheduler: str | None = None,
                scheduler_file: str | None = None, cluster_timeout: float | None = None) -> Engine:
    """The engine called `engine` (None: dask when a scheduler is given, else threads); --scheduler,
    --scheduler-file and --cluster-timeout belong to Dask alone."""
    name = engine or ("dask" if scheduler or scheduler_file else "threads")
    if (scheduler or scheduler_file) and name != "dask":
        raise UsageMismatch(f"--scheduler and --scheduler-file run on Dask, not --engine {name}; drop --engine")
    if cluster_timeout is not None and name != "dask":
        raise UsageMismatch("--cluster-timeout is for --engine dask")
    if scheduler and scheduler_file:
        raise UsageMismatch("--scheduler and --scheduler-file exclude each other: give one")
    if name == "threads":
        return ThreadEngine(workers)
    if name == "processes":
        return ProcessEngine(workers)
    if name == "dask":
        return DaskEngine(workers, scheduler=scheduler, scheduler_file=scheduler_file,
                          cluster_timeout=cluster_timeout)
    raise UsageMismatch(f"unknown engine {name}; use one of {', '.join(ENGINES)}")
