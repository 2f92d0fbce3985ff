"""The float histogram kernel behind histograms.count_block: exactly np.histogram's counts.

Every test compares with np.histogram(values, bins, range=(low, high)) on the raw values of each
key (grouped from the axis names, not through normcli's npc view). The kernel's tunables are
shrunk (tiny blocks, no minimum size, sometimes no giving up on data that sits on the edges) so
that small hypothesis arrays run through every part of it: blocks, pair counting, rejected values.

Run by hand for the speed-up (not a test): /work/venv/bin/python tests/test_histogram_kernel.py
"""

from __future__ import annotations

import contextlib
from unittest import mock

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from normcli import histograms
from normcli.layout import Layout
from normcli.histograms import count_block, count_pairs, histogram_edges
from normcli.scopes import SCOPES
from normcli.transforms import Affine

from helpers import reference_rows

FLOATS = (np.float16, np.float32, np.float64)
# every test with the numpy kernels, and again with the compiled ones where numba is installed
pytestmark = pytest.mark.usefixtures("kernel_path")
SHAPES = {"NHWC": (3, 4, 5, 3), "NCHW": (3, 2, 4, 5), "NHW": (4, 3, 5), "NC": (12, 4), "N": (37,)}


def histogram_rows(x: np.ndarray, layout: str, scope: str) -> list[np.ndarray]:
    """The values of each histogram of `scope` (the pixel scope keeps one histogram of all values)."""
    return [x.reshape(-1)] if scope == "pixel" else reference_rows(x, layout, scope)


@contextlib.contextmanager
def kernel_tunables(block=64, probe=5, give_up=histograms._HIST_GIVE_UP, byte_slots=histograms._HIST_BYTE_SLOTS):
    with mock.patch.multiple(histograms, _HIST_MIN_SIZE=0, SLICE_VALUES=block, _HIST_PROBE=probe,
                             _HIST_GIVE_UP=give_up, _HIST_BYTE_SLOTS=byte_slots):
        yield


def numpy_counts(rows, edges, clamp=False) -> np.ndarray:
    bins = edges.shape[1] - 1
    out = []
    for row, row_edges in zip(rows, edges):
        low, high = row_edges[0], row_edges[-1]
        out.append(np.histogram(np.clip(row, low, high) if clamp else row, bins, range=(low, high))[0])
    return np.stack(out)


def check(x: np.ndarray, layout: str, scope: str, edges: np.ndarray, *, clamp=False, split=None):
    def counts(part, rows):
        return count_block(part, SCOPES[scope], Layout(layout), rows, clamp=clamp).counts

    if scope == "sample" and split and split < len(x):
        got = np.concatenate([counts(x[:split], edges[:split]), counts(x[split:], edges[split:])])
    else:
        got = counts(x, edges)
    want = numpy_counts(histogram_rows(x, layout, scope), edges, clamp)
    assert got.dtype == want.dtype and got.shape == want.shape
    bad = np.flatnonzero((got != want).any(axis=1))
    assert bad.size == 0, f"key {bad[0]}: got {got[bad[0]].tolist()}, want {want[bad[0]].tolist()}"


def near(values, dtype, rng, k=2) -> np.ndarray:
    """Each value, rounded to `dtype`, and its k neighbours on either side in `dtype`."""
    with np.errstate(over="ignore"):  # neighbours of the largest finite value are inf: fine data too
        v = np.asarray(values, np.float64).astype(dtype)
        out = [v]
        up, down = v, v
        for _ in range(k):
            up, down = np.nextafter(up, dtype(np.inf)), np.nextafter(down, dtype(-np.inf))
            out += [up, down]
    return np.concatenate(out)


RANGES = st.one_of(
    st.tuples(st.just(0.0), st.just(255.0)),
    st.tuples(st.just(-1.0), st.just(1.0)),
    st.tuples(st.just(-300.5), st.just(-2.25)),  # negative
    st.tuples(st.just(1e9), st.just(1e9 + 4096.0)),  # large offset
    st.tuples(st.just(1e9 + 0.1), st.just(1e9 + 0.7)),  # large offset, narrow range (float64 only)
    st.tuples(st.just(0.1), st.just(0.1 + 3e-7)),  # tiny range, ends not float32 numbers
    st.tuples(st.floats(-1e6, 1e6), st.floats(1e-6, 1e6)).map(lambda t: (t[0], t[0] + t[1])),
)


