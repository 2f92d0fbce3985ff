"""Compiled, GIL-free kernels: the optional `[fast]` extra (numba), used only where they pay.

With numba installed these run compiled: the shifted sums of float32 moments (moments._shifted_sums),
the counting loop of the float histogram with histograms.py's margin test, and the quantile passes'
count of top bits (quantiles._top_counts). Their numbers are the numpy kernels': counts identical
(the same margin test decides which values np.histogram bins), float sums within the same tested
bound (chunks of a few thousand values summed in vectorized partial sums, the chunks' sums added up).

numba costs ~0.2-0.5 s to import and ~0.3 s a kernel to compile, less from a warm cache
(benchmarks/PROFILE.md), so a process turns them on only once the kernels have been handed
COLD_BYTES of values (WARM_BYTES when the cache holds them); small inputs and `--help` never import
numba. NORMCLI_COMPILED=1 turns them on from the first block, NORMCLI_COMPILED=0 off. A missing
numba, a failed compile or no writable cache folder leave the numpy kernels, with a note in the
`normcli` log (shown by --debug).
"""

from __future__ import annotations

import os
import threading

import numpy as np

# Measured (benchmarks/PROFILE.md, "Compiled kernels"): loading numba costs ~0.5 s of CPU and
# ~130 MiB of RSS (LLVM), and the kernels save 0.1-0.3 s of CPU a GiB, so they pay only some
# GiB after they are on; below these sizes a run stays within the numpy path's time and memory.
COLD_BYTES = 8 << 30
WARM_BYTES = 4 << 30
_CHUNK = 4096  # values a partial sum: its vectorized lanes add few enough values to stay exact enough

_lock = threading.Lock()
_ready: dict = {}  # name: the compiled kernel, or False when numba cannot give it
_numba = None  # the numba module once imported, False when it cannot be
_seen = 0  # bytes handed to the kernels before they were on
_warm = None


def kernel(name: str, nbytes: int):
    """The compiled kernel `name` (see _KERNELS) for a call on `nbytes` of data, or None for numpy."""
    global _seen
    mode = os.environ.get("NORMCLI_COMPILED", "")
    if mode == "0":
        return None
    found = _ready.get(name)
    if found is not None:
        return found or None
    _seen += nbytes  # unlocked: an estimate is all it needs
    if mode != "1" and _seen < (WARM_BYTES if _warm_cache() else COLD_BYTES):
        return None
    # Forced: wait for the compile. Otherwise other threads go on with numpy meanwhile.
    if not _lock.acquire(blocking=mode == "1"):
        return None
    try:
        if name not in _ready:
            _ready[name] = _compile(name)
    finally:
        _lock.release()
    return _ready[name] or None


def _cache_dir() -> str | None:
    """numba's cache folder: NUMBA_CACHE_DIR if set, else normcli's in the user's cache (or the
    temporary folder): the first that can be written; None if none can."""
    import tempfile

    given = os.environ.get("NUMBA_CACHE_DIR")
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    for folder in [given] if given else [os.path.join(home, "normcli", "numba"),
                                         os.path.join(tempfile.gettempdir(), f"normcli-numba-{os.getuid()}")]:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK | os.X_OK):
            return folder
    return None


def _warm_cache() -> bool:
    """Whether the cache folder holds compiled kernels of this module (of some normcli install)."""
    global _warm
    if _warm is None:
        import glob

        folder = _cache_dir()
        _warm = bool(folder and glob.glob(os.path.join(folder, "*", "compiled.*.nbi")))
    return _warm


def _compile(name: str):
    """numba's compiled `name`, tried on a small input (or loaded from the cache); False, with a note
    in the log, when numba is missing, cannot cache or fails."""
    import logging

    global _numba
    log = logging.getLogger("normcli")
    if _numba is False:
        return False
    try:
        if _numba is None:
            folder = _cache_dir()
            if folder is None:
                raise RuntimeError("no cache folder can be written (NUMBA_CACHE_DIR, ~/.cache, the temporary folder)")
            os.environ["NUMBA_CACHE_DIR"] = folder
            import numba

            _numba = numba
            log.debug("compiled kernels on (numba %s, cache %s)", numba.__version__, folder)
        function, options, probe = _KERNELS[name]
        compiled = _numba.njit(nogil=True, cache=True, error_model="numpy", **options)(function)
        probe(compiled)
        return compiled
    except ImportError as error:
        _numba = False
        log.debug("compiled kernels off (numba not importable: %s; pip install 'normcli[fast]'), numpy kernels used",
                  error)
    except Exception as error:  # no cache folder, numba's errors (compile, cache): numpy does the work
        if _numba is None:
            _numba = False
        log.debug("compiled kernel %s off (%s: %s), numpy kernels used", name, type(error).__name__, error)
    return False


# The kernels, plain Python here; _compile compiles them (nogil, cached), each on first use.
def _flat_sums(values, shift):
    total = 0.0
    squares = 0.0
    for start in range(0, len(values), _CHUNK):
        t = 0.0
        q = 0.0
        for i in range(start, min(start + _CHUNK, len(values))):
            d = float(values[i]) - shift
            t += d
            q += d * d
        total += t
        squares += q
    return total, squares


def _column_sums(rows, shift, total, squares):
    # running sums down the columns, as numpy's reduction of the rows (vectorized across columns)
    for r in range(rows.shape[0]):
        for c in range(rows.shape[1]):
            d = float(rows[r, c]) - shift[c]
            total[c] += d
            squares[c] += d * d


def _histogram_counts(values, low, scale, lo, hi, top, counts, rejected):
    # the same operations as histograms.float_histogram's numpy loop, in the compute type of low/scale
    n_rejected = 0
    for i in range(len(values)):
        f = (values[i] - low) * scale
        whole = np.trunc(f)
        fraction = f - whole
        if fraction >= lo and fraction <= hi and whole < top:
            counts[int(whole)] += 1
        else:
            rejected[n_rejected] = i
            n_rejected += 1
    return n_rejected


def _top_bit_counts(patterns, shift, counts):
    # histograms of each column's top bits (patterns >> shift): quantiles._top_counts's bincount
    for r in range(patterns.shape[0]):
        for k in range(patterns.shape[1]):
            counts[k, patterns[r, k] >> shift] += 1


def _histogram_probe(compiled):
    for ctype in (np.float32, np.float64):
        compiled(np.zeros(8, np.float32), ctype(0), ctype(0.25), ctype(0.01), ctype(0.99), ctype(2),
                 np.zeros(2, np.int64), np.empty(8, np.intp))


def _top_bits_probe(compiled):
    for dtype in (np.uint32, np.uint64):
        compiled(np.zeros((4, 1), dtype), dtype(8 * np.dtype(dtype).itemsize - 4), np.zeros((1, 16), np.int64))


# name: (the kernel, numba options, a first call with the argument types the callers use)
_KERNELS = {
    "flat_sums": (_flat_sums, {"fastmath": {"reassoc"}}, lambda f: f(np.zeros(8, np.float32), 0.0)),
    "column_sums": (_column_sums, {}, lambda f: f(np.zeros((2, 4), np.float32), np.zeros(4), np.zeros(4), np.zeros(4))),
    "histogram_counts": (_histogram_counts, {}, _histogram_probe),
    "top_bit_counts": (_top_bit_counts, {}, _top_bits_probe),
}
