"""The passes over a dataset: measure (source -> moments -> histograms) and transform
(source -> fit -> transform -> sink), each a map of pure work over blocks on an engine,
merged in block order on the driver.

A transform reads its input twice: pass 1 fits (the whole input's moments, or each
batch's), pass 2 applies the fitted map, writes each block into the temporary output at its
position, and measures the input's histograms and the output's statistics. Memory is bounded
by a few blocks (or batches) in flight.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, replace
from functools import partial, reduce
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np

from normcli import sinks
from normcli.engine import Engine, ThreadEngine, fold_run, runs
from normcli.errors import InputError, NormcliWarning, OutputError, StatsFileError, UsageMismatch
from normcli.histograms import (HistogramCounts, Histograms, count_block, edges_for, histogram_edges,
                                histograms_from_counts)
from normcli.layout import Layout
from normcli.moments import (BlockStats, Moments, NonFinite, checked, counted, counts_values, measure_block, merge,
                             nonfinite_error)
from normcli.scopes import CHANNEL, GLOBAL, Scope, scope as as_scope
from normcli.sources import Block, Chunk, Dataset, ImagePart
from normcli.transforms import Affine, RunningStats, apply_broadcast, batchnorm, deviations, groupnorm_affine

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
    names: list[str] | None = None  # at sample scope: each sample's file (see sample_files)
    alpha_passed: bool = False  # images whose alpha channel is left out of the statistics


class Progress(Protocol):
    """What the passes tell a progress display (render.ProgressDisplay is the terminal's)."""

    def phase(self, name: str, total: int) -> None:
        """A pass named `name` ("measuring", "writing", ...) over `total` samples begins."""

    def advance(self, samples: int, nbytes: int = 0) -> None:
        """The current pass has finished `samples` more samples (`nbytes` bytes in memory). Called
        as work completes, from worker threads too, but never twice at once."""


def _run(engine: Engine | None, work: Callable, items: Sequence, progress: Progress | None, phase: str, *,
         count: Callable[[object], int] = lambda block: block.count, sample_bytes: int = 0,
         combine: Callable | None = None, cut: Callable | None = None) -> Iterator:
    """work over every item (a block, unless `count` says how many samples an item holds) on
    `engine` (threads when None), results in order; the progress display hears of each pass by
    name, and of each block as it completes (on engines in this process; elsewhere of each task).
    With `combine` (associative), each task folds a run of items' results into one, and the
    results are those of consecutive runs (engine.runs: the same runs on every engine). With
    `cut(run) -> task`, work is work(task, item) and each run carries its own task: a plan's
    per-sample tables cut to the run's samples, so a task's bytes grow with its share alone."""
    if engine is None:
        with ThreadEngine() as own:
            yield from _run(own, work, items, progress, phase, count=count, sample_bytes=sample_bytes,
                            combine=combine, cut=cut)
        return
    groups = runs(items) if combine is not None else [[item] for item in items]
    done = None
    if progress is not None:
        progress.phase(phase, sum(map(count, items)))
        advance = partial(_advance, progress, sample_bytes, threading.Lock())
        if engine.in_process:
            work = partial(_counting, work, advance, count)
        else:
            sizes = [sum(map(count, group)) for group in groups]
            done = lambda index: advance(sizes[index])
    if cut is not None:
        groups = [(cut(group), group) for group in groups]
        work = partial(_fold_own_task, work, combine)
    else:
        work = partial(fold_run, work, combine)
    yield from engine.map(work, groups) if done is None else engine.map(work, groups, done)


def _advance(progress: Progress, sample_bytes: int, lock: threading.Lock, samples: int) -> None:
    with lock:  # worker threads report too
        progress.advance(samples, samples * sample_bytes)


def _counting(work: Callable, advance: Callable[[int], None], count: Callable, *args):
    """work(*args) (its item last), then `advance` by the item's samples."""
    result = work(*args)
    advance(count(args[-1]))
    return result


def _fold_own_task(work: Callable, combine: Callable | None, task_and_run: tuple):
    """fold_run of work(task, item) over a run that carries its own task."""
    task, run = task_and_run
    return fold_run(partial(work, task), combine, run)


def _fold(total, value, combine=HistogramCounts.merge):
    """Running merge of results that may be None (nothing measured)."""
    if value is None:
        return total
    return value if total is None else combine(total, value)


def check_scope(dataset: Dataset, scope: Scope | str) -> None:
    scope = as_scope(scope)
    if scope.by_position and not dataset.uniform:
        raise InputError(f"--per {scope.name} needs samples of one size, but these images differ in size; "
                         "use --per channel, global or sample", dataset.inputs[0])


def _histograms_in_first_pass(dtype, scope: Scope, hist_range) -> bool:
    """Whether histograms need no pass of their own: value counts hold them, each sample's own
    range is in its block, or the range is given."""
    return counts_values(dtype, scope) or scope.per_sample or hist_range is not None


@dataclass(frozen=True)
class MeasureTask:
    """What pass 1 measures in each block: moments, and histograms when their edges are known
    (given `edges`, or `bins` over each sample's own range for per-sample scopes)."""

    scope: Scope
    layout: Layout
    ignore_nan: bool = False
    bins: int = 0
    edges: np.ndarray | None = None


def _counted(block: Block, scope: Scope) -> BlockStats | None:
    """A block's statistics at a counting scope from value counts its images' decoder makes (no
    arrays), or None: the block is read."""
    if not counts_values(block.dtype, scope):
        return None
    counts = block.band_counts()
    return None if counts is None else counted(counts, block.dtype, scope)


def measure_work(task: MeasureTask, block: Block) -> tuple[BlockStats, HistogramCounts | None]:
    stats = _counted(block, task.scope)
    if stats is not None:
        return stats, None  # the histograms come from the value counts
    chunk = block.read()
    stats = measure_block(chunk.data, task.scope, task.layout, first_sample=chunk.start, ignore_nan=task.ignore_nan)
    if not task.bins or stats.value_counts is not None:
        return stats, None
    if task.edges is not None:
        edges = task.edges if not task.scope.per_sample else np.repeat(task.edges[:1], len(chunk.data), axis=0)
    elif stats.moments is None:
        return stats, None  # NaN or inf: the run fails after this pass
    else:
        edges = histogram_edges(stats.moments.min, stats.moments.max, task.bins)
    counts = count_block(chunk.data, task.scope, task.layout, edges, first_sample=chunk.start)
    return stats, HistogramCounts(counts.counts, counts.first_row, counts.per_sample, edges)


@dataclass(frozen=True)
class HistogramTask:
    scope: Scope
    layout: Layout
    edges: np.ndarray


def histogram_work(task: HistogramTask, block: Block) -> HistogramCounts:
    chunk = block.read()
    return count_block(chunk.data, task.scope, task.layout, task.edges, first_sample=chunk.start)


def _merge_pairs(a, b):
    return merge(a[0], b[0]), _merge_counts(a[1], b[1])


def _merge_counts(a: HistogramCounts | None, b: HistogramCounts | None) -> HistogramCounts | None:
    return a.merge(b) if a is not None and b is not None else None


def measure(dataset: Dataset, scope, *, bins: int = DEFAULT_BINS, hist_range=None, ignore_nan: bool = False,
            engine: Engine | None = None, progress: Progress | None = None) -> Stats:
    """The statistics of `dataset` at `scope`: one pass for the moments (and the histograms when
    their edges are known up front), a second for histograms over the measured range."""
    scope = as_scope(scope)
    check_scope(dataset, scope)
    blocks = dataset.blocks()
    first_pass_bins = bins if _histograms_in_first_pass(dataset.dtype, scope, hist_range) else 0
    edges = None
    if hist_range is not None and bins:
        rows = 1 if scope.one_histogram or scope.per_sample else scope.keys(dataset.layout, dataset.sample_shape, 0)
        edges = histogram_edges(np.full(rows, hist_range[0]), np.full(rows, hist_range[1]), bins)
    task = MeasureTask(scope, dataset.layout, ignore_nan, first_pass_bins, edges)
    stats, counts = reduce(_merge_pairs, _run(engine, partial(measure_work, task), blocks, progress, "measuring",
                                              sample_bytes=_sample_bytes(dataset), combine=_merge_pairs))
    moments = checked(stats, dataset.locate, ignore_nan=ignore_nan)
    histograms = None
    if bins:
        if stats.value_counts is not None:
            histograms = histograms_from_counts(stats.value_counts, dataset.dtype,
                                                edges_for(scope, moments.min, moments.max, bins, hist_range))
        elif counts is not None:
            histograms = Histograms(counts.counts, counts.edges)
        else:
            edges = edges_for(scope, moments.min, moments.max, bins, hist_range)
            work = partial(histogram_work, HistogramTask(scope, dataset.layout, edges))
            counts = reduce(HistogramCounts.merge, _run(engine, work, blocks, progress, "histograms",
                                                        sample_bytes=_sample_bytes(dataset),
                                                        combine=HistogramCounts.merge))
            histograms = Histograms(counts.counts, edges)
    return _stats(dataset, scope, moments, histograms)


def _sample_bytes(dataset: Dataset) -> int:
    """About how many bytes one sample holds in memory (for the progress display's rate)."""
    return int(np.prod([d or 1 for d in dataset.sample_shape], dtype=np.int64)) * dataset.dtype.itemsize


def _stats(dataset: Dataset, scope: Scope, moments: Moments, histograms, *, dtype=None, samples=None) -> Stats:
    return Stats(dataset.inputs, dataset.n_samples if samples is None else samples,
                 dataset.sample_shape, str(dtype or dataset.dtype), dataset.layout.name, scope.name,
                 moments, histograms, sample_files(dataset) if scope.per_sample else None, dataset.alpha_passed)


def sample_files(dataset: Dataset) -> list[str] | None:
    """Each sample's file, for per-sample rows: an image in a folder, its path inside (under the
    folder's name when several inputs are given); any other input, its path as given (with #frame
    for a frame of an image file, as in a folder). None for a single array input, whose sample
    index says it all."""
    names = dataset.sample_names()
    if len(dataset.inputs) == 1 and names and names[0] is None:
        return None
    start = 0
    for name, part in zip(dataset.inputs, dataset.parts):
        if not Path(name).is_dir():
            tags = [h.frame_tag for h in part.headers] if isinstance(part, ImagePart) else [""] * part.n_samples
            names[start:start + part.n_samples] = [name + tag for tag in tags]
        start += part.n_samples
    return names


# -- transforms ---------------------------------------------------------------
class Plan:
    """What one transform does in each pass. The driver keeps the plan; what runs on workers is
    the picklable `fitter()` (pass 1, may be None) and `applier()` (pass 2). add_fit(), finish()
    and add_applied() run on the driver, in block order."""

    scope: Scope  # the scope of the before/after report
    samples: int | None = None  # how many samples the output holds (None: all)
    # How far past an 8/16-bit output's range the values may fall from the input's own quantisation
    # (the inverse of such an output): one input step, in output values; they are clamped silently.
    slack: float = 0.0

    def units(self, dataset: Dataset) -> list[Block]:
        """What both passes iterate over."""
        return dataset.blocks()

    def keeps(self, unit: Block) -> bool:
        """Whether the unit goes to the output (all of the input is measured either way)."""
        return True

    def original_index(self, position: int) -> int:
        """The sample index in the input of the `position`-th sample the passes see."""
        return position

    def fitter(self):
        """None, or a picklable object whose fit(chunk, layout, measured) returns what add_fit()
        merges; `measured` is the chunk's BlockStats at the plan's scope, taken in the same pass."""
        return None

    def add_fit(self, partial) -> None:
        pass

    def finish(self, before: Moments) -> tuple[np.ndarray, np.ndarray]:
        """Called after pass 1; returns the output's (low, high) per report key."""
        raise NotImplementedError

    def applier(self):
        """A picklable object whose apply(chunk, layout, out) writes the transformed chunk into
        `out` and may return a per-unit summary."""
        raise NotImplementedError

    def add_applied(self, summary) -> None:
        pass

    def saved_extra(self) -> dict:
        """What --save-stats stores beyond the input's statistics."""
        return {}


@dataclass(frozen=True)
class AffineApply:
    """One fixed affine map per key (rows of the sample scope taken by each chunk's position)."""

    scope: Scope
    affine: Affine
    clip: tuple[float, float] | None = None
    first: int = 0  # the sample of the affine's first row (per-sample maps cut to a task's samples)

    def apply(self, chunk: Chunk, layout: Layout, out: np.ndarray):
        affine = self.affine.rows(chunk.start - self.first, len(chunk.data)) if self.scope.per_sample else self.affine
        affine.apply(layout.npc(chunk.data), layout.npc(out), self.scope, self.clip)

    def cut(self, start: int, stop: int) -> "AffineApply":
        """Only the rows of samples start..stop (per-sample maps; any other is the same for all)."""
        if not self.scope.per_sample:
            return self
        return replace(self, affine=self.affine.rows(start - self.first, stop - start), first=start)


class ScalePlan(Plan):
    """One affine map per key over the whole dataset: normalize, standardize, their inverses,
    and batchnorm --eval (a fixed map from saved running statistics)."""

    def __init__(self, scope, make_affine: Callable[[Moments], Affine], *, fitted: Moments | None = None,
                 inverse: bool = False, clip: tuple[float, float] | None = None, input_scale: int | None = None,
                 saved: dict | None = None):
        """`input_scale`: the inputs are integers that stand for value * input_scale (an 8/16-bit
        output of normcli, read back for --inverse): divided by it before the map. `saved`: what
        --save-stats records of the map's own parameters (normalize's range)."""
        self.scope = as_scope(scope)
        self.saved = saved or {}
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
            steps = np.abs(self.affine.scale[np.isfinite(self.affine.scale)])
            self.slack = float(steps.max()) if steps.size else 0.0
        low, high = self.affine.bounds(before.min, before.max)
        if self.clip is not None:
            low, high = np.clip(low, *self.clip), np.clip(high, *self.clip)
        return low, high

    def applier(self):
        return AffineApply(self.scope, self.affine, self.clip)

    def saved_extra(self) -> dict:
        return self.saved


@dataclass
class BatchSummary:
    index: int
    size: int
    mean_before: float
    var_before: float
    mean_after: float = float("nan")
    var_after: float = float("nan")


def _batch_moments(data: np.ndarray, scope: Scope, layout: Layout, ignore_nan: bool) -> Moments | None:
    """One batch's moments; None for NaN/inf (left to the input's own check, which names the sample)."""
    return _usable(measure_block(data, scope, layout, ignore_nan=ignore_nan), ignore_nan)


def _usable(stats: BlockStats, ignore_nan: bool) -> Moments | None:
    return None if stats.nonfinite.total and not ignore_nan else stats.aggregate()


def _batch_affine(moments: Moments, size: int, gamma, beta, eps: float) -> Affine:
    if (moments.count < 2).any():
        raise UsageMismatch(
            f"a batch of {size} sample(s) has a single value per key, which has no variance to "
            "normalize by (PyTorch refuses it too); use --drop-last or another --batch-size")
    mean, whole = moments.centre()
    return batchnorm(mean, moments.var(0), gamma, beta, eps, whole)


@dataclass(frozen=True)
class BatchFit:
    """Pass 1 of batch norm, per batch: its moments at the scope, and over all its values."""

    scope: Scope
    ignore_nan: bool

    def fit(self, chunk: Chunk, layout: Layout, measured: BlockStats):
        return (len(chunk.data), _usable(measured, self.ignore_nan),
                _batch_moments(chunk.data, GLOBAL, layout, self.ignore_nan))


@dataclass(frozen=True)
class BatchApply:
    """Pass 2 of batch norm: each batch by its own moments; returns its mean and variance after."""

    scope: Scope
    gamma: np.ndarray
    beta: np.ndarray
    eps: float
    ignore_nan: bool

    def apply(self, chunk: Chunk, layout: Layout, out: np.ndarray):
        moments = _batch_moments(chunk.data, self.scope, layout, self.ignore_nan)
        affine = _batch_affine(moments, len(chunk.data), self.gamma, self.beta, self.eps)
        affine.apply(layout.npc(chunk.data), layout.npc(out), self.scope)
        after = _batch_moments(out, GLOBAL, layout, self.ignore_nan)
        return float(after.mean[0]), float(after.var()[0])


class BatchPlan(Plan):
    """Training-mode batch norm: each batch of `batch_size` by its own moments at `scope`."""

    def __init__(self, dataset: Dataset, scope, batch_size: int, gamma, beta, eps: float, *,
                 momentum: float | None = 0.1, drop_last: bool = False, order: np.ndarray | None = None,
                 seed: int | None = None, ignore_nan: bool = False):
        """`order`: the input index of each position (--shuffle), made from `seed` (sources.shuffled_order)."""
        self.scope = as_scope(scope)
        self.batch_size = batch_size
        self.gamma, self.beta, self.eps = gamma, beta, eps
        self.order, self.seed = order, seed
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

    def units(self, dataset: Dataset) -> list[Block]:
        return dataset.batches(self.batch_size, self.order)

    def keeps(self, unit: Block) -> bool:
        """Not the short last batch that --drop-last leaves out."""
        return unit.start < self.samples

    def original_index(self, position: int) -> int:
        return position if self.order is None else int(self.order[position])

    def fitter(self):
        return BatchFit(self.scope, self.ignore_nan)

    def add_fit(self, partial) -> None:
        size, moments, whole = partial
        if moments is None or len(self.batches) == self.n_batches:  # NaN (reported later), or dropped
            return
        affine = _batch_affine(moments, size, self.gamma, self.beta, self.eps)
        self.running.update(moments)
        low, high = affine.bounds(moments.min, moments.max)
        self.low, self.high = np.fmin(self.low, low), np.fmax(self.high, high)
        self.batches.append(BatchSummary(len(self.batches), size, float(whole.mean[0]), float(whole.var()[0])))

    def finish(self, before: Moments):
        return self.low, self.high

    def applier(self):
        return BatchApply(self.scope, self.gamma, self.beta, self.eps, self.ignore_nan)

    def add_applied(self, summary) -> None:
        self.batches[self.applied].mean_after, self.batches[self.applied].var_after = summary
        self.applied += 1

    def saved_extra(self) -> dict:
        """The running statistics, for batchnorm --eval --stats-from; with --shuffle, the input index
        of each output sample ("order"), so that outputs pair with their labels, and how it was made."""
        momentum = self.running.momentum
        extra = {"running_mean": self.running.mean, "running_var": self.running.var,
                 "momentum": "cumulative" if momentum is None else momentum, "batches": self.running.batches}
        if self.order is not None:
            extra["order"] = [int(i) for i in self.order[:self.samples]]
            extra["shuffle"] = {"generator": "numpy PCG64", "call": "numpy.random.default_rng(seed).permutation(n)",
                                "seed": self.seed, "n": len(self.order)}
        return extra


def eval_plan(saved, path: str, scope, gamma: np.ndarray, beta: np.ndarray, eps: float) -> ScalePlan:
    """batchnorm --eval: one fixed map from the running statistics saved by batchnorm --save-stats."""
    if "running_mean" not in saved.extra:
        raise StatsFileError("holds no running statistics; make it with batchnorm --save-stats", path)
    mean, var = saved.extra["running_mean"], saved.extra["running_var"]
    return ScalePlan(scope, lambda _: batchnorm(mean, var, gamma, beta, eps))


@dataclass(frozen=True)
class GroupMaps:
    """Group norm of each chunk: pass 1 finds the output's range, pass 2 writes the output."""

    groups: int
    gamma: np.ndarray
    beta: np.ndarray
    eps: float
    ignore_nan: bool

    def _maps(self, x: np.ndarray):
        return groupnorm_affine(x, self.groups, self.gamma, self.beta, self.eps, self.ignore_nan)

    def fit(self, chunk: Chunk, layout: Layout, measured: BlockStats):
        x = layout.npc(chunk.data)
        shift, scale, offset, whole = self._maps(x)
        with np.errstate(invalid="ignore"):
            a = deviations(x.min(axis=1, keepdims=True), shift, whole) * scale + offset
            b = deviations(x.max(axis=1, keepdims=True), shift, whole) * scale + offset
        return np.fmin(a, b).min(axis=(0, 1)), np.fmax(a, b).max(axis=(0, 1))

    def apply(self, chunk: Chunk, layout: Layout, out: np.ndarray):
        x = layout.npc(chunk.data)
        shift, scale, offset, whole = self._maps(x)
        apply_broadcast(x, shift, scale, offset, layout.npc(out), whole=whole)


class GroupPlan(Plan):
    """Group norm: each sample's groups of channels by their own moments; reported per channel."""

    def __init__(self, groups: int, gamma: np.ndarray, beta: np.ndarray, eps: float, *, ignore_nan: bool = False):
        self.scope = CHANNEL
        self.maps = GroupMaps(groups, gamma, beta, eps, ignore_nan)
        self.low = np.full(len(gamma), np.inf)
        self.high = np.full(len(gamma), -np.inf)

    def fitter(self):
        return self.maps

    def add_fit(self, partial) -> None:
        self.low, self.high = np.fmin(self.low, partial[0]), np.fmax(self.high, partial[1])

    def finish(self, before: Moments):
        return self.low, self.high

    def applier(self):
        return self.maps


# -- the work of each pass, on any engine -------------------------------------------
@dataclass(frozen=True)
class FitTask:
    scope: Scope
    layout: Layout
    ignore_nan: bool
    fitter: object | None


def fit_work(task: FitTask, block: Block):
    stats = _counted(block, task.scope) if task.fitter is None else None
    if stats is not None:
        return stats, ()
    chunk = block.read()
    before = measure_block(chunk.data, task.scope, task.layout, first_sample=chunk.start,
                           ignore_nan=task.ignore_nan)
    # the fitter gets the block's statistics at the plan's scope too: batch norm fits by them
    return before, ((task.fitter.fit(chunk, task.layout, before),) if task.fitter is not None else ())


def _merge_fits(a, b):
    """Two consecutive runs' (statistics, fits): the fits stay apart, in order, for add_fit."""
    return merge(a[0], b[0]), a[1] + b[1]


@dataclass(frozen=True)
class ApplyTask:
    """Pass 2 for one block: histogram the input, apply, put non-finite values back, measure the
    output, and write it at its position (or hand it back, for outputs written in order)."""

    scope: Scope
    layout: Layout
    applier: object
    writer: object
    work_dtype: np.dtype
    ignore_nan: bool
    report: bool
    before_edges: np.ndarray | None
    after_edges: np.ndarray | None
    alpha_factor: float = 1.0  # passed-through alpha: written as alpha * alpha_factor (see _alpha_factor)
    check_finite: bool = False  # no pass 1 looked for NaN and inf (and overflow): look here
    table: "ValueTable | None" = None  # 8-bit input to an integer output, nothing measured: look values up
    clamp: tuple[float, float] | None = None  # the integer output's range, for values within Plan.slack of it
    first: int = 0  # the sample of the per-sample edges' first row (see cut)

    def cut(self, run: list) -> "ApplyTask":
        """This task for one run of (block, keep) items: per-sample tables (the affine maps, the
        report's edges) cut to the run's samples, so that no task carries every sample's rows."""
        if not self.scope.per_sample:
            return self
        start, stop = run[0][0].start, run[-1][0].start + run[-1][0].count
        edges = [None if e is None else e[start - self.first:stop - self.first]
                 for e in (self.before_edges, self.after_edges)]
        applier = self.applier.cut(start, stop) if hasattr(self.applier, "cut") else self.applier
        return replace(self, applier=applier, before_edges=edges[0], after_edges=edges[1], first=start)


@dataclass(frozen=True)
class Applied:
    """What pass 2 did with consecutive blocks: what it measured, and the applier's summaries."""

    before_counts: HistogramCounts | None
    after_stats: BlockStats | None
    after_counts: HistogramCounts | None
    summaries: tuple
    clipped: int
    written: int
    data: np.ndarray | None  # for outputs written in order by the driver
    nonfinite: NonFinite = NonFinite()  # with check_finite: what the block held (it was not written)

    def merge(self, other: "Applied") -> "Applied":
        """Both runs' (`other` the later), without the data (an in-order output has written it)."""
        return Applied(_fold(self.before_counts, other.before_counts),
                       _fold(self.after_stats, other.after_stats, merge),
                       _fold(self.after_counts, other.after_counts), self.summaries + other.summaries,
                       self.clipped + other.clipped, self.written + other.written, None,
                       self.nonfinite.merge(other.nonfinite))


def apply_work(task: ApplyTask, item: tuple[Block, bool]) -> Applied:
    block, keep = item
    chunk = block.read()
    before_counts = (count_block(chunk.data, task.scope, task.layout, _rows(task.before_edges, task, chunk),
                                 first_sample=chunk.start) if task.before_edges is not None else None)
    if not keep:
        return Applied(before_counts, None, None, (), 0, 0, None)
    if task.table is not None:
        encoded = np.empty(chunk.data.shape, task.writer.dtype)
        clipped = task.table.encode(task.layout.npc(chunk.data), task.layout.npc(encoded))
        sinks.check_clipped(clipped, task.writer.clip, task.writer.dtype, task.writer.target, task.writer.scale)
        return _written(task, chunk, encoded, Applied(before_counts, None, None, (None,), clipped, len(encoded), None))
    out = np.empty(chunk.data.shape, task.work_dtype)
    summary = task.applier.apply(chunk, task.layout, out)
    if task.clamp is not None:
        np.clip(out, *task.clamp, out=out)
    # A finite map of finite values is finite: only a block whose output is not looks at its input.
    if task.check_finite and not np.isfinite(out).all():
        if not np.isfinite(chunk.data).all():
            found = measure_block(chunk.data, task.scope, task.layout, first_sample=chunk.start).nonfinite
            return Applied(before_counts, None, None, (), 0, 0, None, found)
        raise OutputError(f"the output overflows {task.writer.dtype.name}; pass --dtype float64", task.writer.target)
    if task.ignore_nan:
        np.copyto(out, chunk.data, where=~np.isfinite(chunk.data))
    after_stats = (measure_block(out, task.scope, task.layout, first_sample=chunk.start, ignore_nan=task.ignore_nan)
                   if task.report else None)
    after_counts = (count_block(out, task.scope, task.layout, _rows(task.after_edges, task, chunk),
                                clamp=True, first_sample=chunk.start) if task.after_edges is not None else None)
    if chunk.alpha is not None:
        out = np.concatenate([out, (chunk.alpha * task.alpha_factor).astype(out.dtype)], axis=-1)
    encoded, clipped = task.writer.encode(out)
    return _written(task, chunk, encoded, Applied(before_counts, after_stats, after_counts, (summary,), clipped,
                                                  len(out), None))


def _written(task: ApplyTask, chunk: Chunk, encoded: np.ndarray, applied: Applied) -> Applied:
    """Write a block's output at its position, or hand it back to be written in order."""
    if not task.writer.positional:
        return replace(applied, data=encoded)
    task.writer.write(encoded, chunk.start, chunk.names, chunk.profiles)
    return applied


@dataclass(frozen=True)
class ValueTable:
    """What every value of an 8-bit input becomes in an integer output, per channel (or one column
    for all channels): a block is then one lookup a channel, which stores the same integers as
    mapping and encoding each value (3.5x faster)."""

    encoded: np.ndarray  # (256, columns) in the output's dtype
    outside: np.ndarray  # (256, columns): which values were clipped to fit

    def encode(self, v: np.ndarray, out: np.ndarray) -> int:
        """The encoded (samples, positions, channels) view `v`, into `out`; how many values clipped."""
        clipped = 0
        for c in range(v.shape[2]):
            column = c if self.encoded.shape[1] > 1 else 0
            out[..., c] = np.take(self.encoded[:, column], v[..., c])
            if self.outside[:, column].any():
                clipped += int(np.count_nonzero(np.take(self.outside[:, column], v[..., c])))
        return clipped


def value_table(applier, channels: int, work_dtype: np.dtype, writer, clamp=None) -> ValueTable | None:
    """The table of a fixed per-key affine map (AffineApply at a scope whose keys are channels, or
    one key) into `writer`'s integers, its values clamped to `clamp` if given; None for any other applier."""
    if not isinstance(applier, AffineApply) or applier.scope.per_sample or applier.scope.by_position:
        return None
    columns = 1 if applier.scope.single_key else channels
    values = np.repeat(np.arange(256, dtype=np.uint8)[:, None], columns, axis=1)[None]  # (1, 256, columns)
    mapped = np.empty(values.shape, work_dtype)
    applier.affine.apply(values, mapped, applier.scope, applier.clip)
    if not np.isfinite(mapped).all():
        return None
    if clamp is not None:
        np.clip(mapped, *clamp, out=mapped)
    return ValueTable(*sinks.encode_all(mapped[0], writer.dtype, writer.scale))


def _alpha_factor(spec, input_dtype: np.dtype) -> float:
    """What passed-through alpha is multiplied by to come out as the same opacity: an 8/16-bit output
    stores it on its own integer range (the same values when the bit depth is kept); a float output
    holds the input's alpha values as they are."""
    if spec.dtype.kind != "u":
        return 1.0
    top = np.iinfo(spec.dtype).max
    input_top = np.iinfo(input_dtype).max if input_dtype.kind in "ui" else 1.0
    return top / (input_top * (spec.scale or top))


def _rows(edges: np.ndarray, task: ApplyTask, chunk: Chunk) -> np.ndarray:
    """The edges of a chunk's histogram rows (its own samples' rows for per-sample scopes)."""
    start = chunk.start - task.first
    return edges[start:start + len(chunk.data)] if task.scope.per_sample else edges


def _check_float_range(spec, low: float, high: float) -> None:
    """Refuse, before writing, values beyond what a float output holds (they would be inf)."""
    if spec.dtype.kind == "f" and max(abs(low), abs(high)) > float(np.finfo(spec.dtype).max):
        raise OutputError(f"the output reaches {max(abs(low), abs(high)):.3g}, beyond what {spec.dtype.name} holds; "
                          "pass --dtype float64 (or a smaller --gamma / --range)", spec.target)


def _warn_if_too_coarse(out_dtype: np.dtype, low: float, high: float) -> None:
    """Warn when a float32 output cannot hold its values to a useful precision: far from zero
    with a small spread, as the inverse of data with a large offset."""
    if out_dtype != np.float32:
        return
    spacing = float(np.spacing(np.float32(max(abs(low), abs(high)))))
    if high > low and spacing > 1e-4 * (high - low):
        warnings.warn(NormcliWarning(
            f"float32 output holds values near {max(abs(low), abs(high)):.3g} only to steps of {spacing:.3g}, "
            f"coarse for their spread of {high - low:.3g}; pass --dtype float64 to keep the input's precision"))


def _fit_pass(dataset: Dataset, plan: Plan, units: list[Block], ignore_nan: bool, engine, progress) -> Moments:
    """Pass 1: the input's moments at the plan's scope, and the plan's fit."""
    fit = partial(fit_work, FitTask(plan.scope, dataset.layout, ignore_nan, plan.fitter()))
    before_stats = None
    for stats, fits in _run(engine, fit, units, progress, "fitting", sample_bytes=_sample_bytes(dataset),
                            combine=_merge_fits):
        before_stats = _fold(before_stats, stats, merge)
        for fitted in fits:
            plan.add_fit(fitted)
    if before_stats.nonfinite.first is not None:  # a position in the passes' order: name the input's sample
        found = replace(before_stats.nonfinite, first=plan.original_index(before_stats.nonfinite.first))
        before_stats = replace(before_stats, nonfinite=found)
    return checked(before_stats, dataset.locate, ignore_nan=ignore_nan)


@dataclass
class TransformResult:
    before: Stats | None  # None when no pass measured the input (saved statistics applied, no report)
    after: Stats | None
    plan: Plan
    clipped: int  # values clipped to fit an 8/16-bit output
    written: str = ""  # what was written, as the closing report line says it
    encoding: dict | None = None  # how an 8/16-bit output stores its values (OutputSpec.encoding)


def transform(dataset: Dataset, plan: Plan, output: str, *, dtype: str | None = None, ext: str | None = None,
              clip: bool = False, force: bool = False, bins: int = DEFAULT_BINS, ignore_nan: bool = False,
              report: bool = True, engine: Engine | None = None, progress: Progress | None = None,
              outputs: sinks.Outputs | None = None, stdout=None) -> TransformResult:
    """Run `plan` over `dataset` into `output`, which appears only if everything succeeded.

    Pass 1: the input's moments and the plan's fit. The output's predicted range is then
    checked against what the output can hold, before anything is written. Pass 2: apply,
    write, and (unless `report` is off: then `after` is None) measure the input's histograms
    and the output's statistics. With `outputs` (the run's sinks.Outputs), the output is staged
    there and appears when they commit. `stdout`: the binary stream an output `-` is written to.
    """
    bins = bins if report else 0
    spec = sinks.plan_output(output, dataset=dataset, dtype=dtype, ext=ext, force=force)
    scope = plan.scope
    check_scope(dataset, scope)
    units = plan.units(dataset)
    # Applying saved statistics to a float output without a report needs nothing from a pass 1:
    # NaN/inf are then looked for while writing.
    one_pass = not report and spec.dtype.kind == "f" and getattr(plan, "fitted", None) is not None
    if one_pass:
        before = plan.fitted
    else:
        before = _fit_pass(dataset, plan, units, ignore_nan, engine, progress)
    low, high = plan.finish(before)
    finite = np.concatenate([low, high])
    finite = finite[np.isfinite(finite)]
    clamp = None
    if finite.size:
        clamp = sinks.choose_encoding(spec, finite.min(), finite.max(), clip, plan.slack)
        _check_float_range(spec, finite.min(), finite.max())
        _warn_if_too_coarse(spec.dtype, finite.min(), finite.max())
    samples = plan.samples if plan.samples is not None else dataset.n_samples

    # Float outputs are measured as written; integer ones as the floats they encode, in float64 so that
    # each integer is round(exact value * scale).
    work_dtype = np.dtype(np.float64 if spec.dtype == np.float64 or spec.encoding() else np.float32)
    before_edges = after_edges = None
    if bins:
        before_edges = edges_for(scope, before.min, before.max, bins)
        after_edges = edges_for(scope, low, high, bins)
    sink = sinks.Sink(spec, dataset.layout, dataset.output_shape, samples, key=dataset.key, clip=clip,
                      outputs=outputs, stdout=stdout)
    try:
        applier = plan.applier()
        table = (value_table(applier, dataset.channels, work_dtype, sink.writer, clamp)
                 if not report and spec.encoding() and dataset.dtype == np.uint8 and not dataset.alpha_passed
                 else None)
        task = ApplyTask(scope, dataset.layout, applier, sink.writer, work_dtype, ignore_nan, report,
                         before_edges, after_edges, _alpha_factor(spec, dataset.dtype),
                         check_finite=one_pass and not ignore_nan, table=table, clamp=clamp)
        items = [(unit, plan.keeps(unit)) for unit in units]
        done = Applied(None, None, None, (), 0, 0, None)  # nothing yet; merged with each result in order
        for applied in _run(engine, apply_work, items, progress, "writing", count=lambda item: item[0].count,
                            sample_bytes=_sample_bytes(dataset),
                            combine=Applied.merge if sink.writer.positional else None, cut=task.cut):
            if applied.data is not None:
                sink.write_in_order(applied.data)
            done = done.merge(applied)
        nonfinite = done.nonfinite
        if nonfinite.total:
            raise nonfinite_error(replace(nonfinite, first=plan.original_index(nonfinite.first)), dataset.locate)
        sink.written = done.written
        for summary in done.summaries:
            plan.add_applied(summary)
        sink.commit()
    except BaseException:
        if engine is not None:
            engine.stop()  # no task may still write into what discard() removes
        sink.discard()
        raise
    if one_pass:
        return TransformResult(None, None, plan, done.clipped, sink.describe(), spec.encoding())
    before_result = _stats(dataset, scope, before,
                           Histograms(done.before_counts.counts, before_edges) if bins else None)
    after_result = None
    if report:
        after_result = _stats(dataset, scope, done.after_stats.aggregate(),
                              Histograms(done.after_counts.counts, after_edges) if bins else None,
                              dtype=spec.dtype, samples=samples)
    return TransformResult(before_result, after_result, plan, done.clipped, sink.describe(), spec.encoding())
