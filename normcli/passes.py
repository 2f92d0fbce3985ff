"""The passes over a dataset, run through reduction.reduce: measure (source -> moments ->
histograms) and transform (source -> fit -> transform -> sink), each pass a pure block function
merged in block order on the driver.

`stats` is the statistics pass (statspass.py, which takes the first quantile pass of
--percentiles too), a second for the histograms where their range is known only after it, and the
rest of the quantile passes. A transform shares that first pass (with its plan's fit and first
quantile pass), then runs the plan's own passes (plans.Plan.next_pass: QuantilePlan's quantile
passes), then the last: apply the fitted map, write each block into the temporary output
at its position, and measure the input's histograms and the output's statistics (applypass.py).
Memory is bounded by a few blocks (or batches) in flight.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import numpy as np

from normcli import encoding, quantiles, sinks
from normcli.applypass import Applied, ApplyTask, apply_work
from normcli.engine import Engine
from normcli.errors import InputError
from normcli.histograms import Histograms, edges_for, histogram_edges, histograms_from_value_counts
from normcli.moments import Moments, checked, keeps_value_counts, nonfinite_error
from normcli.options import Output
from normcli.plans import Plan
from normcli.reduction import Pass, Progress, reduce, reduce_passes
from normcli.scopes import Scope, scope as as_scope
from normcli.sources import Dataset
from normcli.statspass import (HistogramTask, Measured, StatsTask, histogram_work, opening_task, quantile_opening,
                               quantile_pass, quantile_state, stats_pass)

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
    names: list[str] | None = None  # at sample scope: each sample's file (see Dataset.sample_files)
    alpha_passed: bool = False  # images whose alpha channel is left out of the statistics
    percentiles: "Percentiles | None" = None


@dataclass(frozen=True)
class Percentiles:
    """Percentiles `q` per scope key, exactly np.percentile's (np.nanpercentile's with NaN left out)
    over the key's values with numpy's `method`: `values[k]` holds key k's, one per q."""

    q: tuple[float, ...]
    method: str
    values: list


@dataclass
class StatsPlan:
    """`stats` as passes (reduction.Passes): the statistics pass (which takes the first quantile
    pass of `request`, if any), then one for the histograms where their range is known only after
    it, then the rest of the quantile passes."""

    dataset: Dataset
    scope: Scope
    bins: int
    hist_range: tuple[float, float] | None
    ignore_nan: bool
    request: quantiles.Request | None = None
    moments: Moments | None = None  # after the first pass
    quantiles: quantiles.State | None = None  # before the first pass, advanced by each quantile pass
    counting: bool = False  # whether the last pass asked for was a quantile pass

    def next_pass(self, results: tuple) -> Pass | None:
        if not results:
            return self._stats_pass()
        if len(results) == 1:
            first: Measured = results[0]
            self.moments = checked(first.stats, self.dataset.locate, ignore_nan=self.ignore_nan)
            self.quantiles = quantile_state(self.quantiles, first)
            if self.bins and first.stats.value_counts is None and first.counts is None:
                edges = edges_for(self.scope, self.moments.min, self.moments.max, self.bins, self.hist_range)
                return Pass("histograms", histogram_work, HistogramTask(self.scope, self.dataset.layout, edges),
                            sample_bytes=_sample_bytes(self.dataset))
        elif self.counting:
            self.quantiles = quantiles.advance(self.quantiles, results[-1])
        return self._quantile_pass()

    def _stats_pass(self) -> Pass:
        dataset, scope, bins = self.dataset, self.scope, self.bins
        first_bins = bins if _histograms_in_first_pass(dataset.dtype, scope, self.hist_range) else 0
        edges = None
        if self.hist_range is not None and bins:
            rows = 1 if scope.one_histogram or scope.per_sample else scope.keys(dataset.layout,
                                                                                 dataset.sample_shape, 0)
            edges = histogram_edges(np.full(rows, self.hist_range[0]), np.full(rows, self.hist_range[1]), bins)
        self.quantiles = quantile_opening(self.request, dataset, scope)
        task = StatsTask(scope, dataset.layout, self.ignore_nan, first_bins, edges, quantiles=opening_task(self.quantiles))
        return stats_pass(task, "measuring", _sample_bytes(dataset))

    def _quantile_pass(self) -> Pass | None:
        step = quantile_pass(self.quantiles, _sample_bytes(self.dataset))
        self.counting = step is not None
        return step

    def histograms(self, results: tuple) -> Histograms | None:
        """The histograms that the passes' `results` hold (None without bins)."""
        first = results[0]
        if not self.bins:
            return None
        if first.counts is not None:
            return Histograms(first.counts.counts, first.counts.edges)
        edges = edges_for(self.scope, self.moments.min, self.moments.max, self.bins, self.hist_range)
        if first.stats.value_counts is not None:
            return histograms_from_value_counts(first.stats.value_counts, self.dataset.dtype, edges)
        return Histograms(results[1].counts, edges)

    def percentiles(self) -> Percentiles | None:
        """The percentiles, once every pass has run (None if none were asked for)."""
        if self.request is None:
            return None
        return Percentiles(self.request.q, self.request.method, quantiles.results(self.quantiles))


