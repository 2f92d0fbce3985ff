"""Time normcli's block kernels in process: measure_block and float_histogram on 2 MiB blocks.

    PYTHONPATH=CHECKOUT python benchmarks/block_kernels.py [--data DIR] [--rounds 7]

Uses the float32 .npy that benchmarks/run.py makes (its first 128 MiB, as 64 blocks of 2 MiB, each
copied out of the file first, so that every block comes from memory as a read block does). Prints,
per kernel, the best and the median over the rounds of: CPU time a block on one thread
(time.thread_time, which other processes' load disturbs less than the wall clock), and wall time a
block with two threads sharing the blocks (which the GIL and the other cores' load both show).
Run it for two checkouts in turn (PYTHONPATH) to compare them, or with NORMCLI_COMPILED=0 and =1
for the numpy and the compiled kernels; benchmarks/PROFILE.md has numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one core per kernel, as the others measure

import numpy as np  # noqa: E402

from normcli.histograms import float_histogram  # noqa: E402
from normcli.layout import Layout  # noqa: E402
from normcli.moments import measure_block  # noqa: E402
from normcli.scopes import SCOPES  # noqa: E402

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=HERE / "data", help="the folder run.py wrote f32_rgb.npy to")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    x = np.load(args.data / "f32_rgb.npy", mmap_mode="r")
    per_block = max(1, (2 << 20) // x[0].nbytes)
    blocks = [np.array(x[i:i + per_block]) for i in range(0, per_block * 64, per_block)]
    # float64 ends, as a run's edges are: Python floats would make numpy bin in float32, which
    # float_histogram leaves to np.histogram (its kernel's argument assumes float64 binning)
    low = np.float64(min(b.min() for b in blocks))
    high = np.float64(max(b.max() for b in blocks))
    layout = Layout("NHWC")
    # A run frees a block-sized read buffer early on, which raises glibc's mmap threshold: smaller
    # temporaries then come from the heap instead of fresh, page-faulting maps. Do the same here, so
    # that the kernels are timed as a run calls them (without it, float_histogram took 3.9 ms, not 3.1).
    np.empty(1 << 19).fill(0)
    kernels = {f"measure_block --per {name}": (lambda b, s=SCOPES[name]: measure_block(b, s, layout))
               for name in ("global", "channel")}
    kernels["float_histogram, 30 bins"] = lambda b: float_histogram(b, low, high, 30)

    def run(kernel, some) -> None:
        for block in some:
            kernel(block)

    for name, kernel in kernels.items():
        run(kernel, blocks[:4])
        cpu, wall = [], []
        for _ in range(args.rounds):
            start = time.thread_time()
            run(kernel, blocks)
            cpu.append((time.thread_time() - start) / len(blocks))
            threads = [threading.Thread(target=run, args=(kernel, blocks[k::2])) for k in range(2)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall.append((time.perf_counter() - start) / len(blocks))
        print(f"{name}: 1 thread {min(cpu) * 1e6:.0f} us CPU a block (median {statistics.median(cpu) * 1e6:.0f}); "
              f"2 threads {min(wall) * 1e6:.0f} us wall a block (median {statistics.median(wall) * 1e6:.0f})")
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
