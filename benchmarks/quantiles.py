"""Exact quantiles (normcli.quantiles) on 1 GiB in memory, in a plain loop over 2 MiB blocks on one
thread: the passes needed, the time of each, the peak memory of the state (tracemalloc: every
allocation of the passes, the block's temporaries included, not the data), against np.percentile
on the whole array. Usage: python benchmarks/quantiles.py [GiB [DTYPE...]]"""

from __future__ import annotations

import sys
import time
import tracemalloc
from functools import reduce

import numpy as np

from normcli import moments
from normcli import quantiles as Q
from normcli.layout import Layout
from normcli.scopes import SCOPES

Q_LIST = (1.0, 50.0, 99.0)
BLOCK = 2 << 20


def make(dtype: str, gib: float) -> np.ndarray:
    """(N, 64, 64, 3) samples, as benchmarks/run.py makes them: normal floats, or uint8 'pixels'."""
    n = int(gib * (1 << 30)) // (64 * 64 * 3 * np.dtype(dtype).itemsize)
    rng = np.random.default_rng(0)
    x = np.empty((n, 64, 64, 3), dtype)
    for start in range(0, n, 1024):
        part = rng.normal(26, 17.5, size=(min(1024, n - start), 64, 64, 3))
        x[start:start + 1024] = np.clip(part * 4, 0, 255) if dtype == "uint8" else part
    return x


def timed_pass(blocks, work, merge=lambda a, b: a.merge(b)):
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    start, cpu = time.perf_counter(), time.process_time()
    merged = reduce(merge, (work(block, first) for first, block in blocks))
    seconds = Seconds(time.perf_counter() - start, time.process_time() - cpu)
    return merged, seconds, tracemalloc.get_traced_memory()[1] - before


class Seconds(tuple):
    """Wall and CPU seconds (CPU time is steadier on a shared machine)."""

    def __new__(cls, wall, cpu):
        return super().__new__(cls, (wall, cpu))

    def __add__(self, other):
        return Seconds(self[0] + other[0], self[1] + other[1])

    def __format__(self, spec):
        return f"{self[0]:.2f} s wall, {self[1]:.2f} s CPU"


def partial_bytes(partial) -> int:
    arrays = [a for a in (*getattr(partial, "counts", ()), *getattr(partial, "keys", ())) if a is not None]
    return sum(a.nbytes for a in arrays)


def measure(dtype: str, scope_name: str, gib: float, x=None):
    x = make(dtype, gib) if x is None else x
    layout, scope = Layout("NHWC"), SCOPES[scope_name]
    per_block = max(1, BLOCK // (x[0].nbytes))
    blocks = [(i, x[i:i + per_block]) for i in range(0, len(x), per_block)]
    keys = scope.keys_of(layout.npc(x[:1]).shape)
    tracemalloc.start()
    stats, seconds, peak = timed_pass(blocks, lambda b, i: moments.measure_block(b, scope, layout, first_sample=i),
                                         moments.merge)
    print(f"{dtype} {scope_name} {x.nbytes / 2**30:.2f} GiB, {len(blocks)} blocks: stats pass {seconds}")
    extra = {}
    if stats.value_counts is not None:
        extra["value_counts"] = stats.value_counts
    else:
        extra["bounds"] = Q.Bounds.of(stats.aggregate(), dtype)
    start = time.perf_counter()
    state = Q.first(Q.Request(Q_LIST), x.dtype, scope, layout, keys, **extra)
    print(f"  first(): {time.perf_counter() - start:.3f} s")
    total = seconds
    while (task := Q.next_task(state)) is not None:
        merged, seconds, peak = timed_pass(blocks, lambda b, i: Q.work(task, b, i))
        start = time.perf_counter()
        state = Q.advance(state, merged)
        total += seconds
        print(f"  quantile pass {state.passes}: {seconds} ({len(task.cells)} cells, "
              f"{sum(c.bits == 0 for c in task.cells)} collected), advance {time.perf_counter() - start:.3f} s, "
              f"peak {peak / 2**20:.1f} MiB, merged partial {partial_bytes(merged) / 2**20:.2f} MiB")
    tracemalloc.stop()
    got = Q.results(state)
    print(f"  passes with stats: {state.passes + 1}, {total}; {got}")
    if scope_name == "global":
        start = time.perf_counter()
        want = np.percentile(x, Q_LIST)
        print(f"  np.percentile on the loaded array: {time.perf_counter() - start:.2f} s, equal: "
              f"{np.array_equal(got[0], want)}")
    return x


if __name__ == "__main__":
    gib = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    for dtype in sys.argv[2:] or ("float32", "uint8"):
        data = None
        for scope_name in ("global", "channel"):
            data = measure(dtype, scope_name, gib, data)
        del data
