"""Time normcli against the plain numpy / scikit-learn / imageio / cp recipes it replaces.

    /work/venv/bin/python benchmarks/run.py [--size-gib 1.0] [--keep]

Generates its data in benchmarks/data/ (gitignored; reused when it already has the right shape,
deleted afterwards unless --keep): a float32 (N, 64, 64, 1) normal array, a uint8 (N, 64, 64, 3)
array, both of --size-gib, and 300 random-ish 256x256 RGB PNGs. Every command runs as its own
process, 3 times (`normcli --help` 10 times), each run after a sync, once the page cache was
warmed by reading each file; the table shows the best wall time and the largest peak RSS. Peak
RSS comes from GNU time -v ("Maximum resident set size", i.e. wait4's ru_maxrss) when
/usr/bin/time exists, else from os.wait4 directly; either way it counts file pages the process
maps (np.load(mmap_mode="r")) as well as its own memory. normcli's mean/var are checked against
each baseline that prints them (a loud MISMATCH line if they differ by more than 1e-6 relative).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from functools import cache
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
NORMCLI = str(Path(sys.executable).parent / "normcli")
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
PY = sys.executable
RTOL = 1e-6
N_PNGS, PNG_SIZE = 300, 256

# The baselines, each run as `python -c RECIPE FILE`; those that can print {"mean": [...], "var": [...]}.
NAIVE_GLOBAL = """import sys, json, numpy as np
a = np.load(sys.argv[1]); m = a.mean(dtype=np.float64); v = a.var(dtype=np.float64)
print(json.dumps({"mean": [float(m)], "var": [float(v)]}))"""
NAIVE_CHANNEL = """import sys, json, numpy as np
a = np.load(sys.argv[1]); m = a.mean(axis=(0, 1, 2), dtype=np.float64); v = a.var(axis=(0, 1, 2), dtype=np.float64)
print(json.dumps({"mean": m.tolist(), "var": v.tolist()}))"""
SKLEARN_GLOBAL = """import sys, json, numpy as np
from sklearn.preprocessing import StandardScaler
a = np.load(sys.argv[1], mmap_mode="r"); s = StandardScaler()
for i in range(0, len(a), 1024): s.partial_fit(a[i:i + 1024].reshape(-1, 1))
print(json.dumps({"mean": s.mean_.tolist(), "var": s.var_.tolist()}))"""
IMAGEIO_LOOP = """import sys, json, pathlib, numpy as np, imageio.v3 as iio
s = s2 = np.zeros(3, np.uint64); n = 0
for p in sorted(pathlib.Path(sys.argv[1]).glob("*.png")):
    a = iio.imread(p); s = s + a.sum(axis=(0, 1), dtype=np.uint64)
    s2 = s2 + (a.astype(np.uint64) ** 2).sum(axis=(0, 1)); n += a.shape[0] * a.shape[1]