@st.composite
def cases(draw):
    """(array, layout, edges, description) with values on and around the edges, outside, NaN, inf."""
    layout = draw(st.sampled_from(list(SHAPES)))
    dtype = draw(st.sampled_from(FLOATS))
    bins = draw(st.one_of(st.integers(1, 40), st.sampled_from([85, 127, 180, 181, 255, 256, 1000])))
    low, high = draw(RANGES)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = SHAPES[layout]
    n = int(np.prod(shape))
    kind = draw(st.sampled_from(["ints", "noise", "edges", "constant"]))
    if kind == "ints":  # integer-valued floats: many sit exactly on edges
        x = rng.integers(int(np.floor(low)) - 2, int(np.ceil(high)) + 3, n).astype(np.float64)
    elif kind == "noise":
        x = rng.uniform(low, high, n) + (high - low) * 0.05 * rng.standard_normal(n)
    elif kind == "edges":
        edges = np.histogram_bin_edges([], bins, range=(low, high))
        x = rng.choice(near(edges, dtype, rng), n)
    else:
        x = np.full(n, rng.uniform(low, high))
    with np.errstate(over="ignore"):
        x = x.astype(dtype)
    special = draw(st.lists(st.sampled_from([np.nan, np.inf, -np.inf, low - 1, high + 1, low, high]),
                            max_size=4))
    for value in special:
        with np.errstate(over="ignore"):
            x[rng.integers(n)] = dtype(value)
    x = x.reshape(shape)
    scope = draw(st.sampled_from(tuple(SCOPES) if "C" in layout else ("global", "sample", "pixel")))
    rows = histogram_rows(x, layout, scope)
    if draw(st.booleans()):  # an explicit range (--range): values outside it are left out
        low, high = np.full(len(rows), low), np.full(len(rows), high)
    else:  # each key's [min, max] over its finite values, (v - 0.5, v + 0.5) for a constant key
        finite = [r[np.isfinite(r)].astype(np.float64) for r in rows]
        low = [f.min() if f.size else np.nan for f in finite]
        high = [f.max() if f.size else np.nan for f in finite]
    try:
        edges = histogram_edges(low, high, bins)
    except ValueError:  # numpy: "Too many bins for data range" (a spread of a few float64 ulps)
        assume(False)
    return x, layout, scope, edges


@settings(max_examples=300, deadline=None)
@given(case=cases(), block=st.sampled_from([1, 7, 64, 1000]), probe=st.sampled_from([1, 5, 64]),
       give_up=st.sampled_from([histograms._HIST_GIVE_UP, 2.0]), byte_slots=st.sampled_from([0, histograms._HIST_BYTE_SLOTS]),
       split=st.integers(0, 3))
@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_kernel_counts_equal_numpy(case, block, probe, give_up, byte_slots, split):
    x, layout, scope, edges = case
    with kernel_tunables(block, min(probe, block), give_up, byte_slots):
        check(x, layout, scope, edges, split=split)


@settings(max_examples=60, deadline=None)
@given(case=cases())
@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_clamped_counts_equal_numpy_on_clipped_values(case):
    x, layout, scope, edges = case
    with kernel_tunables(give_up=2.0):
        check(x, layout, scope, edges, clamp=True)


def mapped(x: np.ndarray, layout: str, scope: str, edges: np.ndarray, affine: Affine, out_dtype):
    """x's map by Affine.apply (the write pass's arithmetic), and the edges of its histograms: each
    row's ends mapped as the report's range is (Affine.bounds)."""
    y = np.empty(x.shape, out_dtype)
    affine.apply(Layout(layout).npc(x), Layout(layout).npc(y), scope)
    low, high = affine.bounds(edges[:, 0], edges[:, -1])
    return y, histogram_edges(low, high, edges.shape[1] - 1)


