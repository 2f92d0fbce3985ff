"""Compiled, GIL-free kernels: the optional `[fast]` extra (numba), used only where they pay.

Two kernels of the float path run compiled when numba is installed: the shifted sums of float32
moments (moments._shifted_sums) and the counting loop of the float histogram with histograms.py's
margin test. Their numbers are the numpy kernels': histogram counts identical (the same margin test
decides which values np.histogram bins), float sums within the same bound (chunks of a few
thousand values summed in vectorized partial sums, the chunks' sums added up).

numba costs ~0.2 s to import and ~1 s to compile the kernels (~0.3 s in all from a warm cache:
benchmarks/PROFILE.md), so a process turns them on only once the kernels have been handed
COLD_BYTES of values (WARM_BYTES when the cache holds them); small inputs and `--help` never import
numba. NORMCLI_COMPILED=1 turns them on from the first block, NORMCLI_COMPILED=0 off. A missing
numba, a failed compile or no writable cache folder leave the numpy kernels, with a note in the
`normcli` log (shown by --debug).
"""

from __future__ import annotations

import os
import threading

import numpy as np

COLD_BYTES = 3 << 30  # measured in benchmarks/PROFILE.md ("Compiled kernels")
WARM_BYTES = 1 << 30
_CHUNK = 4096  # values a partial sum: its vectorized lanes add few enough values to stay exact enough

_lock = threading.Lock()
_kernels = None  # the compiled kernels (a _Kernels) once loaded, False when numba cannot give them
_seen = 0  # bytes handed to the kernels while numba was not loaded
_warm = None


def kernels(nbytes: int):
    """The compiled kernels for a call on `nbytes` of data, or None for the numpy ones."""
    global _seen
    mode = os.environ.get("NORMCLI_COMPILED", "")
    if mode == "0":
        return None
    if _kernels is not None:
        return _kernels or None
    _seen += nbytes  # unlocked: an estimate is all it needs
    if mode != "1" and _seen < (WARM_BYTES if _warm_cache() else COLD_BYTES):
        return None
    # Forced: wait for the compile. Otherwise other threads go on with numpy meanwhile.
    if not _lock.acquire(blocking=mode == "1"):
        return None
    try:
        if _kernels is None:
            _load()
    finally:
        _lock.release()
    return _kernels or None


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


def _load() -> None:
    import logging

    global _kernels
    folder = _cache_dir()
    try:
        if folder is None:
            raise RuntimeError("no cache folder can be written (NUMBA_CACHE_DIR, ~/.cache, the temporary folder)")
        os.environ["NUMBA_CACHE_DIR"] = folder
        _kernels = _Kernels()
    except ImportError as error:
        _kernels = False
        logging.getLogger("normcli").debug("compiled kernels off (numba not importable: %s; "
                                           "pip install 'normcli[fast]'), numpy kernels used", error)
    except Exception as error:  # numba's errors (compile, cache): numpy does the work
        _kernels = False
        logging.getLogger("normcli").debug("compiled kernels off (%s: %s), numpy kernels used",
                                           type(error).__name__, error)
    else:
        logging.getLogger("normcli").debug("compiled kernels on (numba, cache %s)", folder)


class _Kernels:
    """The kernels compiled (nogil, cached); a first call with each argument type compiles it."""

    def __init__(self):
        import numba

        jit = numba.njit(nogil=True, cache=True, error_model="numpy")
        self._flat = numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"reassoc"})(_flat_sums)
        self._columns = jit(_column_sums)
        self._histogram = jit(_histogram_counts)
        self._check()

    def _check(self) -> None:
        """Compile (or load) every kernel now, so that a failure falls back before any result."""
        values = np.arange(8, dtype=np.float32)
        self.flat_sums(values, 1.0)
        self.column_sums(values.reshape(2, 4), np.zeros(4))
        counts = np.zeros(3, np.int64)
        for ctype in (np.float32, np.float64):
            self.histogram_counts(values, ctype(0), ctype(0.25), ctype(0.01), ctype(0.99), ctype(2), counts,
                                  np.empty(8, np.intp))

    def flat_sums(self, values, shift: float) -> tuple[float, float]:
        """The sums of values - shift and of its squares, in float64 (values 1-D, contiguous)."""
        return self._flat(values, float(shift))

    def column_sums(self, rows, shift):
        """Per column of 2-D C-contiguous rows: the sums of rows - shift and of their squares."""
        total, squares = np.zeros(rows.shape[1]), np.zeros(rows.shape[1])
        self._columns(rows, np.ascontiguousarray(shift, np.float64), total, squares)
        return total, squares

    def histogram_counts(self, values, low, scale, lo, hi, top, counts, rejected) -> int:
        """histograms.float_histogram's counting of 1-D `values`: adds to `counts` the values the
        margin test accepts, puts the others' indices in `rejected`, returns how many."""
        return self._histogram(values, low, scale, lo, hi, top, counts, rejected)


# The kernels, plain Python here; _Kernels compiles them.
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
