"""The statistics pass that `stats` and every fit share (pass 1), and the histogram pass that
follows it where the histograms' range is known only after it: block functions for
reduction.reduce, pure and picklable, with an associative merge.

Pass 1 takes each block's moments at the scope (value counts for 8/16-bit integers, from the
decoder's own counts where it has them), histograms where their edges are known up front (given,
or each sample's own range at per-sample scopes), a plan's fit of the block, and the first
quantile pass (quantiles.py), which needs no range: 8/16-bit value counts need none at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from normcli import quantiles
from normcli.errors import InputError
from normcli.histograms import HistogramCounts, count_block, histogram_edges
from normcli.layout import Layout
from normcli.moments import BlockStats, from_value_counts, keeps_value_counts, measure_block, merge
from normcli.reduction import Pass, on_chunks
from normcli.scopes import Scope
from normcli.sources import Block, Chunk


@dataclass(frozen=True)
class StatsTask:
    """What pass 1 takes of each block: moments, histograms when their edges are known (given
    `edges`, or `bins` over each sample's own range for per-sample scopes), the fit of `fitter`
    (a plans.Fitter, which gets the block's statistics at the scope too) and the first quantile
    pass `quantiles` (quantile_opening's)."""

    scope: Scope
    layout: Layout
    ignore_nan: bool = False
    bins: int = 0
    edges: np.ndarray | None = None
    fitter: object | None = None
    quantiles: quantiles.Task | quantiles.SampleTask | None = None


@dataclass(frozen=True)
class Measured:
    """Pass 1's partial of consecutive blocks: their statistics, histogram counts (None where
    not taken in this pass), the fitter's partial fits, in block order, and the first quantile
    pass's partial (None where not taken)."""

    stats: BlockStats
    counts: HistogramCounts | None = None
    fits: tuple = ()
    quantiles: quantiles.Partial | quantiles.SampleResults | None = None

    def merge(self, later: "Measured") -> "Measured":
        return Measured(merge(self.stats, later.stats), _both(self.counts, later.counts), self.fits + later.fits,
                        _both(self.quantiles, later.quantiles))


def _both(partial, later):
    """The merge of two blocks' partials of one kind, None unless both blocks took it."""
    return partial.merge(later) if partial is not None and later is not None else None


def stats_pass(task: StatsTask, name: str, sample_bytes: int = 0) -> Pass[Measured]:
    """Pass 1 as a reduction.Pass, called `name` in the progress display."""
    return Pass(name, stats_work, task, sample_bytes=sample_bytes)


def stats_work(task: StatsTask, block: Block) -> Measured:
    if task.fitter is None:
        stats = _counted(block, task.scope)
        if stats is not None:
            return Measured(stats)  # the histograms come from the value counts
    chunk = block.read()
    stats = measure_block(chunk.data, task.scope, task.layout, first_sample=chunk.start, ignore_nan=task.ignore_nan)
    fits = (task.fitter.fit(chunk, task.layout, stats),) if task.fitter is not None else ()
    counted = quantiles.work(task.quantiles, chunk.data, chunk.start) if task.quantiles is not None else None
    return Measured(stats, _first_counts(task, chunk, stats), fits, counted)


def _counted(block: Block, scope: Scope) -> BlockStats | None:
    """A block's statistics at a counting scope from value counts its images' decoder makes (no
    arrays), or None: the block is read."""
    if not keeps_value_counts(block.dtype, scope):
        return None
    counts = block.value_counts()
    return None if counts is None else from_value_counts(counts, block.dtype, scope)


def _first_counts(task: StatsTask, chunk: Chunk, stats: BlockStats) -> HistogramCounts | None:
    """The chunk's histograms, where pass 1 takes them (else None)."""
    if not task.bins or stats.value_counts is not None:
        return None
    if task.edges is not None:
        edges = task.edges if not task.scope.per_sample else np.repeat(task.edges[:1], len(chunk.data), axis=0)
    elif stats.moments is None:
        return None  # NaN or inf: the run fails after this pass
    else:
        edges = histogram_edges(stats.moments.min, stats.moments.max, task.bins)
    counts = count_block(chunk.data, task.scope, task.layout, edges, first_sample=chunk.start)
    return HistogramCounts(counts.counts, counts.first_row, counts.per_sample, edges)


@dataclass(frozen=True)
class HistogramTask:
    scope: Scope
    layout: Layout
    edges: np.ndarray


def histogram_work(task: HistogramTask, block: Block) -> HistogramCounts:
    chunk = block.read()
    return count_block(chunk.data, task.scope, task.layout, task.edges, first_sample=chunk.start)


def quantile_opening(request: quantiles.Request | None, dataset, scope: Scope) -> quantiles.State | None:
    """The quantile passes' start (None without a request)."""
    if request is None:
        return None
    if dataset.dtype.kind == "b":
        raise InputError("holds booleans, which have no percentiles (numpy cannot interpolate them); "
                         "convert them to integers first", dataset.inputs[0])
    keys = scope.keys(dataset.layout, dataset.sample_shape, dataset.n_samples)
    return quantiles.first(request, dataset.dtype, scope, dataset.layout, keys)


def opening_task(opening: quantiles.State | None) -> quantiles.Task | quantiles.SampleTask | None:
    """The first quantile pass, which the statistics pass takes (StatsTask.quantiles): none for
    8/16-bit integers, whose value counts give the quantiles."""
    if opening is None or keeps_value_counts(opening.dtype, opening.scope):
        return None
    return quantiles.next_task(opening)


def quantile_state(opening: quantiles.State | None, first: Measured) -> quantiles.State | None:
    """The quantile state after the statistics pass `first` (None without a request): `opening`
    finished by the value counts, or advanced by its first pass."""
    if opening is None:
        return None
    if first.stats.value_counts is not None:
        return quantiles.counted(opening, first.stats.value_counts)
    return quantiles.advance(opening, first.quantiles)


def quantile_pass(state: quantiles.State | None, sample_bytes: int = 0) -> Pass | None:
    """The next quantile pass over the data, or None: every quantile is known."""
    task = None if state is None else quantiles.next_task(state)
    if task is None:
        return None
    return Pass("percentiles", on_chunks(quantiles.work), task, sample_bytes=sample_bytes)
