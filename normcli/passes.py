"""The passes over a dataset: measure (source -> moments -> histograms) and transform
(source -> fit -> transform -> sink), chunks measured on every core and merged in order.

A transform reads its input twice: pass 1 fits (the whole input's moments, or each
batch's), pass 2 applies the fitted map, writes, and measures the input's histograms and
the output's statistics. Memory is bounded by a few chunks (or batches) at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from normcli import sinks
from normcli.errors import InputError, StatsFileError, UsageMismatch
from normcli.layout import Layout
from normcli.moments import (HistogramAccumulator, Histograms, MomentAccumulator, Moments, counts_values,
                             histogram_edges, histograms_from_counts)
from normcli.parallel import ordered_map
from normcli.sources import Chunk, Dataset
from normcli.transforms import (Affine, RunningStats, apply_broadcast, batchnorm, groupnorm_affine)

DEFAULT_BINS = 30


@dataclass
class Stats:
    """The statistics of one dataset at one scope, with what they were taken over."""

    inputs: list[str]
    samples: int
    sample_shape: tuple
    dtype: str
    layout: str
    scope: str
    moments: Moments
    histograms: Histograms | None


Progress = Callable[[int], None]  # told how many samples were just read


def stream(items: Iterable[Chunk], work: Callable, merge: Callable[[object], None],
           progress: Progress | None = None) -> None:
    """merge(work(chunk)) for every chunk, in order: the first alone (it fixes accumulator
    shifts), the rest on every core."""
    if progress is not None:
        items = _counted(items, progress)
    items = iter(items)
    first = next(items, None)
    if first is None:
        return
    merge(work(first))
    for result in ordered_map(work, items):
        merge(result)


def _counted(chunks: Iterable[Chunk], progress: Progress) -> Iterator[Chunk]:
    for chunk in chunks:
        progress(len(chunk.data))
        yield chunk


def check_scope(dataset: Dataset, scope: str) -> None:
    if scope == "pixel" and not dataset.uniform:
        raise InputError("--per pixel needs samples of one size, but these images differ in size; "
                         "use --per channel, global or sample", dataset.inputs[0])


def histogram_edges_for(scope: str, low: np.ndarray, high: np.ndarray, bins: int, hist_range=None) -> np.ndarray:
    """Each row's edges: the given range, else the row's [low, high] (the pixel row: all values')."""
    if hist_range is not None:
        rows = 1 if scope == "pixel" else len(low)
        return histogram_edges(np.full(rows, hist_range[0]), np.full(rows, hist_range[1]), bins)
    if scope == "pixel":
        low, high = low[np.isfinite(low)], high[np.isfinite(high)]
        return histogram_edges([low.min() if low.size else np.nan], [high.max() if high.size else np.nan], bins)
    return histogram_edges(low, high, bins)


def measure_passes(dataset: Dataset, scope: str, bins: int) -> int:
    """How many times `measure` reads the data."""
    return 1 if not bins or counts_values(dataset.dtype, scope) else 2


def measure(dataset: Dataset, scope: str, *, bins: int = DEFAULT_BINS, hist_range=None,
            ignore_nan: bool = False, progress: Progress | None = None) -> Stats:
    """The statistics of `dataset` at `scope`: one pass for the moments, a second for histograms
    (none for 8/16-bit integers at global/channel scope, whose value counts give both)."""
    check_scope(dataset, scope)
    acc = _moment_accumulator(dataset, scope, ignore_nan)
    stream(dataset.chunks(), lambda chunk: acc.measure(chunk.data, chunk.start), acc.add, progress)
    acc.check_finite(dataset.locate)
    moments = acc.result()
    histograms = None
    if bins:
        edges = histogram_edges_for(scope, moments.min, moments.max, bins, hist_range)
        if acc.value_counts is not None:
            histograms = histograms_from_counts(acc.value_counts, dataset.dtype, edges)
        else:
            hist = HistogramAccumulator(scope, dataset.layout, edges)
            stream(dataset.chunks(), lambda c: (hist.measure(c.data, c.start), c.start),
                   lambda result: hist.add(*result), progress)
            histograms = hist.result()
    return _stats(dataset, scope, moments, histograms)


def _moment_accumulator(dataset: Dataset, scope: str, ignore_nan: bool, dtype=None) -> MomentAccumulator:
    return MomentAccumulator(scope, dataset.layout, dtype or dataset.dtype, dataset.sample_shape,
                             ignore_nan=ignore_nan)


def _stats(dataset: Dataset, scope: str, moments: Moments, histograms, *, dtype=None,
           samples=None) -> Stats:
    return Stats(dataset.inputs, dataset.n_samples if samples is None else samples,
                 dataset.sample_shape, str(dtype or dataset.dtype), dataset.layout.name, scope,
                 moments, histograms)


# -- transforms ---------------------------------------------------------------
class Plan:
    """What one transform does in each pass. fit() and apply() are pure (run on several
    threads); add_fit() and finish() run in order on the main thread."""

    scope: str  # the scope of the before/after report
    samples: int | None = None  # how many samples the output holds (None: all)

    def units(self, dataset: Dataset) -> Iterator[Chunk]:
        """What both passes iterate over."""
        return dataset.chunks()

    def keeps(self, unit: Chunk) -> bool:
        """Whether the unit goes to the output (all of the input is measured either way)."""
        return True

    def original_index(self, position: int) -> int:
        """The sample index in the input of the `position`-th sample the passes see."""
        return position

    def fit(self, chunk: Chunk, layout: Layout):
        return None

    def add_fit(self, partial) -> None:
        pass

    def finish(self, before: Moments) -> tuple[np.ndarray, np.ndarray]:
        """Called after pass 1; returns the output's (low, high) per report key."""
        raise NotImplementedError

    def apply(self, chunk: Chunk, layout: Layout, out: np.ndarray):
        """Write the transformed chunk into `out`; may return a per-unit summary."""
        raise NotImplementedError

    def add_applied(self, summary) -> None:
        pass

    def saved_extra(self) -> dict:
        """What --save-stats stores beyond the input's statistics."""
        return {}


class ScalePlan(Plan):
    """One affine map per key over the whole dataset: normalize, standardize, their inverses,
    and batchnorm --eval (a fixed map from saved running statistics)."""

    def __init__(self, scope: str, make_affine: Callable[[Moments], Affine], *, fitted: Moments | None = None,
                 inverse: bool = False, clip: tuple[float, float] | None = None, input_scale: int | None = None):
        """`input_scale`: the inputs are integers that stand for value * input_scale (an 8/16-bit
        output of normcli, read back for --inverse): divided by it before the map."""
        self.scope = scope
        self.input_scale = input_scale
        self.make_affine = make_affine
        self.fitted = fitted
        self.inverse = inverse
        self.clip = clip
        self.affine: Affine | None = None

    def finish(self, before: Moments):
        affine = self.make_affine(self.fitted if self.fitted is not None else before)
        self.affine = affine.inverse() if self.inverse else affine
        if self.input_scale:  # map(x / s) = (x - shift * s) * (scale / s) + offset
            s = self.input_scale
            self.affine = Affine(self.affine.shift * s, self.affine.scale / s, self.affine.offset)
        low, high = self.affine.bounds(before.min, before.max)
        if self.clip is not None:
            low, high = np.clip(low, *self.clip), np.clip(high, *self.clip)
        return low, high

    def apply(self, chunk: Chunk, layout: Layout, out: np.ndarray):
        affine = self.affine.rows(chunk.start, len(chunk.data)) if self.scope == "sample" else self.affine
        affine.apply(layout.npc(chunk.data), layout.npc(out), self.scope, self.clip)


@dataclass
class BatchSummary:
    index: int
    size: int
    mean_before: float
    var_before: float
    mean_after: float = float("nan")
    var_after: float = float("nan")


class BatchPlan(Plan):
    """Training-mode batch norm: each batch of `batch_size` by its own moments at `scope`."""

    def __init__(self, dataset: Dataset, scope: str, batch_size: int, gamma, beta, eps: float, *,
                 momentum: float | None = 0.1, drop_last: bool = False, order: np.ndarray | None = None,
                 ignore_nan: bool = False):
        self.scope = scope
        self.dataset = dataset
        self.batch_size = batch_size
        self.gamma, self.beta, self.eps = gamma, beta, eps
        self.order = order
        self.ignore_nan = ignore_nan
        n = dataset.n_samples
        self.n_batches = n // batch_size if drop_last else -(-n // batch_size)
        self.samples = self.n_batches * batch_size if drop_last else n
        keys = len(gamma)
        self.running = RunningStats.start(keys, momentum)
        self.batches: list[BatchSummary] = []
        self.applied = 0
        self.low = np.full(keys, np.inf)
        self.high = np.full(keys, -np.inf)

    def units(self, dataset: Dataset) -> Iterator[Chunk]:
        return dataset.batches(self.batch_size, self.order)

    def keeps(self, unit: Chunk) -> bool:
        """Not the short last batch that --drop-last leaves out."""
        return unit.start < self.samples

    def original_index(self, position: int) -> int:
        return position if self.order is None else int(self.order[position])

    def _batch_moments(self, data: np.ndarray, scope: str, dtype=None) -> Moments:
        acc = _moment_accumulator(self.dataset, scope, self.ignore_nan, dtype=dtype)
        acc.add(acc.measure(data))
        if acc.nonfinite.total and not self.ignore_nan:
            return None  # NaN/inf: left to the input's own check after pass 1, which names the sample
        return acc.result()

    def _affine(self, moments: Moments, size: int) -> Affine:
        if (moments.count < 2).any():
            raise UsageMismatch(
                f"a batch of {size} sample(s) has a single value per key, which has no variance to "
                "normalize by (PyTorch refuses it too); use --drop-last or another --batch-size")
        return batchnorm(moments.mean, moments.var(0), self.gamma, self.beta, self.eps)

    def fit(self, chunk: Chunk, layout: Layout):
        moments = self._batch_moments(chunk.data, self.scope)
        whole = self._batch_moments(chunk.data, "global")
        return len(chunk.data), moments, whole

    def add_fit(self, partial) -> None:
        size, moments, whole = partial
        if moments is None or len(self.batches) == self.n_batches:  # NaN (reported later), or dropped
            return
        affine = self._affine(moments, size)
        self.running.update(moments)
        low, high = affine.bounds(moments.min, moments.max)
        self.low, self.high = np.fmin(self.low, low), np.fmax(self.high, high)
        self.batches.append(BatchSummary(len(self.batches), size, float(whole.mean[0]), float(whole.var()[0])))

    def finish(self, before: Moments):
        return self.low, self.high

    def apply(self, chunk: Chunk, layout: Layout, out: np.ndarray):
        affine = self._affine(self._batch_moments(chunk.data, self.scope), len(chunk.data))
        affine.apply(layout.npc(chunk.data), layout.npc(out), self.scope)
        after = self._batch_moments(out, "global", out.dtype)
        return float(after.mean[0]), float(after.var()[0])

    def add_applied(self, summary) -> None:
        self.batches[self.applied].mean_after, self.batches[self.applied].var_after = summary
        self.applied += 1

    def saved_extra(self) -> dict:
        """The running statistics, for batchnorm --eval --stats-from."""
        momentum = self.running.momentum
        return {"running_mean": self.running.mean, "running_var": self.running.var,
                "momentum": "cumulative" if momentum is None else momentum, "batches": self.running.batches}


def eval_plan(saved, path: str, scope: str, gamma: np.ndarray, beta: np.ndarray, eps: float) -> ScalePlan:
    """batchnorm --eval: one fixed map from the running statistics saved by batchnorm --save-stats."""
    if "running_mean" not in saved.extra:
        raise StatsFileError("holds no running statistics; make it with batchnorm --save-stats", path)
    mean, var = saved.extra["running_mean"], saved.extra["running_var"]
    return ScalePlan(scope, lambda _: batchnorm(mean, var, gamma, beta, eps))


class GroupPlan(Plan):
    """Group norm: each sample's groups of channels by their own moments; reported per channel."""

    scope = "channel"

    def __init__(self, groups: int, gamma: np.ndarray, beta: np.ndarray, eps: float, *, ignore_nan: bool = False):
        self.groups, self.gamma, self.beta, self.eps = groups, gamma, beta, eps
        self.ignore_nan = ignore_nan
        self.low = np.full(len(gamma), np.inf)
        self.high = np.full(len(gamma), -np.inf)

    def _maps(self, x: np.ndarray):
        return groupnorm_affine(x, self.groups, self.gamma, self.beta, self.eps, self.ignore_nan)

    def fit(self, chunk: Chunk, layout: Layout):
        x = layout.npc(chunk.data)
        shift, scale, offset = self._maps(x)
        a = (x.min(axis=1, keepdims=True) - shift) * scale + offset
        b = (x.max(axis=1, keepdims=True) - shift) * scale + offset
        return np.fmin(a, b).min(axis=(0, 1)), np.fmax(a, b).max(axis=(0, 1))

    def add_fit(self, partial) -> None:
        self.low, self.high = np.fmin(self.low, partial[0]), np.fmax(self.high, partial[1])

    def finish(self, before: Moments):
        return self.low, self.high

    def apply(self, chunk: Chunk, layout: Layout, out: np.ndarray):
        x = layout.npc(chunk.data)
        apply_broadcast(x, *self._maps(x), layout.npc(out))


@dataclass
class TransformResult:
    before: Stats
    after: Stats | None
    plan: Plan
    clipped: int  # values clipped to fit an 8/16-bit output
    encoding: dict | None = None  # how an 8/16-bit output stores its values (OutputSpec.encoding)


def transform(dataset: Dataset, plan: Plan, output: str, *, dtype: str | None = None, ext: str | None = None,
              clip: bool = False, force: bool = False, bins: int = DEFAULT_BINS,
              ignore_nan: bool = False, report: bool = True, progress: Progress | None = None) -> TransformResult:
    """Run `plan` over `dataset` into `output`, which appears only if everything succeeded.

    Pass 1: the input's moments and the plan's fit. The output's predicted range is then
    checked against what the output can hold, before anything is written. Pass 2: apply,
    write, and (unless `report` is off: then `after` is None) measure the input's histograms
    and the output's statistics.
    """
    bins = bins if report else 0
    spec = sinks.plan_output(output, dataset=dataset, dtype=dtype, ext=ext, force=force)
    check_scope(dataset, plan.scope)
    before_acc = _moment_accumulator(dataset, plan.scope, ignore_nan)

    def fit(chunk: Chunk):
        return before_acc.measure(chunk.data, chunk.start), plan.fit(chunk, dataset.layout)

    def add_fit(result):
        before_acc.add(result[0])
        plan.add_fit(result[1])

    stream(plan.units(dataset), fit, add_fit, progress)
    if before_acc.nonfinite.first is not None:
        before_acc.nonfinite.first = plan.original_index(before_acc.nonfinite.first)
    before_acc.check_finite(dataset.locate)
    before = before_acc.result()
    low, high = plan.finish(before)
    finite = np.concatenate([low, high])
    finite = finite[np.isfinite(finite)]
    if finite.size:
        sinks.choose_encoding(spec, finite.min(), finite.max(), clip)
    samples = plan.samples if plan.samples is not None else dataset.n_samples

    # Float outputs are measured as written; integer ones as the floats they encode, in float64 so that
    # each integer is round(exact value * scale).
    work_dtype = np.float64 if spec.dtype == np.float64 or spec.encoding() else np.float32
    after_acc = _moment_accumulator(dataset, plan.scope, ignore_nan, dtype=work_dtype)
    before_hist = after_hist = None
    if bins:
        before_hist = HistogramAccumulator(
            plan.scope, dataset.layout, histogram_edges_for(plan.scope, before.min, before.max, bins))
        after_hist = HistogramAccumulator(
            plan.scope, dataset.layout, histogram_edges_for(plan.scope, low, high, bins), clamp=True)

    def apply(chunk: Chunk):
        before_partial = before_hist.measure(chunk.data, chunk.start) if bins else None
        if not plan.keeps(chunk):
            return chunk, None, None, None, (before_partial, None)
        out = np.empty(chunk.data.shape, work_dtype)
        summary = plan.apply(chunk, dataset.layout, out)
        if ignore_nan:
            np.copyto(out, chunk.data, where=~np.isfinite(chunk.data))
        hists = (before_partial, after_hist.measure(out, chunk.start) if bins else None)
        return chunk, out, summary, after_acc.measure(out, chunk.start) if report else None, hists

    sink = sinks.Sink(spec, dataset.layout, dataset.sample_shape, samples, key=dataset.key, clip=clip)

    def write(result):
        chunk, out, summary, after_partial, (before_partial, after_hist_partial) = result
        if bins:
            before_hist.add(before_partial, chunk.start)
        if out is None:
            return
        sink.write(out, chunk.start, chunk.names)
        plan.add_applied(summary)
        if report:
            after_acc.add(after_partial)
        if bins:
            after_hist.add(after_hist_partial, chunk.start)

    try:
        stream(plan.units(dataset), apply, write, progress)
        sink.commit()
    except BaseException:
        sink.discard()
        raise
    before_stats = _stats(dataset, plan.scope, before, before_hist.result() if bins else None)
    after_stats = _stats(dataset, plan.scope, after_acc.result(), after_hist.result() if bins else None,
                         dtype=spec.dtype, samples=samples) if report else None
    return TransformResult(before_stats, after_stats, plan, sink.clipped, spec.encoding())