def measure(dataset: Dataset, scope, *, bins: int = DEFAULT_BINS, hist_range=None, ignore_nan: bool = False,
            request: quantiles.Request | None = None, engine: Engine | None = None,
            progress: Progress | None = None) -> Stats:
    """The statistics of `dataset` at `scope`: one pass for the moments (and the histograms when
    their edges are known up front, and the first quantile pass of `request`), a second for
    histograms over the measured range, then the rest of the quantile passes (none for 8/16-bit
    integers, whose values are counted, and for per-sample quantiles)."""
    scope = as_scope(scope)
    check_scope(dataset, scope)
    plan = StatsPlan(dataset, scope, bins, hist_range, ignore_nan, request)
    results = reduce_passes(engine, plan, dataset.blocks(), progress)
    stats = _stats(dataset, scope, plan.moments, plan.histograms(results))
    return replace(stats, percentiles=plan.percentiles())


def check_scope(dataset: Dataset, scope: Scope | str) -> None:
    scope = as_scope(scope)
    if scope.by_position and not dataset.uniform:
        raise InputError(f"--per {scope.name} needs samples of one size, but these images differ in size; "
                         "use --per channel, global or sample", dataset.inputs[0])


def _histograms_in_first_pass(dtype, scope: Scope, hist_range) -> bool:
    """Whether histograms need no pass of their own: value counts hold them, each sample's own
    range is in its block, or the range is given."""
    return keeps_value_counts(dtype, scope) or scope.per_sample or hist_range is not None


def _sample_bytes(dataset: Dataset) -> int:
    """About how many bytes one sample holds in memory (for the progress display's rate)."""
    return int(np.prod([d or 1 for d in dataset.sample_shape], dtype=np.int64)) * dataset.dtype.itemsize


def _stats(dataset: Dataset, scope: Scope, moments: Moments, histograms, *, dtype=None, samples=None) -> Stats:
    return Stats(dataset.inputs, dataset.n_samples if samples is None else samples,
                 dataset.sample_shape, str(dtype or dataset.dtype), dataset.layout.name, scope.name,
                 moments, histograms, dataset.sample_files() if scope.per_sample else None, dataset.alpha_passed)


@dataclass(frozen=True)
class Measuring:
    """What a transform measures besides what it fits: histograms of `bins` (0: none) before and
    after, and (`report`) the output's statistics; `ignore_nan` leaves NaN and inf out of both."""

    bins: int = DEFAULT_BINS
    ignore_nan: bool = False
    report: bool = True


@dataclass
class TransformResult:
    before: Stats | None  # None when no pass measured the input (saved statistics applied, no report)
    after: Stats | None
    plan: Plan
    clipped: int  # values clipped to fit an 8/16-bit output
    written: str = ""  # what was written, as the closing report line says it
    encoding: dict | None = None  # how an 8/16-bit output stores its values (OutputSpec.encoding)