def check_pairs(x, layout, scope, edges, affine, out_dtype):
    y, y_edges = mapped(x, layout, scope, edges, affine, out_dtype)
    got = count_pairs(x, y, SCOPES[scope], Layout(layout), edges, y_edges, (affine.shift, affine.scale, affine.offset))
    for counts, want in zip(got, (numpy_counts(histogram_rows(x, layout, scope), edges),
                                  numpy_counts(histogram_rows(y, layout, scope), y_edges, clamp=True))):
        assert counts.counts.dtype == want.dtype and counts.counts.shape == want.shape
        bad = np.flatnonzero((counts.counts != want).any(axis=1))
        assert bad.size == 0, f"key {bad[0]}: got {counts.counts[bad[0]].tolist()}, want {want[bad[0]].tolist()}"


SCALES = st.sampled_from([1 / 17.5, 1.0, -1.0, 3e-4, -2.5, 1e4, 1 / 3])
OFFSETS = st.sampled_from([0.0, 0.25, -7.0, 1e6])


@settings(max_examples=300, deadline=None)
@given(case=cases(), scale=SCALES, offset=OFFSETS, out_dtype=st.sampled_from([np.float32, np.float64]),
       block=st.sampled_from([7, 64, 1000]), data=st.data())
@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_paired_counts_equal_numpy_on_both_sides(case, scale, offset, out_dtype, block, data):
    """The output's histograms counted from the input's bins (count_pairs) are np.histogram's of
    the output, for maps of either sign, values on and next to every edge, NaN and inf."""
    x, layout, scope, edges = case
    assume(scope != "pixel")  # one histogram of keys with different maps: never paired
    keys = len(edges)
    shift = np.array([data.draw(st.floats(float(e[0]), float(e[-1]))) for e in edges])
    affine = Affine(shift, np.full(keys, scale), np.full(keys, offset))
    with kernel_tunables(block, min(5, block)), np.errstate(over="ignore", invalid="ignore"):
        check_pairs(x, layout, scope, edges, affine, out_dtype)


@pytest.mark.parametrize("scale", [1 / 17.5, -1 / 17.5, 1e-3])
@pytest.mark.parametrize("out_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bins", [30, 255])
@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_paired_counts_next_to_every_edge_of_both(scale, out_dtype, bins):
    """Values within a few ulps of every input edge and of every output edge's preimage, and just
    inside and outside the widened margin, in one paired pass (tiny blocks, no giving up)."""
    rng = np.random.default_rng(bins)
    low, high = -72.28, 149.54
    x_edges = histogram_edges([low], [high], bins)
    affine = Affine(np.array([36.0]), np.array([scale]), np.array([0.0]))
    _, y_edges = mapped(np.zeros((1, 1), np.float32), "NC", "global", x_edges, affine, out_dtype)
    preimages = (y_edges[0] - 0.0) / scale + 36.0
    width = (high - low) / bins
    spots = np.concatenate([x_edges[0], preimages, x_edges[0] + 2e-5 * width, x_edges[0] - 2e-5 * width])
    x = near(spots[(spots >= low) & (spots <= high)], np.float32, rng, k=3)
    x = np.concatenate([x, rng.uniform(low, high, 5000).astype(np.float32), [low, high]]).astype(np.float32)
    rng.shuffle(x)
    x = x.reshape(-1, 1)
    with kernel_tunables(block=1000, give_up=2.0):
        check_pairs(x, "NC", "global", x_edges, affine, out_dtype)
        y, _ = mapped(x, "NC", "global", x_edges, affine, out_dtype)
        assert histograms.paired_histograms(x, y, x_edges[0], y_edges[0], (36.0, scale, 0.0)) is not None


