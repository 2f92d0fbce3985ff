"""The transforms' plans: what each pass of a transform does, as values the driver
(passes.transform) runs: the fit of pass 1 (and any passes after it), the map of the last.

ScalePlan (normalize, standardize, their inverses, batchnorm --eval), QuantilePlan (a ScalePlan
made of percentiles: standardize --robust, normalize --percentiles), BatchPlan (training-mode
batch norm, each batch by its own moments) and GroupPlan (group norm, each sample by its own
groups). Their arithmetic is transforms.py's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Callable, Protocol

import numpy as np

from normcli import quantiles
from normcli.errors import StatsFileError, UsageMismatch
from normcli.layout import Layout
from normcli.moments import BlockStats, Moments, measure_block
from normcli.reduction import Pass
from normcli.scopes import CHANNEL, GLOBAL, Scope, scope as as_scope
from normcli.sources import Block, Chunk, Dataset
from normcli.statsfile import percentiles_record
from normcli.statspass import opening_task, quantile_opening, quantile_pass, quantile_state
from normcli.transforms import Affine, RunningStats, apply_broadcast, batchnorm, deviations, groupnorm_affine


class Fitter(Protocol):
    """Pass 1 of a plan, on a worker: what a chunk tells the fit."""

    def fit(self, chunk: Chunk, layout: Layout, measured: BlockStats):
        """A picklable partial fit that Plan.add_fit() takes, in block order; `measured` is the
        chunk's BlockStats at the plan's scope, taken in the same pass."""


class Applier(Protocol):
    """The last pass of a plan, on a worker: the transform of each chunk."""

    def apply(self, chunk: Chunk, layout: Layout, out: np.ndarray):
        """Write the transformed chunk into `out`; return a per-unit summary (or None) for Plan.add_applied()."""

    def share(self, start: int, stop: int) -> "Applier":
        """This applier for the samples start..stop alone (per-sample tables cut to a task's share)."""


class Plan:
    """What one transform does in each pass, stated as values: pass 1 is the shared statistics
    pass (passes.py) with the plan's `fitter()`, passes 2..k are the plan's own (`next_pass()`,
    built from the merged results before: QuantilePlan's quantile passes), the last applies
    `applier()` and writes. The driver keeps the plan; add_fit(), finish() and add_applied() run on the
    driver, in block order."""

    scope: Scope  # the scope of the before/after report
    samples: int | None = None  # how many samples the output holds (None: all)
    # How far past an 8/16-bit output's range the values may fall from the input's own quantisation
    # (the inverse of such an output): one input step, in output values; they are clamped silently.
    slack: float = 0.0
    fitted: Moments | None = None  # saved statistics applied (--stats-from): nothing to fit
    batches: list | None = None  # batch norm's per-batch summaries, for the report

    def units(self, dataset: Dataset) -> list[Block]:
        """What every pass iterates over."""
        return dataset.blocks()

    def original_index(self, position: int) -> int:
        """The sample index in the input of the `position`-th sample the passes see."""
        return position

    def fitter(self) -> Fitter | None:
        return None

    def add_fit(self, partial) -> None:
        pass

    def first_quantiles(self) -> quantiles.Task | quantiles.SampleTask | None:
        """The first quantile pass of the plan's fit, which the statistics pass takes (None: none)."""
        return None

    def next_pass(self, results: tuple) -> Pass | None:
        """The pass after those whose merged partials are `results` (the first: the statistics pass's
        Measured), or None: the fit is complete (reduction.Passes)."""
        return None

    def finish(self, before: Moments) -> tuple[np.ndarray, np.ndarray]:
        """Called after the fit; returns the output's (low, high) per report key."""
        raise NotImplementedError

    def applier(self) -> Applier:
        raise NotImplementedError

    def value_map(self, channels: int) -> tuple[Callable[[np.ndarray, np.ndarray], None], int] | None:
        """A fixed map of values the same for every sample, as (map(values, out) on a (samples,
        positions, columns) view, columns), so that an 8-bit input can be looked up; or None."""
        return None

    def add_applied(self, summary) -> None:
        pass

    def report_map(self) -> Affine | None:
        """The one affine map per key that the last pass applies, unclipped (the report then counts
        the output's histograms with the input's: applypass.ApplyTask.maps), or None."""
        return None

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

    def share(self, start: int, stop: int) -> "AffineApply":
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

    def report_map(self):
        return self.affine if self.clip is None else None

    def value_map(self, channels: int):
        if self.scope.per_sample or self.scope.by_position:
            return None
        return (partial(self.affine.apply, scope=self.scope, clip=self.clip),
                1 if self.scope.single_key else channels)

    def saved_extra(self) -> dict:
        return self.saved


class QuantilePlan(ScalePlan):
    """A ScalePlan whose map is made of each key's percentiles of `request` (standardize --robust,
    normalize --percentiles): fitted by the quantile passes (the statistics pass takes the first), or
    given as `values` (keys, q), saved by --save-stats, which it saves in turn."""

    def __init__(self, dataset: Dataset, scope, request: quantiles.Request,
                 make_affine: Callable[[np.ndarray], Affine], values: np.ndarray | None = None, **options):
        """`options`: ScalePlan's (fitted, inverse, clip, input_scale, saved)."""
        super().__init__(scope, lambda _: make_affine(self.values), **options)
        self.dataset, self.request = dataset, request
        self.values = values
        self.state = None if values is not None else quantile_opening(request, dataset, self.scope)

    def first_quantiles(self) -> quantiles.Task | quantiles.SampleTask | None:
        return opening_task(self.state)

    def next_pass(self, results: tuple) -> Pass | None:
        if self.state is None:  # saved percentiles: nothing to fit
            return None
        if len(results) == 1:
            self.state = quantile_state(self.state, results[0])
        else:
            self.state = quantiles.advance(self.state, results[-1])
        step = quantile_pass(self.state)
        if step is None:
            self.values = np.array([np.asarray(v) for v in quantiles.results(self.state)])
        return step

    def saved_extra(self) -> dict:
        return {**self.saved, "percentiles": percentiles_record(self.request.q, self.request.method, self.values)}


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

    def share(self, start: int, stop: int) -> "BatchApply":
        return self


@dataclass(frozen=True)
class Batching:
    """How batch norm cuts the samples into batches, and keeps its running statistics."""

    size: int
    momentum: float | None = 0.1  # None: the cumulative average
    drop_last: bool = False
    order: np.ndarray | None = None  # the input index of each position (--shuffle), made from `seed`
    seed: int | None = None  # (tutorial.shuffled_order)


class BatchPlan(Plan):
    """Training-mode batch norm: each batch of `batching.size` by its own moments at `scope`."""

    def __init__(self, dataset: Dataset, scope, batching: Batching, gamma, beta, eps: float, *,
                 ignore_nan: bool = False):
        self.scope = as_scope(scope)
        self.batch_size = batching.size
        self.gamma, self.beta, self.eps = gamma, beta, eps
        self.order, self.seed = batching.order, batching.seed
        self.ignore_nan = ignore_nan
        n, size = dataset.n_samples, batching.size
        self.n_batches = n // size if batching.drop_last else -(-n // size)
        self.samples = self.n_batches * size if batching.drop_last else n
        keys = len(gamma)
        self.running = RunningStats.start(keys, batching.momentum)
        self.batches: list[BatchSummary] = []
        self.applied = 0
        self.low = np.full(keys, np.inf)
        self.high = np.full(keys, -np.inf)

    def units(self, dataset: Dataset) -> list[Block]:
        """The batches (a short last one that --drop-last leaves out is measured, not written)."""
        return dataset.batches(self.batch_size, self.order)

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

    def share(self, start: int, stop: int) -> "GroupMaps":
        return self


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
