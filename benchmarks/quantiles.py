"""Exact quantiles (normcli.quantiles) on 1 GiB in memory, in a plain loop over 2 MiB blocks on one
thread: the passes needed, the time of each, the peak memory of the state (tracemalloc: every
allocation of the passes, the block's temporaries included, not the data), against np.percentile
on the whole array. Usage: python benchmarks/quantiles.py [GiB [DTYPE...]]

With --cli (python benchmarks/quantiles.py --cli [--repeat N] [--baseline-repeat N] [--markdown FILE]):
the real CLI, each command its own process, on the 1 GiB float32 and uint8 .npy files of
benchmarks/run.py (made there when missing): `normcli stats X --per global --bins 0 --format json
--percentiles 1,50,99` against the same without --percentiles, np.percentile on the loaded array
(baselines/numpy_percentile.py) and dask.array.percentile on the memory-mapped file
(baselines/dask_percentile.py), the commands interleaved, --repeat rounds (numpy and dask in the
first --baseline-repeat only), best wall time (and that run's CPU time) taken. The passes are
counted in one more run of normcli through `--passes`, which wraps normcli.reduction.reduce (this benchmark
only). Dask's error is measured against np.percentile's values: absolutely, and in ranks (how far,
in sorted positions, dask's value lies from the position numpy interpolates at)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from functools import reduce
from pathlib import Path

import numpy as np

from normcli import moments
from normcli import quantiles as Q
from normcli.layout import Layout
from normcli.scopes import SCOPES
from normcli.statspass import opening_task

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
    state = Q.first(Q.Request(Q_LIST), x.dtype, scope, layout, keys)
    task = opening_task(state)  # the first quantile pass, inside the statistics pass as in normcli
    counting = task is not None  # (8/16-bit integers: their value counts give the quantiles)

    def stats_pass(b, i):
        return moments.measure_block(b, scope, layout, first_sample=i), task and Q.work(task, b, i)

    (stats, first), seconds, peak = timed_pass(blocks, stats_pass, lambda a, b: (
        moments.merge(a[0], b[0]), a[1] and a[1].merge(b[1])))
    print(f"{dtype} {scope_name} {x.nbytes / 2**30:.2f} GiB, {len(blocks)} blocks: stats pass {seconds}"
          f"{' with the first quantile pass' if counting else ''}, peak {peak / 2**20:.1f} MiB")
    state = Q.advance(state, first) if counting else Q.counted(state, stats.value_counts)
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
    print(f"  passes with stats: {state.passes}, {total}; {got}")
    if scope_name == "global":
        start = time.perf_counter()
        want = np.percentile(x, Q_LIST)
        print(f"  np.percentile on the loaded array: {time.perf_counter() - start:.2f} s, equal: "
              f"{np.array_equal(got[0], want)}")
    return x


# -- the CLI against numpy and dask (--cli) -----------------------------------------------------------
HERE = Path(__file__).resolve().parent
PY = sys.executable
from run import ENV, byte_compile  # noqa: E402  (run.py: how every benchmark runs normcli)
Q_ARG = ",".join(f"{q:g}" for q in Q_LIST)
DASK_CHUNK_MIB = 32
TARGETS = {"uint8": (1, 1.2), "float32": (3, 3.0)}  # issue 21: passes at most, time at most × stats
MAX_RSS_MIB = 128


def commands(path: Path) -> dict[str, tuple]:
    normcli = (PY, "-m", "normcli", "stats", str(path), "--per", "global", "--bins", "0", "--format", "json")
    return {"stats": normcli,
            "stats --percentiles": (*normcli, "--percentiles", Q_ARG),
            "np.percentile": (PY, str(HERE / "baselines" / "numpy_percentile.py"), str(path), Q_ARG),
            "dask.array.percentile": (PY, str(HERE / "baselines" / "dask_percentile.py"), str(path), Q_ARG,
                                      str(DASK_CHUNK_MIB))}


def run_once(cmd: tuple) -> tuple[float, float, float, str]:
    """(wall s, CPU s of the process tree, peak RSS MiB, stdout) of one run of `cmd`, measured as
    run.py measures every command (GNU time's max RSS and the tree's RSS sampled every 20 ms)."""
    from run import run_once as measured_run

    wall, peak_kib, stdout, cpu = measured_run(cmd, ())
    return wall, cpu, peak_kib / 1024, stdout


def count_passes(cmd: tuple) -> list[tuple[str, float]]:
    """The passes normcli runs for `cmd`: (name, wall seconds) each, from one more run through --passes."""
    with tempfile.NamedTemporaryFile("r") as log:
        subprocess.run((PY, __file__, "--passes", log.name, *cmd[3:]), check=True, env=ENV,
                       stdout=subprocess.DEVNULL)
        return [(name, float(seconds)) for name, seconds in (line.split() for line in log)]


def run_counting_passes(log: str, args: list[str]) -> None:
    """normcli `args`, every reduction.reduce call (one pass over the blocks) logged to `log`."""
    from normcli import reduction
    from normcli.cli import main

    real = reduction.reduce

    def logged(engine, a_pass, blocks, progress=None):
        start = time.perf_counter()
        merged = real(engine, a_pass, blocks, progress)
        with open(log, "a") as f:
            f.write(f"{a_pass.name.replace(' ', '_')} {time.perf_counter() - start:.3f}\n")
        return merged

    reduction.reduce = logged
    sys.argv = ["normcli", *args]
    main()


def rank_error(path: Path, value: float, q: float) -> float:
    """How many sorted positions `value` lies from position q/100·(n-1) of the values in `path` (0 if
    a value at that position, or between its neighbours, equals it)."""
    x = np.load(path, mmap_mode="r").reshape(-1)
    below = at_or_below = 0
    for start in range(0, len(x), 1 << 24):
        part = x[start:start + (1 << 24)]
        below += int(np.count_nonzero(part < value))
        at_or_below += int(np.count_nonzero(part <= value))
    target = q / 100 * (len(x) - 1)
    return max(0.0, below - 1 - target, target - at_or_below)


def cli_main(repeat: int, baseline_repeat: int, markdown: Path | None) -> None:
    from run import load, machine, make_npy, warm

    byte_compile()

    data = HERE / "data"
    data.mkdir(exist_ok=True)
    files = {"float32": data / "f32_rgb.npy", "uint8": data / "u8_rgb.npy"}
    sample = 64 * 64 * 3
    make_npy(files["float32"], ((1 << 30) // (sample * 4), 64, 64, 3), lambda rng, n: (
        rng.standard_normal((n, 64, 64, 3), np.float32) * np.float32(17.5) + np.array([26, 36, 46], np.float32)))
    make_npy(files["uint8"], ((1 << 30) // sample, 64, 64, 3),
             lambda rng, n: rng.integers(0, 256, (n, 64, 64, 3), np.uint8))
    for path in files.values():
        warm(path)
    before = load()
    runs: dict = {}
    for round_ in range(repeat):
        for dtype, path in files.items():
            for name, cmd in commands(path).items():
                if round_ >= baseline_repeat and name not in ("stats", "stats --percentiles"):
                    continue
                wall, cpu, rss, out = run_once(cmd)
                runs.setdefault((dtype, name), []).append((wall, cpu, rss, out))
                print(f"round {round_ + 1} {dtype} {name}: {wall:.2f} s wall, {cpu:.2f} s CPU, {rss:.0f} MiB",
                      file=sys.stderr)
    after = load()
    lines = ["| data | command | passes | wall s (best) | CPU s | wall s, all runs | "
             "peak RSS MiB | × stats | target | met? |", "|---|---|---:|---:|---:|---|---:|---:|---|---|"]
    checks, notes = [], []
    for dtype, path in files.items():
        best = {name: min(r, key=lambda run: run[0]) for (d, name), r in runs.items() if d == dtype}
        exact = np.array(json.loads(best["np.percentile"][3]))
        ours = np.array(list(json.loads(best["stats --percentiles"][3])["rows"][0]["percentiles"].values()))
        dask = np.array(json.loads(best["dask.array.percentile"][3]))
        checks.append(f"- {dtype}: normcli's percentiles {ours.tolist()} "
                      f"{'==' if np.array_equal(ours, exact) else '!='} np.percentile's {exact.tolist()}")
        ranks = [rank_error(path, v, q) for v, q in zip(dask, Q_LIST)]
        checks.append(f"- {dtype}: dask.array.percentile {dask.tolist()}: error "
                      f"{np.abs(dask - exact).tolist()} absolute, {ranks} ranks "
                      f"(of {np.load(path, mmap_mode='r').size:,} values)")
        passes = {name: count_passes(commands(path)[name]) for name in ("stats", "stats --percentiles")}
        for name, each in passes.items():
            notes.append(f"- {dtype} `{name}` passes (one counting run): " +
                         ", ".join(f"{n} {s:.2f} s" for n, s in each))
        stats_wall = best["stats"][0]
        for name, (wall, cpu, rss, _) in best.items():
            all_runs = " ".join(f"{r[0]:.1f}" for r in runs[dtype, name])
            count = str(len(passes[name])) if name in passes else ("1 (load)" if name == "np.percentile" else "—")
            target, met = "—", "—"
            if name == "stats --percentiles":
                most, ratio = TARGETS[dtype]
                target = f"≤ {most} pass{'es' * (most > 1)}, ≤ {ratio}×, ≤ {MAX_RSS_MIB} MiB"
                ok = len(passes[name]) <= most and wall <= ratio * stats_wall and rss <= MAX_RSS_MIB
                met = "yes" if ok else "**NO**"
            lines.append(f"| {dtype} 1 GiB | `{name}` | {count} | {wall:.2f} | {cpu:.2f} | {all_runs} | {rss:.0f} | "
                         f"{wall / stats_wall:.2f}× | {target} | {met} |")
    text = "\n".join([*lines, "", f"- {machine(data)}", f"- {before} before, {after} after",
                      f"- dask: threaded scheduler, chunks of {DASK_CHUNK_MIB} MiB along the first axis, raveled",
                      *notes, "", "Checks:", *checks])
    print(text)
    if markdown:
        markdown.write_text(text + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--passes"]:
        run_counting_passes(sys.argv[2], sys.argv[3:])
    elif sys.argv[1:2] == ["--cli"]:
        import argparse

        parser = argparse.ArgumentParser()
        parser.add_argument("--cli", action="store_true")
        parser.add_argument("--repeat", type=int, default=3)
        parser.add_argument("--baseline-repeat", type=int, help="rounds that run numpy and dask [default: --repeat]")
        parser.add_argument("--markdown", type=Path)
        options = parser.parse_args()
        cli_main(options.repeat, options.baseline_repeat or options.repeat, options.markdown)
    else:
        gib = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
        for dtype in sys.argv[2:] or ("float32", "uint8"):
            data = None
            for scope_name in ("global", "channel"):
                data = measure(dtype, scope_name, gib, data)
            del data
