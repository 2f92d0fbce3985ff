"""Time `normcli stats --bins 0` on a Zarr store against the same data as .npy, and against Dask's
own recipe (`dask.array.from_zarr(...).mean()/.var()`) on the same cluster.

    python benchmarks/stores.py [--data DIR] [--gib 1] [--repeat 3]

Makes (or reuses) in DIR a float32 (N, 64, 64, 2) array of --gib GiB, far from zero (1000 + N(0, 1)),
as x.npy, raw.zarr (uncompressed) and blosc.zarr (blosc lz4, shuffled), chunks of 64 samples (2 MiB);
starts a `dask scheduler` and two one-thread workers with this checkout on their PYTHONPATH; prints
a markdown table of the best wall time of each command and the mean and variance it printed.
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
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
RECIPE = """import sys, dask.array as da
from distributed import Client
Client(sys.argv[2])
a = da.from_zarr(sys.argv[1])
print(*(repr(float(v)) for v in da.compute(a.mean(), a.var())))"""


def make_data(folder: Path, gib: float) -> None:
    import numpy as np
    import zarr

    n = int(gib * 2**30) // (64 * 64 * 2 * 4)
    if (folder / "blosc.zarr").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    x = np.lib.format.open_memmap(folder / "x.npy", mode="w+", dtype="f4", shape=(n, 64, 64, 2))
    stores = [zarr.create_array(folder / name, shape=x.shape, chunks=(64, 64, 64, 2), dtype="f4", compressors=codecs)
              for name, codecs in (("raw.zarr", None),
                                   ("blosc.zarr", zarr.codecs.BloscCodec(cname="lz4", shuffle="shuffle")))]
    rng = np.random.default_rng(0)
    for start in range(0, n, 2048):
        block = (1e3 + rng.normal(0.0, 1.0, (min(2048, n - start), 64, 64, 2))).astype("f4")
        for target in (x, *stores):
            target[start:start + len(block)] = block
    x.flush()


def best(command: list[str], repeat: int) -> tuple[float, str]:
    times, out = [], ""
    for _ in range(repeat):
        start = time.perf_counter()
        out = subprocess.run(command, env=ENV, capture_output=True, text=True, check=True).stdout
        times.append(time.perf_counter() - start)
    return min(times), out


def normcli_moments(output: str) -> str:
    row = json.loads(output)["rows"][0]
    return f"{row['mean']!r} / {row['var']!r}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=ROOT / "benchmarks" / "data-stores")
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    make_data(args.data, args.gib)
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
            print("| command | data | seconds | mean / var |\n|---|---|---|---|")
            for engine, options in (("threads", []), ("dask cluster", ["--scheduler", address])):
                for name in ("x.npy", "raw.zarr", "blosc.zarr"):
                    seconds, out = best([*normcli, str(args.data / name), *options], args.repeat)
                    print(f"| normcli, {engine} | {name} | {seconds:.2f} | {normcli_moments(out)} |")
            for name in ("raw.zarr", "blosc.zarr"):
                seconds, out = best([sys.executable, "-c", RECIPE, str(args.data / name), address], args.repeat)
                print(f"| dask from_zarr mean/var, dask cluster | {name} | {seconds:.2f} | "
                      f"{' / '.join(out.split())} |")
        finally:
            for proc in reversed(procs):
                proc.terminate()
                proc.wait(timeout=30)


if __name__ == "__main__":
    main()
