"""Profile normcli with py-spy (native frames, all threads, idle included) and summarize where time goes.

    python benchmarks/profile_normcli.py [--py-spy PATH] [--data DIR] [--only PATTERN] [--reuse]

Uses the data benchmarks/run.py made (run it once first). For each case it writes the raw samples to
DATA/profiles/CASE.txt (flamegraph.pl folds them into an SVG) and prints, per thread: its share of
samples waiting for the GIL or a lock, reading, writing, collecting garbage, importing or computing; the leaf functions it computes in, and the
normcli functions its samples are under (the deepest normcli frame of each sample).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# What a sample's stack says the thread is doing, first match wins.
STATES = (("waits for the GIL", re.compile(r"take_gil|pthread_cond_timedwait")),  # take_gil is inlined
          ("waits on a lock/queue", re.compile(r"PyThread_acquire_lock|sem_wait|sem_clockwait")),
          ("reads", re.compile(r"\bread \(libc|pread64 \(libc")),
          ("writes", re.compile(r"\bwrite \(libc|pwrite64 \(libc")),
          ("collects garbage", re.compile(r"gc_collect_main")),
          ("imports", re.compile(r"_find_and_load")))


def cases(data: Path, scratch: Path) -> dict[str, tuple]:
    f32 = str(data / "f32_rgb.npy")
    return {
        "stats-global-bins0": ("stats", f32, "--per", "global", "--bins", "0"),
        "stats-global-bins30": ("stats", f32, "--per", "global"),
        "standardize-quiet": ("standardize", f32, "-o", str(scratch / "out.npy"), "--quiet", "--force"),
        "stats-jpegs-torchvision": ("stats", str(data / "jpegs"), "--format", "torchvision"),
    }


def summarize(raw: Path, top: int = 8) -> str:
    """Per thread: samples, what it does (waits, reads, ...), top leaf functions and normcli frames
    of the samples where it computes."""
    states: dict[str, Counter] = defaultdict(Counter)
    leaves: dict[str, Counter] = defaultdict(Counter)
    owners: dict[str, Counter] = defaultdict(Counter)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread, frames, n = frames[0].split(":")[0], frames[1:], int(count)  # "thread (ID)", later named
        state = next((name for name, pattern in STATES if pattern.search(stack)), "computes")
        states[thread][state] += n
        owner = next((f for f in reversed(frames) if "(normcli/" in f), "(outside normcli)")
        owners[thread][re.sub(r":\d+\)", ")", owner)] += n
        if state == "computes" and frames:
            leaves[thread][re.sub(r":\d+\)", ")", frames[-1])] += n
    total = sum(sum(c.values()) for c in states.values())
    lines = []
    for thread, counts in sorted(states.items(), key=lambda kv: -sum(kv[1].values())):
        n = sum(counts.values())
        if n < total * 0.02:
            continue
        lines.append(f"  {thread}: {n} samples: " + ", ".join(f"{s} {c / n:.0%}" for s, c in counts.most_common()))
        lines += [f"    computes in {c / n:5.1%}  {f[:100]}" for f, c in leaves[thread].most_common(top)]
        lines += [f"    under       {c / n:5.1%}  {f[:100]}" for f, c in owners[thread].most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "/work/venv-bench/bin/py-spy")
    parser.add_argument("--data", type=Path, default=HERE / "data")
    parser.add_argument("--only", metavar="PATTERN")
    parser.add_argument("--reuse", action="store_true", help="summarize the raw files already there")
    parser.add_argument("--rate", type=int, default=200, help="samples per second [default: 200]")
    args = parser.parse_args()
    out = args.data / "profiles"
    out.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    for name, cmd in cases(args.data, out).items():
        if args.only and not re.search(args.only, name):
            continue
        raw = out / f"{name}.txt"
        if args.reuse and raw.exists():
            print(f"{name}: normcli {' '.join(cmd)}  (earlier samples)")
            print(summarize(raw))
            continue
        start = time.perf_counter()
        subprocess.run([args.py_spy, "record", "--native", "--idle", "--threads", "-r", str(args.rate), "-f", "raw",
                        "-o", str(raw), "--", sys.executable, "-m", "normcli", *cmd], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"{name}: normcli {' '.join(cmd)}  ({time.perf_counter() - start:.2f} s under py-spy; "
              f"load {os.getloadavg()[0]:.2f})")
        print(summarize(raw))
    (out / "out.npy").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
