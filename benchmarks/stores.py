"""Time `normcli stats --bins 0` on a Zarr store against the same data as .npy, and against Dask's
own recipe (`dask.array.from_zarr(...).mean()/.var()`) on the same cluster.

    python benchmarks/stores.py [--data DIR] [--gib 1] [--repeat 3]

Makes (or reuses) in DIR a float32 (N, 64, 64, 3) array of --gib GiB, far from zero (1000 + N(0, 1)),
as x.npy and as Zarr v3 and v2 stores, uncompressed (raw3.zarr, raw2.zarr) and blosc lz4 shuffled
(blosc3.zarr, blosc2.zarr), chunks of 64 samples (3 MiB); starts a `dask scheduler` and two one-thread
workers with this checkout on their PYTHONPATH; runs every command once a round, --repeat rounds
(interleaved, so a busy machine slows them alike), and prints a markdown table of each command's
best wall time, with the CPU time (user + sys) and peak RSS of that run (of the command's own
process: a cluster's workers are not counted), its ratio to normcli on x.npy on the same engine,
and the mean and variance it printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
from run import ENV, byte_compile  # noqa: E402  (run.py: how every benchmark runs normcli)
RECIPE = """import sys, dask.array as da
from distributed import Client
Client(sys.argv[2])
a = da.from_zarr(sys.argv[1])
print(*(repr(float(v)) for v in da.compute(a.mean(), a.var())))"""


def make_data(folder: Path, gib: float) -> None:
    import numcodecs
    import numpy as np
    import zarr

    n = int(gib * 2**30) // (64 * 64 * 3 * 4)
    if (folder / "blosc2.zarr").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    x = np.lib.format.open_memmap(folder / "x.npy", mode="w+", dtype="f4", shape=(n, 64, 64, 3))
    blosc = {3: zarr.codecs.BloscCodec(cname="lz4", shuffle="shuffle"),
             2: numcodecs.Blosc(cname="lz4", shuffle=numcodecs.Blosc.SHUFFLE)}
    stores = [zarr.create_array(folder / f"{kind}{version}.zarr", shape=x.shape, chunks=(64, 64, 64, 3), dtype="f4",
                                zarr_format=version, compressors=blosc[version] if kind == "blosc" else None)
              for kind in ("raw", "blosc") for version in (3, 2)]
    rng = np.random.default_rng(0)
    for start in range(0, n, 2048):
        block = (1e3 + rng.normal(0.0, 1.0, (min(2048, n - start), 64, 64, 3))).astype("f4")
        for target in (x, *stores):
            target[start:start + len(block)] = block
    x.flush()


def best_of_rounds(commands: dict[tuple[str, str], list[str]], repeat: int) -> dict:
    """Each command's fastest run as (wall s, peak RSS KiB, stdout, CPU s), measured as run.py measures
    every command; the commands take turns, `repeat` rounds."""
    from run import run_once

    fastest: dict = {}
    for _ in range(repeat):
        for label, command in commands.items():
            run = run_once(tuple(command), ())
            if label not in fastest or run[0] < fastest[label][0]:
                fastest[label] = run
    return fastest


def normcli_moments(output: str) -> str:
    row = json.loads(output)["rows"][0]
    return f"{row['mean']!r} / {row['var']!r}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=ROOT / "benchmarks" / "data-stores")
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    byte_compile()
    make_data(args.data, args.gib)
    load = open("/proc/loadavg").read().split()[:3]
    normcli = [sys.executable, "-m", "normcli", "stats", "--bins", "0", "--per", "global", "--format", "json"]
    with tempfile.TemporaryDirectory() as scratch:
        scheduler_file = Path(scratch) / "cluster.json"
        dask = [sys.executable, "-m", "dask"]
        procs = [subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                   "--scheduler-file", str(scheduler_file)], env=ENV, cwd=scratch,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        try:
            while not scheduler_file.exists():
                time.sleep(0.1)
            time.sleep(0.5)  # written whole
            address = json.loads(scheduler_file.read_text())["address"]
            procs.append(subprocess.Popen([*dask, "worker", address, "--nworkers", "2", "--nthreads", "1",
                                           "--no-dashboard"], env=ENV, cwd=scratch,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(8)  # the workers join
            commands = {}
            for engine, options in (("threads", []), ("dask cluster", ["--scheduler", address])):
                for name in ("x.npy", "raw3.zarr", "raw2.zarr", "blosc3.zarr", "blosc2.zarr"):
                    commands[f"normcli, {engine}", name] = [*normcli, str(args.data / name), *options]
            for name in ("raw3.zarr", "blosc3.zarr"):
                commands["dask from_zarr mean/var, dask cluster", name] = [sys.executable, "-c", RECIPE,
                                                                           str(args.data / name), address]
            fastest = best_of_rounds(commands, args.repeat)
            print(f"load average before: {' '.join(load)}; best of {args.repeat} interleaved rounds\n")
            print("| command | data | wall s | CPU s | peak RSS MiB | × .npy | mean / var |\n|---|---|---|---|---|---|---|")
            for (label, name), (seconds, rss, out, cpu) in fastest.items():
                # the ratio to normcli on x.npy with the same engine (Dask's recipe: on the cluster)
                npy = fastest.get((label, "x.npy"), fastest[("normcli, dask cluster", "x.npy")])[0]
                moments = normcli_moments(out) if label.startswith("normcli") else " / ".join(out.split())
                print(f"| {label} | {name} | {seconds:.2f} | {cpu:.2f} | {rss / 1024:.0f} | {seconds / npy:.2f} "
                      f"| {moments} |")
        finally:
            for proc in reversed(procs):
                proc.terminate()
                proc.wait(timeout=30)


if __name__ == "__main__":
    main()