def test_maps_that_do_not_pair_are_counted_on_their_own():
    """Edges that are not the map of the input's (a clipped range), a zero scale, an output too
    coarse for the margin: no pairing, and count_pairs still gives numpy's counts."""
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, (5000, 1)).astype(np.float32)
    x_edges = histogram_edges([x.min()], [x.max()], 30)
    for affine in (Affine(np.zeros(1), np.ones(1), np.full(1, 1e7)), Affine(np.zeros(1), np.zeros(1), np.zeros(1))):
        y, y_edges = mapped(x, "NC", "global", x_edges, affine, np.float32)
        assert histograms.paired_histograms(x, y, x_edges[0], y_edges[0],
                                            (0.0, float(affine.scale[0]), float(affine.offset[0]))) is None
        check_pairs(x, "NC", "global", x_edges, affine, np.float32)
    y = x * 2
    clipped = histogram_edges([-1.0], [1.0], 30)
    assert histograms.paired_histograms(x, y, x_edges[0], clipped[0], (0.0, 2.0, 0.0)) is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("low, high, bins", [
    (0.0, 255.0, 30), (0.0, 255.0, 255), (0.0, 255.0, 1000), (-1.0, 1.0, 7), (-3.5, -0.25, 13),
    (0.1, 0.7, 60), (1e9, 1e9 + 64 * 100, 100), (1e9 + 0.1, 1e9 + 0.7, 3), (1e-30, 3e-30, 10),
    (-5e30, 5e30, 999), (2.0, 2.0 + 2**-20, 16)])
@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_values_next_to_every_edge(dtype, low, high, bins):
    """Every edge's neighbours within a few ulps in `dtype`, and the values just inside and just
    outside the kernel's acceptance margin of every edge: the places where rounding decides."""
    rng = np.random.default_rng(bins)
    edges = np.histogram_bin_edges([], bins, range=(low, high))
    plan = histograms._hist_plan(low, high, bins, np.dtype(dtype))
    spots = [edges]
    if plan is not None:
        margin = float(plan[3]) * (high - low) / bins
        spots += [edges + margin, edges - margin]
    x = near(np.concatenate(spots), dtype, rng, k=3)
    x = np.concatenate([x, rng.uniform(low, high, 500).astype(dtype)])
    rng.shuffle(x)
    want = np.histogram(x, bins, range=(np.float64(low), np.float64(high)))[0]
    with kernel_tunables(block=1000, give_up=2.0):
        got = histograms.float_histogram(x, np.float64(low), np.float64(high), bins)
    assert got.tolist() == want.tolist()


def test_plan_picks_float32_float64_or_numpy():
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    assert histograms._hist_plan(0.0, 255.0, 30, f32)[0] is np.float32
    assert histograms._hist_plan(0.0, 255.0, 30, np.dtype(np.float16))[0] is np.float32
    assert histograms._hist_plan(0.0, 255.0, 30, f64)[0] is np.float64
    # The ends are not float32 numbers and the range is narrow: float32 is too coarse.
    assert histograms._hist_plan(0.1, 0.1 + 1e-6, 30, f32)[0] is np.float64
    # Too many bins for float32's precision.
    assert histograms._hist_plan(0.0, 1.0, 200_000, f32)[0] is np.float64
    # An offset of 1e15 with a 1e-3 range: float64 edges are coarser than the margin allows.
    assert histograms._hist_plan(1e15, 1e15 + 1e-3, 30, f64) is None
    assert histograms._hist_plan(0.0, 1.0, 30, np.dtype(np.int32)) is None


@pytest.mark.parametrize("layout, scope, shape", [
    ("NC", "global", (300_001, 1)), ("NHWC", "channel", (25, 64, 64, 3)), ("NCHW", "channel", (25, 3, 64, 64)),
    ("NHW", "sample", (40, 100, 100))])
@pytest.mark.parametrize("bins", [30, 1000])
@pytest.mark.parametrize("data", ["normal", "integers", "offset"])
@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_real_sizes_with_default_tunables(layout, scope, shape, bins, data):
    """Chunks as normcli reads them, through the kernel's real block sizes and give-up rule."""
    rng = np.random.default_rng(bins)
    n = int(np.prod(shape))
    x = {"normal": lambda: rng.standard_normal(n), "integers": lambda: rng.integers(0, 256, n),
         "offset": lambda: 1e9 + 1e3 * rng.standard_normal(n)}[data]().astype(np.float32).reshape(shape)
    x.reshape(-1)[rng.integers(n, size=5)] = [np.nan, np.inf, -np.inf, 1e30, -1e30]
    rows = histogram_rows(x, layout, scope)
    finite = [r[np.isfinite(r) & (np.abs(r) < 1e29)] for r in rows]
    edges = histogram_edges([f.min() for f in finite], [f.max() for f in finite], bins)
    check(x, layout, scope, edges)


