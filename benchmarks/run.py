"""Time normcli against the tools and recipes it replaces, side by side in one run.

    python benchmarks/run.py [--small] [--repeat 5] [--only PATTERN] [--data DIR] [--markdown FILE]
                             [--gib 1] [--fast]

Makes its data in --data (default benchmarks/data, or benchmarks/data-small with --small; reused when
present): a float32 and a uint8 (N, 64, 64, 3) .npy of 1 GiB each (64 MiB with --small), and 2,000
JPEGs and 2,000 PNGs of 256x256 RGB photo-like content (200 with --small). Every command runs as its
own process after an `os.sync()`, on a warm page cache, --repeat times (3 at most for a command whose
first run took over 30 s); a row shows the best wall time. Peak RSS is the larger of the process's own
max RSS (GNU time, else os.wait4) and the summed RSS of its process tree sampled every 20 ms (pools and DataLoader
workers count); both count file pages a process maps. normcli's numbers are checked against each
baseline's (mean/var, or the output arrays/images): a wrong result is never "met".

--gib sizes the float32 array (f32_rgb_{N}g.npy past 1). --fast runs the float32 cases in four variants
taking turns (interleaved): the numpy kernels (NORMCLI_COMPILED=0), the [fast] compiled kernels forced on
with a cold compile cache (emptied before every run) and with a warm one, and the default (compiled past
the size threshold) with a warm cache; the CPU time of each best run is listed below the table.

The cases (ids for --only): help, f32-global-bins0, f32-channel-bins0, f32-global-bins30, u8-channel,
standardize-fit, standardize-stats-from, standardize-report, dir-{jpeg,png}-{torchvision,stats},
dir-png-normalize, and engine-{processes,dask}-{stats,standardize} against --engine threads, which
run only once `normcli stats --help` mentions --engine. The DataLoader baseline is skipped without
torch, mogrify without ImageMagick. The table (markdown, for the README) goes to stdout, progress to
stderr. The baselines are scripts in benchmarks/baselines/, each runnable by itself. normcli runs from this
checkout (PYTHONPATH = the repository root) with the Python running this script.
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BASELINES = HERE / "baselines"
PY = sys.executable
NORMCLI = (PY, "-m", "normcli")
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
ENV.pop("PYTHONDONTWRITEBYTECODE", None)  # normcli byte-compiled, as pip installs it (see byte_compile)
MAX_RSS_MIB = 128  # issue 14: peak RSS on every normcli case
LONG_RUN_S = 30  # commands slower than this on their first run are repeated 3 times at most
RTOL = 1e-6  # mean/var against a float64 baseline
TORCHVISION_TOL = 1e-3  # the Normalize(...) line prints 4 decimals
Z_TOL = 1e-5  # standardized outputs against the numpy script's, in units of one std
LEVEL_TOL = 1  # 8-bit outputs against Pillow's, in levels
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
IMAGE_SIZE = 256


def byte_compile() -> None:
    """Compile the checkout's modules, as `pip install` does: where the shell sets
    PYTHONDONTWRITEBYTECODE, every run would compile them again (0.1-0.2 s of start-up)."""
    compileall.compile_dir(ROOT / "normcli", quiet=1)


# -- data ----------------------------------------------------------------------------------------------
def make_npy(path: Path, shape: tuple, fill) -> None:
    """Write `fill(rng, n_samples)` blocks into a .npy of `shape`, unless one of that shape is there."""
    if path.exists() and np.load(path, mmap_mode="r").shape == shape:
        return
    print(f"writing {path.name} {shape} ...", file=sys.stderr)
    rng = np.random.default_rng(0)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=fill(rng, 1).dtype, shape=shape)
    for i in range(0, shape[0], 2048):
        out[i : i + 2048] = fill(rng, len(out[i : i + 2048]))
    out.flush()
    del out


def photo(seed: int) -> np.ndarray:
    """A 256x256 RGB uint8 image that compresses like a photo: a colour gradient, 1/f texture shared by
    the channels (natural images have a ~1/f amplitude spectrum), a little colour texture and sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:1 : IMAGE_SIZE * 1j, 0:1 : IMAGE_SIZE * 1j]
    colours = rng.uniform(40, 215, (3, 3))
    base = colours[:, 0, None, None] + (colours[:, 1, None, None] - colours[:, 0, None, None]) * x \
        + (colours[:, 2, None, None] - colours[:, 0, None, None]) * y * 0.5
    freq = np.fft.fftfreq(IMAGE_SIZE)
    radius = np.hypot(freq[:, None], freq[None, :])
    radius[0, 0] = np.inf
    texture = np.fft.ifft2(np.fft.fft2(rng.standard_normal((4, IMAGE_SIZE, IMAGE_SIZE))) / radius).real
    texture /= texture.std(axis=(1, 2), keepdims=True)
    image = base + 28 * texture[:1] + 6 * texture[1:] + rng.normal(0, 2, (3, IMAGE_SIZE, IMAGE_SIZE))
    return np.clip(np.rint(np.moveaxis(image, 0, -1)), 0, 255).astype(np.uint8)