s, s2 = [int(x) for x in s], [int(x) for x in s2]  # exact: var = (n s2 - s^2) / n^2
print(json.dumps({"mean": [x / n for x in s], "var": [(n * q - x * x) / n / n for x, q in zip(s, s2)]}))"""


# -- data ------------------------------------------------------------------------------------------
def make_npy(path: Path, shape: tuple, fill) -> None:
    """Write `fill(rng, n_samples)` blocks into a .npy of `shape`, unless one of that shape is there."""
    if path.exists() and np.load(path, mmap_mode="r").shape == shape:
        return
    print(f"writing {path.name} {shape} ...", file=sys.stderr)
    rng = np.random.default_rng(0)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=fill(rng, 1).dtype, shape=shape)
    for i in range(0, shape[0], 4096):
        out[i:i + 4096] = fill(rng, len(out[i:i + 4096]))
    out.flush()
    del out


def make_pngs(folder: Path) -> None:
    """N_PNGS RGB PNGs: smooth gradients plus noise (compress like photos, not like pure noise)."""
    if folder.is_dir() and len(list(folder.glob("*.png"))) == N_PNGS:
        return
    from PIL import Image

    print(f"writing {N_PNGS} PNGs ...", file=sys.stderr)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:1:PNG_SIZE * 1j, 0:1:PNG_SIZE * 1j]
    for i in range(N_PNGS):
        f = rng.uniform(-2, 2, (3, 2))
        phase = rng.uniform(0, 2 * np.pi, 3)
        image = 127.5 + 100 * np.sin(2 * np.pi * (f[:, :1, None] * y + f[:, 1:, None] * x) + phase[:, None, None])
        image = np.moveaxis(image, 0, -1) + rng.normal(0, 12, (PNG_SIZE, PNG_SIZE, 3))
        Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8)).save(folder / f"{i:04d}.png")


def warm(path: Path) -> None:
    """Read every file once so the timings see a warm page cache."""
    for p in [path] if path.is_file() else sorted(path.iterdir()):
        with open(p, "rb") as f:
            while f.read(16 << 20):
                pass


# -- measuring ---------------------------------------------------------------------------------------
@cache
def measure(cmd: tuple, repeat: int = 3) -> tuple[float, float, str]:
    """Run `cmd` `repeat` times as its own process: (best wall seconds, max peak RSS MiB, last stdout)."""
    best, rss_kib = float("inf"), 0
    for _ in range(repeat):
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
                tempfile.NamedTemporaryFile("r") as report:
            wrapped = [GNU_TIME, "-v", "-o", report.name, *cmd] if GNU_TIME else list(cmd)
            os.sync()  # no write-back of an earlier run's output competes with this one
            start = time.perf_counter()
            proc = subprocess.Popen(wrapped, stdout=out, stderr=err)
            _, status, usage = os.wait4(proc.pid, 0)
            best = min(best, time.perf_counter() - start)
            proc.returncode = os.waitstatus_to_exitcode(status)
            if GNU_TIME:
                line = next(l for l in report.read().splitlines() if "Maximum resident set size" in l)
                rss_kib = max(rss_kib, int(line.rsplit(":", 1)[1]))
            else:
                rss_kib = max(rss_kib, usage.ru_maxrss)  # KiB on Linux
            out.seek(0)
            err.seek(0)
            if proc.returncode != 0:
                sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err.read()}")
            stdout = out.read()
    return best, rss_kib / 1024, stdout


def check(case: str, normcli_out: str, baseline_out: str, baseline: str) -> None:
    """normcli's JSON mean/var against the baseline's, each within RTOL relative."""
    rows = json.loads(normcli_out)["rows"]
    ours = {"mean": [r["mean"] for r in rows], "var": [r["var"] for r in rows]}
    theirs = json.loads(baseline_out)
    for stat in ("mean", "var"):
        a, b = np.array(ours[stat]), np.array(theirs[stat])
        err = np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)) if a.shape == b.shape else np.inf
        if not err <= RTOL:
            print(f"!!! MISMATCH in {case}: {stat} normcli {a.tolist()} vs {baseline} {b.tolist()} "
                  f"(rel err {err:.2e} > {RTOL:g}) !!!")
        else:
            print(f"  check {stat} vs {baseline}: rel err {err:.1e}", file=sys.stderr)


def machine() -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    ram = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")) / 2**20
    rss = "GNU time -v max RSS" if GNU_TIME else "os.wait4 ru_maxrss"
    return (f"machine: {cpu}, {os.cpu_count()} cores, {ram:.1f} GiB RAM; Python {platform.python_version()}, "
            f"numpy {np.__version__}; load average {os.getloadavg()[0]:.2f}; "
            f"peak RSS from {rss} (counts mapped file pages)")


# -- the cases ---------------------------------------------------------------------------------------
def cases(f32: Path, u8: Path, pngs: Path):
    """(case, normcli cmd, baseline name, baseline cmd, max ratio or None, max seconds or None,
    max RSS MiB or None, compare mean/var?)."""
    stats = (NORMCLI, "stats", "--format", "json")
    out, copy = str(DATA / "out.npy"), str(DATA / "copy.npy")
    rows = [
        ("stats f32 global --bins 0", (*stats, str(f32), "--per", "global", "--bins", "0"),
         "np.load + mean/var", (PY, "-c", NAIVE_GLOBAL, str(f32)), 0.4, None, 200, True),
        ("stats f32 global (30 bins)", (*stats, str(f32), "--per", "global"),
         "np.load + mean/var", (PY, "-c", NAIVE_GLOBAL, str(f32)), 0.4, None, 200, True),
        ("stats u8 RGB per channel", (*stats, str(u8), "--per", "channel"),
         "np.load + mean/var axis=(0,1,2)", (PY, "-c", NAIVE_CHANNEL, str(u8)), 0.5, None, 200, True),
        ("standardize f32 -> .npy", (NORMCLI, "standardize", str(f32), "-o", out, "--force", "--quiet"),
         "cp", ("cp", str(f32), copy), 2.0, None, 200, False),
        ("stats 300 PNGs per channel", (*stats, str(pngs), "--per", "channel"),
         "imageio loop, uint64 sums", (PY, "-c", IMAGEIO_LOOP, str(pngs)), 0.7, None, None, True),
        ("normcli --help (best of 10)", (NORMCLI, "--help"),
         "import numpy, click, rich", (PY, "-c", "import numpy, click, rich"), None, 0.3, None, False),
    ]
    try:
        import sklearn  # noqa: F401

        rows.insert(2, ("stats f32 global --bins 0", rows[0][1], "StandardScaler.partial_fit (mmap)",
                        (PY, "-c", SKLEARN_GLOBAL, str(f32)), None, None, None, True))
    except ImportError:
        pass
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gib", type=float, default=1.0, help="size of each .npy file [default: 1.0]")
    parser.add_argument("--keep", action="store_true", help="keep benchmarks/data/ afterwards")
    args = parser.parse_args()

    DATA.mkdir(exist_ok=True)
    f32, u8, pngs = DATA / "big_f32.npy", DATA / "u8_rgb.npy", DATA / "pngs"
    nbytes = args.size_gib * 2**30
    make_npy(f32, (int(np.ceil(nbytes / (64 * 64 * 4))), 64, 64, 1),
             lambda rng, n: rng.standard_normal((n, 64, 64, 1), np.float32) * np.float32(17.5) + np.float32(26))
    make_npy(u8, (int(np.ceil(nbytes / (64 * 64 * 3))), 64, 64, 3),
             lambda rng, n: rng.integers(0, 256, (n, 64, 64, 3), np.uint8))
    make_pngs(pngs)
    for path in (f32, u8, pngs):
        warm(path)

    print(machine())
    print(f"data: {f32.name} {f32.stat().st_size / 2**30:.2f} GiB, {u8.name} {u8.stat().st_size / 2**30:.2f} GiB, "
          f"{N_PNGS} PNGs {PNG_SIZE}x{PNG_SIZE} RGB {sum(p.stat().st_size for p in pngs.iterdir()) / 2**20:.0f} MiB\n")
    print("| case | normcli s | baseline | baseline s | ratio | target | normcli peak RSS MiB | baseline RSS MiB | met? |")
    print("|---|---:|---|---:|---:|---|---:|---:|---|")
    for case, ours, name, theirs, max_ratio, max_s, max_rss, compare in cases(f32, u8, pngs):
        print(f"  timing: {case} vs {name} ...", file=sys.stderr)
        repeat = 3 if max_s is None else 10
        t, rss, out = measure(ours, repeat)
        bt, brss, bout = measure(theirs, repeat)
        target = " ".join(filter(None, [max_ratio and f"≤ {max_ratio:g}×", max_s and f"≤ {max_s * 1000:g} ms",
                                        max_rss and f"≤ {max_rss} MiB"])) or "(reference)"
        met = ((max_ratio is None or t / bt <= max_ratio) and (max_s is None or t <= max_s)
               and (max_rss is None or rss <= max_rss))
        print(f"| {case} | {t:.3f} | {name} | {bt:.3f} | {t / bt:.2f} | {target} | {rss:.0f} | {brss:.0f} | "
              f"{'—' if target == '(reference)' else 'yes' if met else '**NO**'} |")
        if compare:
            check(case, out, bout, name)

    if not args.keep:
        shutil.rmtree(DATA)


if __name__ == "__main__":
    main()