@settings(max_examples=200, deadline=None)
@given(dtype=st.sampled_from([np.uint8, np.int8, np.uint16, np.int16]), samples=st.integers(0, 6),
       positions=st.integers(1, 40), channels=st.integers(1, 6), together=st.booleans(), step=st.sampled_from([1, 2]),
       seed=st.integers(0, 2**32 - 1))
def test_value_counts_equal_a_bincount_per_channel(dtype, samples, positions, channels, together, step, seed):
    """Pillow's band counts (8-bit, 1-4 channels) and bincount (the rest) count every value from
    the type's minimum, for contiguous and strided blocks alike."""
    info = np.iinfo(dtype)
    v = np.random.default_rng(seed).integers(info.min, info.max + 1, (samples, positions, channels)).astype(dtype)
    v = v[:, ::step]
    columns = [v.reshape(-1)] if together else [v[..., c].reshape(-1) for c in range(channels)]
    expected = np.stack([np.bincount(c.astype(np.int64) - info.min, minlength=info.max - info.min + 1)
                         for c in columns])
    got = histograms.value_counts(v, 1 if together else channels)
    assert got.dtype == np.int64 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


# ----------------------------------------------------------------------------- timing, by hand
def _time_measure(threads: int = 1, seconds: float = 2.0) -> None:
    """GB/s of count_block on 4 MiB float32 chunks, np.histogram vs the kernel."""
    import threading
    import time

    rng = np.random.default_rng(0)
    chunks = [rng.standard_normal((1 << 20, 1)).astype(np.float32) for _ in range(threads)]
    edges = histogram_edges([-6.0], [6.0], 30)
    def measure(chunk):
        return count_block(chunk, SCOPES["global"], Layout("NC"), edges).counts

    def rate(fn) -> float:
        done = [0] * threads
        stop = time.perf_counter() + seconds

        def work(t):
            while time.perf_counter() < stop:
                fn(chunks[t])
                done[t] += 1

        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return sum(done) * chunks[0].nbytes / (time.perf_counter() - start) / 1e9

    for chunk in chunks:
        assert (measure(chunk)[0] == np.histogram(chunk, 30, range=(edges[0, 0], edges[0, -1]))[0]).all()
    before = rate(lambda c: np.histogram(c, 30, range=(edges[0, 0], edges[0, -1])))
    after = rate(measure)
    print(f"{threads} thread(s): np.histogram {before:.2f} GB/s, kernel {after:.2f} GB/s ({after / before:.1f}x)")


if __name__ == "__main__":
    for n_threads in (1, 2):
        _time_measure(n_threads)


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from([np.float16, np.float32]), scope=st.sampled_from(["global", "channel", "sample"]),
       bins=st.integers(1, 40), given_range=st.booleans(), data=st.data())
def test_float16_and_float32_histograms_are_those_of_the_float64_values(dtype, scope, bins, given_range, data):
    """What the README says: a float32/float16 histogram is np.histogram of the values cast to
    float64, over each row's [min, max] (or --range), through the whole measuring pass."""
    import tempfile
    from pathlib import Path

    from normcli.passes import measure
    from normcli.sources import open_dataset

    x = data.draw(hnp.arrays(dtype, (3, 4, 5, 2), elements=st.floats(-1000, 1000, width=16 if dtype == np.float16
                                                                      else 32)))
    hist_range = (-500.0, 700.0) if given_range else None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npy"
        np.save(path, x)
        with open_dataset([str(path)]) as dataset:
            stats = measure(dataset, scope, bins=bins, hist_range=hist_range)
    for row, counts in zip(histogram_rows(x, "NHWC", scope), stats.histograms.counts):
        wide = row.astype(np.float64)
        low, high = hist_range or (wide.min(), wide.max())
        want = np.histogram(wide, bins, range=(low, high) if low < high else (low - 0.5, high + 0.5))[0]
        np.testing.assert_array_equal(counts, want)