def save_photo(job: tuple[int, Path, Path]) -> None:
    from PIL import Image

    seed, jpeg, png = job
    image = Image.fromarray(photo(seed))
    image.save(jpeg, quality=90)
    image.save(png)


def make_images(jpegs: Path, pngs: Path, count: int) -> None:
    """`count` JPEGs and the same images as PNGs, unless both folders already hold that many."""
    if all(d.is_dir() and len(list(d.iterdir())) == count for d in (jpegs, pngs)):
        return
    print(f"writing {count} JPEGs and {count} PNGs ...", file=sys.stderr)
    for folder in (jpegs, pngs):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    with Pool(2) as pool:
        pool.map(save_photo, [(i, jpegs / f"{i:05d}.jpg", pngs / f"{i:05d}.png") for i in range(count)], 16)


def warm(path: Path) -> None:
    """Read every file once so the timings see a warm page cache."""
    for p in [path] if path.is_file() else sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                while f.read(16 << 20):
                    pass


def size_mib(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


# -- measuring -----------------------------------------------------------------------------------------
def tree_rss_kib(pid: int, *, skip_root: bool = False) -> int:
    """Summed resident set of `pid` (unless `skip_root`) and all its descendants, now."""
    total, stack = 0, [str(pid)]
    while stack:
        p = stack.pop()
        try:
            if p != str(pid) or not skip_root:
                with open(f"/proc/{p}/statm") as f:
                    total += int(f.read().split()[1]) * PAGE_KIB
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack += f.read().split()
        except (OSError, IndexError, ValueError):
            pass
    return total


@dataclass
class Timing:
    seconds: float  # best wall time
    rss_mib: float  # largest peak RSS over the runs
    stdout: str  # of the last run
    runs: int
    cpu: float = 0.0  # user + system CPU seconds of the fastest run (its process tree)


def run_once(cmd: tuple, clean: tuple[Path, ...], env: dict | None = None) -> tuple[float, int, str, float]:
    """One run of `cmd` (with `env` added to ENV): (wall seconds, peak RSS KiB, stdout, CPU seconds);
    exits on failure.

    The command runs under GNU time when it exists: a child forked from this (large) process would
    report this process's RSS as its own ru_maxrss, which exec does not reset.
    """
    for path in clean:
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    os.sync()  # no write-back of an earlier run's output competes with this one
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
            tempfile.NamedTemporaryFile("r") as report:
        wrapped = (GNU_TIME, "-f", "%M", "-o", report.name, *cmd) if GNU_TIME else cmd
        start = time.perf_counter()
        proc = subprocess.Popen(wrapped, stdout=out, stderr=err, env={**ENV, **(env or {})})
        peak, done = [0], threading.Event()

        def sample() -> None:
            while not done.wait(0.02):
                peak[0] = max(peak[0], tree_rss_kib(proc.pid, skip_root=bool(GNU_TIME)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            sys.exit(f"failed ({proc.returncode}): {' '.join(map(str, cmd[:12]))}\n{err.read()[-3000:]}")
        own = int(report.read().split()[-1]) if GNU_TIME else usage.ru_maxrss
        return seconds, max(peak[0], own), out.read(), usage.ru_utime + usage.ru_stime


TIMINGS: dict[tuple, Timing] = {}


def measure(cmd: tuple, repeat: int, clean: tuple[Path, ...] = ()) -> Timing:
    """Best of `repeat` runs of `cmd` (each as its own process), measured once per run of this script."""
    if cmd not in TIMINGS:
        TIMINGS[cmd] = measure_interleaved({"": ((), clean)}, cmd, repeat)[""]
    return TIMINGS[cmd]


def measure_interleaved(variants: dict, cmd: tuple, repeat: int) -> dict[str, Timing]:
    """Best of `repeat` runs of `cmd` in each variant {name: (env items, paths removed before each
    run)}, the variants taking turns (one run each a round), so that a change of the machine's load
    falls on all of them alike."""
    found = {}  # name: (best seconds, CPU seconds of that run, peak KiB, stdout)
    rounds = 0
    while rounds < repeat:
        for name, (env, clean) in variants.items():
            seconds, kib, stdout, cpu = run_once(cmd, clean, dict(env))
            best = found.get(name, (float("inf"), 0.0, 0, ""))
            found[name] = (min(best[0], seconds), cpu if seconds < best[0] else best[1], max(best[2], kib), stdout)
        rounds += 1
        if rounds == 1 and min(f[0] for f in found.values()) > LONG_RUN_S:
            repeat = min(repeat, 3)
    return {name: Timing(best, kib / 1024, stdout, repeat, cpu) for name, (best, cpu, kib, stdout) in found.items()}


def compiled_variants(scratch: Path) -> dict:
    """normcli without and with the [fast] kernels (normcli/compiled.py): off; forced on with a
    cache emptied before every run (the first run after an install); forced on with a warm cache;
    and as a user gets them (on past the size threshold), warm cache."""
    cold, warm_cache = scratch / "numba-cold", scratch / "numba-warm"
    return {"numpy": ((("NORMCLI_COMPILED", "0"),), ()),
            "[fast] cold cache": ((("NORMCLI_COMPILED", "1"), ("NUMBA_CACHE_DIR", str(cold))), (cold,)),
            "[fast] warm cache": ((("NORMCLI_COMPILED", "1"), ("NUMBA_CACHE_DIR", str(warm_cache))), ()),
            "[fast] auto, warm cache": ((("NUMBA_CACHE_DIR", str(warm_cache)),), ())}


FAST_CASES = ("f32-global-bins0", "f32-channel-bins0", "f32-global-bins30", "standardize-stats-from",
              "standardize-report")
# The targets with [fast] at 4 GiB: (case, baseline): ratio
FAST_4GIB_TARGETS = {("f32-global-bins0", "careful kernel (global)"): 0.8,
                     ("f32-global-bins30", "`cat` > /dev/null"): 3.0}


# -- checking the numbers ----------------------------------------------------------------------------
def moments_of_report(stdout: str) -> dict:
    """{"mean": [...], "var": [...]} of a normcli --format json report."""
    rows = json.loads(stdout)["rows"]
    return {"mean": [r["mean"] for r in rows], "var": [r["var"] for r in rows]}


def moments_of_torchvision(stdout: str) -> dict:
    """{"mean", "var"} in 0..255 units of a `Normalize(mean=(...), std=(...))` line."""
    found = re.search(r"mean=\(([^)]*)\),\s*std=\(([^)]*)\)", stdout)
    mean, std = (np.array([float(v) for v in g.split(",") if v.strip()]) for g in found.groups())
    return {"mean": (mean * 255).tolist(), "var": ((std * 255) ** 2).tolist()}


def relative_difference(ours: dict, theirs: dict) -> float:
    """Largest relative difference of mean and var, inf when the shapes differ."""
    worst = 0.0
    for stat in ("mean", "var"):
        a, b = np.asarray(ours[stat], float), np.asarray(theirs[stat], float)
        if a.shape != b.shape:
            return float("inf")
        worst = max(worst, float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))))
    return worst