def transform(dataset: Dataset, plan: Plan, output: Output, outputs: sinks.Outputs,
              measuring: Measuring = Measuring(), engine: Engine | None = None,
              progress: Progress | None = None) -> TransformResult:
    """Run `plan` over `dataset` into `output`, staged in the run's `outputs` (it appears as they commit).

    The fit: the statistics pass with the plan's fitter, then the plan's own passes. The output's
    predicted range is then checked against what the output can hold, before anything is written.
    The last pass: apply, write, and (unless `measuring.report` is off: then `after` is None)
    measure the input's histograms and the output's statistics."""
    bins = measuring.bins if measuring.report else 0
    spec = sinks.plan_output(output.target, dataset=dataset, dtype=output.dtype, ext=output.ext, force=output.force,
                             compressor=output.compressor, key=output.output_key)
    check_scope(dataset, plan.scope)
    units = plan.units(dataset)
    # Applying saved statistics to a float output without a report needs nothing from a pass 1:
    # NaN/inf are then looked for while writing.
    one_pass = not measuring.report and spec.dtype.kind == "f" and plan.fitted is not None
    before = plan.fitted if one_pass else _fit(dataset, plan, units, measuring.ignore_nan, engine, progress)
    low, high = plan.finish(before)
    encoding.guard_range(spec, low, high, output.clip, plan.slack)
    samples = plan.samples if plan.samples is not None else dataset.n_samples
    edges = (edges_for(plan.scope, before.min, before.max, bins), edges_for(plan.scope, low, high, bins)) if bins \
        else (None, None)
    spec.starts = tuple(unit.start for unit in units)
    sink = sinks.Sink(spec, dataset.layout, dataset.output_shape, samples, outputs, clip=output.clip)
    try:
        task = _apply_task(dataset, plan, spec, sink.writer, measuring, edges,
                           check_finite=one_pass and not measuring.ignore_nan)
        each = partial(_write_in_order, sink) if sink.in_order else None
        done = reduce(engine, Pass("writing", apply_work, task, ApplyTask.share, each, _sample_bytes(dataset)),
                      units, progress)
        if done.nonfinite.total:
            raise nonfinite_error(replace(done.nonfinite, first=plan.original_index(done.nonfinite.first)),
                                  dataset.locate)
        for summary in done.summaries:
            plan.add_applied(summary)
        sink.finish(done.stored)
    except BaseException:
        if engine is not None:
            engine.stop()  # no task may still write into what the run's Outputs discard
        sink.stop_writing()
        raise
    result = TransformResult(None, None, plan, done.stored.clipped, sink.describe(), spec.encoding())
    if one_pass:
        return result
    before_stats = _stats(dataset, plan.scope, before,
                          Histograms(done.before_counts.counts, edges[0]) if bins else None)
    after_stats = None
    if measuring.report:
        after_stats = _stats(dataset, plan.scope, done.after_stats.aggregate(),
                             Histograms(done.after_counts.counts, edges[1]) if bins else None,
                             dtype=spec.dtype, samples=samples)
    return replace(result, before=before_stats, after=after_stats)


def _fit(dataset: Dataset, plan: Plan, units: list, ignore_nan: bool, engine, progress) -> Moments:
    """The statistics pass with the plan's fit, then the plan's own passes: the input's moments."""
    task = StatsTask(plan.scope, dataset.layout, ignore_nan, fitter=plan.fitter(), quantiles=plan.first_quantiles())
    first = reduce(engine, stats_pass(task, "fitting", _sample_bytes(dataset)), units, progress)
    for fitted in first.fits:
        plan.add_fit(fitted)
    stats = first.stats
    if stats.nonfinite.first is not None:  # a position in the passes' order: name the input's sample
        stats = replace(stats, nonfinite=replace(stats.nonfinite, first=plan.original_index(stats.nonfinite.first)))
    moments = checked(stats, dataset.locate, ignore_nan=ignore_nan)
    results: tuple = (first,)
    while (step := plan.next_pass(results)) is not None:
        results += (reduce(engine, step, units, progress),)
    return moments


def _apply_task(dataset: Dataset, plan: Plan, spec: sinks.OutputSpec, writer, measuring: Measuring, edges: tuple,
                *, check_finite: bool) -> ApplyTask:
    """The last pass's task. Float outputs are measured as written; integer ones as the floats they
    encode, in float64 so that each integer is round(exact value * scale). An 8-bit input to an
    integer output, with nothing to measure, is looked up (encoding.ValueTable)."""
    work_dtype = np.dtype(np.float64 if spec.dtype == np.float64 or spec.encoding() else np.float32)
    table = None
    value_map = plan.value_map(dataset.channels)
    if value_map is not None and not measuring.report and spec.encoding() and dataset.dtype == np.uint8 \
            and not dataset.alpha_passed:
        table = encoding.value_table(*value_map, work_dtype, spec.dtype, spec.scale, spec.clamp)
    samples = plan.samples if plan.samples is not None else dataset.n_samples
    pairs = edges[0] is not None and dataset.dtype.kind == "f" and not spec.encoding() and not plan.scope.one_histogram
    return ApplyTask(plan.scope, dataset.layout, plan.applier(), writer, samples, work_dtype, measuring.ignore_nan,
                     measuring.report, *edges, encoding.alpha_factor(spec, dataset.dtype), check_finite=check_finite,
                     table=table, maps=plan.report_map() if pairs else None)


def _write_in_order(sink: sinks.Sink, applied: Applied) -> Applied:
    """An output written in order (stdout): each block's samples as the driver takes them."""
    return replace(applied, stored=sink.write_in_order(applied.stored))