def array_difference(path: Path, reference: Path) -> float:
    """Largest absolute difference of two .npy arrays of one shape, read 16 MiB at a time."""
    a, b = np.load(path, mmap_mode="r"), np.load(reference, mmap_mode="r")
    if a.shape != b.shape:
        return float("inf")
    a, b = a.reshape(-1), b.reshape(-1)
    step = 4 << 20
    return max(float(np.max(np.abs(a[i : i + step] - b[i : i + step].astype(np.float64)))) for i in range(0, len(a), step))


def image_difference(folder: Path, reference: Path) -> float:
    """Largest difference, in levels, between same-named images of two folders (inf if the lists differ)."""
    from PIL import Image

    ours, theirs = sorted(p.relative_to(folder) for p in folder.rglob("*.png")), \
        sorted(p.relative_to(reference) for p in reference.rglob("*.png"))
    if not ours or ours != theirs:
        return float("inf")
    return max(float(np.max(np.abs(np.asarray(Image.open(folder / p), np.int16)
                                   - np.asarray(Image.open(reference / p), np.int16)))) for p in ours)


# -- the cases -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Baseline:
    name: str
    cmd: tuple
    max_ratio: float | None  # the target on normcli / baseline; None: shown for reference
    compare: bool = False  # prints {"mean", "var"} to check normcli's against
    clean: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Case:
    id: str  # what --only matches
    label: str  # the table's first column
    args: tuple  # normcli's arguments
    baselines: tuple[Baseline, ...]
    check: str | None = None  # "json": rerun with --format json; "torchvision"; "z": output vs reference; "png"
    output: Path | None = None
    clean: tuple[Path, ...] = field(default=())


def script(name: str, *args) -> tuple:
    return (PY, str(BASELINES / name), *map(str, args))


def build_cases(data: Path, scratch: Path, engines: bool, f32: Path) -> list[Case]:
    u8, jpegs, pngs = data / "u8_rgb.npy", data / "jpegs", data / "pngs"
    out, copy, saved = scratch / "out.npy", scratch / "copy.npy", scratch / "s.json"
    kernel = {per: Baseline(f"careful kernel ({per})", script("careful_kernel.py", f32, per), None, True)
              for per in ("global", "channel")}
    cat = Baseline("`cat` > /dev/null", ("sh", "-c", f"cat '{f32}' > /dev/null"), None)
    cp = Baseline("`cp`", ("cp", str(f32), str(copy)), None, clean=(copy,))
    numpy_load = {per: Baseline(f"np.load + mean/var ({per})", script("numpy_load.py", f32, per), None, True)
                  for per in ("global", "channel")}
    sklearn = {per: Baseline(f"StandardScaler.partial_fit ({per})", script("sklearn_partial_fit.py", f32, per),
                             None, True) for per in ("global", "channel")}
    two_pass = Baseline("numpy 2-pass script", script("numpy_standardize.py", f32, scratch / "np_z.npy"), None,
                        clean=(scratch / "np_z.npy",))

    def target(base: Baseline, ratio: float) -> Baseline:
        return Baseline(base.name, base.cmd, ratio, base.compare, base.clean)

    def folder_baselines(folder: Path, decode_ratio: float) -> tuple[Baseline, ...]:
        return (Baseline("Pillow decode pool (2 proc)", script("pil_decode_pool.py", folder), decode_ratio),
                Baseline("PIL.ImageStat (2 proc)", script("pil_imagestat_pool.py", folder), 1.0, True),
                Baseline("torch Dataset + DataLoader(2)", script("torch_dataloader.py", folder), 1.0, True))

    stats = ("stats", str(f32))
    cases = [
        Case("help", "`normcli --help` (start-up)", ("--help",),
             (Baseline("`python -c 'import numpy, click, rich'`", (PY, "-c", "import numpy, click, rich"), None),)),
        Case("f32-global-bins0", "`stats --per global --bins 0`", (*stats, "--per", "global", "--bins", "0"),
             (target(kernel["global"], 1.1), cat, numpy_load["global"], sklearn["global"]), "json"),
        Case("f32-channel-bins0", "`stats --per channel --bins 0`", (*stats, "--per", "channel", "--bins", "0"),
             (target(kernel["channel"], 1.1), numpy_load["channel"], sklearn["channel"]), "json"),
        Case("f32-global-bins30", "`stats --per global` (30 bins)", (*stats, "--per", "global"),
             (target(kernel["global"], 2.0), cat), "json"),
        Case("u8-channel", "`stats` uint8 RGB per channel", ("stats", str(u8), "--per", "channel"),
             (Baseline("np.bincount per channel, 1 MiB chunks", script("bincount_channels.py", u8), 0.5, True),),
             "json"),
        Case("standardize-fit", "`standardize -o out.npy --quiet`", ("standardize", str(f32), "-o", str(out), "--quiet"),
             (target(cp, 2.5), two_pass), "z", out, (out,)),
        Case("standardize-stats-from", "`standardize --stats-from s.json -o out.npy --quiet`",
             ("standardize", str(f32), "--stats-from", str(saved), "-o", str(out), "--quiet"),
             (target(cp, 1.5),), "z", out, (out,)),
        Case("standardize-report", "`standardize -o out.npy` (default report)", ("standardize", str(f32), "-o", str(out)),
             (target(cp, 3.0),), "z", out, (out,)),
    ]
    for kind, folder in (("JPEG", jpegs), ("PNG", pngs)):
        n = len(list(folder.iterdir())) if folder.exists() else 0
        cases += [
            Case(f"dir-{kind.lower()}-torchvision", f"`stats DIR --format torchvision`, {n} {kind}s",
                 ("stats", str(folder), "--format", "torchvision"), folder_baselines(folder, 1.2), "torchvision"),
            Case(f"dir-{kind.lower()}-stats", f"`stats DIR` (default, histograms), {n} {kind}s", ("stats", str(folder)),
                 folder_baselines(folder, 1.5), "json"),
        ]
    normalized, pillow_out, mogrified = scratch / "normcli_png", scratch / "pillow_png", scratch / "mogrify_png"
    n = len(list(pngs.iterdir())) if pngs.exists() else 0
    normalize_baselines = [Baseline("Pillow 2-pass min-max (2 proc)", script("pil_minmax_png.py", pngs, pillow_out), 1.1,
                                    clean=(pillow_out,))]
    if shutil.which("mogrify"):
        normalize_baselines.append(Baseline("`mogrify -normalize` (a copy)",
                                            ("mogrify", "-normalize", *map(str, sorted(mogrified.glob("*.png")))), None))
    cases.append(Case("dir-png-normalize", f"`normalize DIR -o OUT --quiet`, {n} PNGs → PNGs",
                      ("normalize", str(pngs), "-o", str(normalized), "--quiet"), tuple(normalize_baselines), "png",
                      normalized, (normalized,)))
    if engines:
        threads = {}
        for engine in ("threads", "processes", "dask"):
            for name, args, check, output in (
                    ("stats", (*stats, "--per", "global", "--format", "json"), "json", None),
                    ("standardize", ("standardize", str(f32), "-o", str(out), "--quiet"), "z", out)):
                full = (*args, "--engine", engine)
                if engine == "threads":
                    threads[name] = Baseline("normcli --engine threads", (*NORMCLI, *full), None, check == "json",
                                             (out,) if output else ())
                    continue
                ratio = 1.5 if engine == "dask" else 1.0 if name == "stats" else None
                base = threads[name]
                cases.append(Case(f"engine-{engine}-{name}", f"`{' '.join(args[:1] + args[2:])}` `--engine {engine}`"
                                  .replace(str(out), "out.npy"), full,
                                  (Baseline(base.name, base.cmd, ratio, base.compare, base.clean),), check, output,
                                  (out,) if output else ()))
    return cases


# -- reporting -----------------------------------------------------------------------------------------
def machine(data: Path) -> str:
    import PIL

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    ram = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")) / 2**20
    try:
        import torch

        extra = f", torch {torch.__version__}"
    except ImportError:
        extra = ", no torch"
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "?"
    return (f"machine: {cpu}, {os.cpu_count()} cores, {ram:.1f} GiB RAM, Linux {platform.release()}; "
            f"Python {platform.python_version()}, numpy {np.__version__}, Pillow {PIL.__version__}{extra}; "
            f"normcli at {commit}")


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="64 MiB arrays and 200 images, to check the script")
    parser.add_argument("--data", type=Path, help="data folder [default: benchmarks/data or data-small]")
    parser.add_argument("--repeat", type=int, default=5, help="runs per command, best taken [default: 5]")
    parser.add_argument("--only", metavar="PATTERN", help="run the cases whose id matches this regex "
                                                         "(ids: f32-global-bins0, dir-png-normalize, engine-dask-stats, ...)")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument("--gib", type=int, default=1, help="GiB of the float32 array [default: 1]")
    parser.add_argument("--fast", action="store_true", help="run the float32 cases without and with the [fast] "
                        "kernels (cold and warm compile cache), interleaved")
    args = parser.parse_args()
    byte_compile()

    data = args.data or HERE / ("data-small" if args.small else "data")
    data.mkdir(parents=True, exist_ok=True)
    scratch = data / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    nbytes, n_images = (64 << 20, 200) if args.small else (1 << 30, 2000)
    f32, u8, jpegs, pngs = data / "f32_rgb.npy", data / "u8_rgb.npy", data / "jpegs", data / "pngs"
    if args.gib != 1:
        f32 = data / f"f32_rgb_{args.gib}g.npy"
    sample = 64 * 64 * 3
    make_npy(f32, ((nbytes * args.gib) // (sample * 4), 64, 64, 3), lambda rng, n: (
        rng.standard_normal((n, 64, 64, 3), np.float32) * np.float32(17.5) + np.array([26, 36, 46], np.float32)))
    make_npy(u8, (nbytes // sample, 64, 64, 3), lambda rng, n: rng.integers(0, 256, (n, 64, 64, 3), np.uint8))
    if not args.only or re.search(args.only, "dir-jpeg-stats dir-png-torchvision dir-png-normalize"):
        make_images(jpegs, pngs, n_images)
    if shutil.which("mogrify") and pngs.exists():
        shutil.copytree(pngs, scratch / "mogrify_png")

    help_text = subprocess.run([*NORMCLI, "stats", "--help"], capture_output=True, text=True, env=ENV).stdout
    engines = "--engine" in help_text
    cases = [c for c in build_cases(data, scratch, engines, f32) if not args.only or re.search(args.only, c.id)]
    if not cases:
        sys.exit(f"no case matches {args.only!r}")
    if importlib.util.find_spec("torch") is None:
        cases = [Case(c.id, c.label, c.args, tuple(b for b in c.baselines if "torch" not in b.name), c.check,
                      c.output, c.clean) for c in cases]
        print("torch is not installed: the DataLoader baseline is skipped", file=sys.stderr)

    needs_z = any(c.check == "z" for c in cases)
    if needs_z or any("stats-from" in c.id for c in cases):
        subprocess.run([*NORMCLI, "stats", str(f32), "--per", "global", "--bins", "0", "--save",
                        str(scratch / "s.json"), "--quiet"], check=True, env=ENV)
    reference_z = scratch / "reference_z.npy"
    if needs_z:
        subprocess.run(script("numpy_standardize.py", f32, reference_z), check=True)
    for path in (f32, u8, jpegs, pngs):
        if path.exists():
            warm(path)

    notes = [machine(data),
             f"data: {f32.name} {size_mib(f32):.0f} MiB, {u8.name} {size_mib(u8):.0f} MiB, both (N, 64, 64, 3); "
             f"{n_images} JPEGs {size_mib(jpegs):.0f} MiB and {n_images} PNGs {size_mib(pngs):.0f} MiB, "
             f"{IMAGE_SIZE}x{IMAGE_SIZE} RGB",
             f"best of {args.repeat} (of 3 for commands over {LONG_RUN_S} s), each command its own process, warm cache; "
             f"peak RSS: the command's own max RSS ({'GNU time' if GNU_TIME else 'os.wait4'}) or its process tree's sampled sum, whichever is larger",
             f"{load()} before"]
    load_line = len(notes) - 1
    if not engines:
        notes.append("engines: `normcli stats --help` has no --engine yet: the engine cases are skipped")
    if os.getloadavg()[0] > 1.5:
        notes.append("WARNING: the load average is above 1.5: other work shares the machine")
    for line in notes:
        print(line, file=sys.stderr)

    rows, checks = [], []
    variants = compiled_variants(scratch) if args.fast else {}
    if variants:  # the warm cache: one run that compiles into it
        subprocess.run([*NORMCLI, "stats", str(f32), "--quiet"], check=True,
                       env={**ENV, **dict(variants["[fast] warm cache"][0])})
    cpu_notes = []
    for case in cases:
        print(f"{case.id}: {load()}", file=sys.stderr)
        if variants and case.id in FAST_CASES:
            ran = measure_interleaved({name: (env, (*clean, *case.clean)) for name, (env, clean) in variants.items()},
                                      (*NORMCLI, *case.args), args.repeat)
        else:
            ran = {"": measure((*NORMCLI, *case.args), args.repeat, case.clean)}
        ours = next(iter(ran.values()))
        cpu_notes += [f"{case.id} {name or 'normcli'}: {t.seconds:.2f} s wall, {t.cpu:.2f} s CPU" for name, t in ran.items()]
        if case.check == "json":
            checked_env = dict(variants["[fast] warm cache"][0]) if len(ran) > 1 else None  # the compiled numbers
            ours_moments = moments_of_report(run_once((*NORMCLI, *case.args, "--format", "json"), case.clean,
                                                      checked_env)[2])
        elif case.check == "torchvision":
            ours_moments = moments_of_torchvision(ours.stdout)
        else:
            ours_moments = None
        checked = []  # (what, difference, tolerance)
        if case.check == "z":  # the last timed run's output is still there
            checked.append(("output vs the numpy 2-pass script's, max |Δ| in std", array_difference(case.output, reference_z), Z_TOL))
        timings = []
        for base in case.baselines:
            print(f"  {base.name}", file=sys.stderr)
            timings.append(measure(base.cmd, args.repeat, base.clean))
            if case.check == "png" and "Pillow" in base.name:
                checked.append((f"images vs {base.name}'s, max |Δ| in levels",
                                image_difference(case.output, scratch / "pillow_png"), LEVEL_TOL))
            if base.compare and ours_moments is not None:
                theirs = json.loads(timings[-1].stdout)  # a baseline's {"mean", "var"}, or normcli's own report
                theirs = moments_of_report(timings[-1].stdout) if "rows" in theirs else theirs
                checked.append((f"mean/var vs {base.name}, max rel diff", relative_difference(ours_moments, theirs),
                                TORCHVISION_TOL if case.check == "torchvision" else RTOL))
        wrong = any(not diff <= tol for _, diff, tol in checked)
        checks += [f"{case.id}: {what} {diff:.1e} (≤ {tol:g}) {'ok' if diff <= tol else 'WRONG'}"
                   for what, diff, tol in checked]
        for base, theirs in zip(case.baselines, timings):
            for name, ours in ran.items():
                ratio = ours.seconds / theirs.seconds
                max_ratio = base.max_ratio
                if name.startswith("[fast]") and args.gib >= 4:
                    max_ratio = FAST_4GIB_TARGETS.get((case.id, base.name), max_ratio)
                if max_ratio is None:
                    goal, met = "—", "—"
                else:
                    goal = (f"≤ {max_ratio:g}×" if max_ratio != 1 else "< 1×") + f", ≤ {MAX_RSS_MIB} MiB"
                    ok = ratio <= max_ratio and ours.rss_mib <= MAX_RSS_MIB and not wrong
                    met = "yes" if ok else "**NO**" + (" (wrong result)" if wrong else "")
                rows.append(f"| {case.label}{' ' + name if name else ''} | {ours.seconds:.2f} | {base.name} | "
                            f"{theirs.seconds:.2f} | {ratio:.2f}× | {goal} | {met} | {ours.rss_mib:.0f} / {theirs.rss_mib:.0f} |")
    notes[load_line] += f", {load()} after"

    table = ["| case | normcli s | baseline | baseline s | ratio | target | met? | peak RSS MiB normcli / baseline |",
             "|---|---:|---|---:|---:|---|---|---:|", *rows]
    report = "\n".join([*table, "", *(f"- {line}" for line in notes), "", "Checks:", *(f"- {c}" for c in checks),
                        "", "CPU time (user + system, of each fastest run):", *(f"- {c}" for c in cpu_notes)])
    print(report)
    if args.markdown:
        args.markdown.write_text(report + "\n")
    shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
