"""One entry point per command, and the option objects they take.

cli.py parses options into these frozen values, calls one `run_*` function and hands the
result to render.py. Everything between (opening the dataset, checking the outputs before
any work, building plans, applying saved statistics, committing the outputs together, the
engine) happens here. cli.py imports this module when a command runs, not for `--help` (the
choices its options offer are numpy-free, in options.py), so the numerical modules are imported
here at the top.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from normcli import quantiles, statsfile
from normcli.demo import run_demo as demo_steps
from normcli.encoding import input_scale
from normcli.engine import open_engine
from normcli.errors import BadOption, NormcliWarning, StatsFileError, UsageMismatch
from normcli.images import ReadOptions
from normcli.layout import Layout
from normcli.options import Environment, Output
from normcli.passes import Measuring, check_scope, measure, transform
from normcli.plans import Batching, BatchPlan, GroupPlan, QuantilePlan, ScalePlan, eval_plan
from normcli.scopes import SCOPES, scope as as_scope
from normcli.sinks import Outputs, check_target, output_kind, write_array
from normcli.sources import open_dataset
from normcli.statsfile import StatsFile, saved_percentiles
from normcli.transforms import minmax, per_key, robust, stretch, zscore
from normcli.tutorial import check_tutorial_size, tutorial_dataset


# -- option objects ----------------------------------------------------------------------
@dataclass(frozen=True)
class Inputs:
    """INPUT... and how to read them."""

    paths: tuple[str, ...]
    layout: str | None = None
    key: str | None = None
    mode: str | None = None
    ignore_nan: bool = False
    frames: str | None = None
    max_pixels: int | None = None  # None: images.py's default
    include_alpha: bool = False
    include_hidden: bool = False
    exclude: tuple[str, ...] = ()

    def open(self, env: Environment, layout: str | None = None):
        """The inputs as one Dataset (`layout`: instead of --layout, e.g. a statistics file's)."""
        given = {"frames": self.frames, "max_pixels": self.max_pixels, "include_alpha": self.include_alpha,
                 "include_hidden": self.include_hidden, "exclude": self.exclude}
        read = ReadOptions(**{name: value for name, value in given.items() if value is not None})
        return open_dataset(self.paths, layout=layout or self.layout, key=self.key, mode=self.mode, images=read,
                            stdin=env.stdin)


@dataclass(frozen=True)
class Report:
    """What is shown, and how."""

    bins: int = 30
    fmt: str = "table"
    quiet: bool = False
    ascii_only: bool = False
    progress: bool = True  # --no-progress: the report without the progress bar
    rows: int | None = 12  # rows a table shows (None: all)
    color: str = "auto"  # auto (the terminal, NO_COLOR, FORCE_COLOR), always, never


@dataclass(frozen=True)
class EngineOptions:
    """Where the work runs (engine.open_engine's arguments)."""

    engine: str | None = None  # None: dask with a scheduler, else threads
    workers: int | None = None
    scheduler: str | None = None
    scheduler_file: str | None = None
    cluster_timeout: float | None = None  # None: engine.CLUSTER_TIMEOUT

    def check(self, inputs: Inputs) -> None:
        """Before anything is read: `-` is refused on a cluster's workers, since it is spooled to
        this machine's $TMPDIR, which they cannot read."""
        if "-" in inputs.paths and (self.scheduler or self.scheduler_file):
            raise UsageMismatch("- (stdin) is spooled to this machine's $TMPDIR, which the Dask workers of "
                                "--scheduler cannot read; save it to a file they share, or drop --scheduler")

    def open(self):
        """The engine, as a context manager that shuts it down."""
        return open_engine(self.engine, workers=self.workers, scheduler=self.scheduler,
                           scheduler_file=self.scheduler_file, cluster_timeout=self.cluster_timeout)


@dataclass(frozen=True)
class Fit:
    """--save-stats / --stats-from / --inverse: fit and save, or apply saved statistics."""

    save_stats: str | None = None
    stats_from: str | None = None
    inverse: bool = False


@dataclass(frozen=True)
class StatsParams:
    """stats' own options (--save-stats and its --force included)."""

    per: str | None = None
    hist_range: tuple[float, float] | None = None
    ddof: int = 0
    save: str | None = None
    force: bool = False
    percentiles: tuple[float, ...] = ()  # --percentiles (and --median)
    quantile_method: str = "linear"


def _quantile_request(q: tuple[float, ...], method: str, scope: str, ignore_nan: bool):
    """The quantiles.Request of percentiles `q` at `scope` (None for none): a scope whose quantiles
    need memory that grows with the data is a usage error, found before anything is read."""
    if not q:
        return None
    reason = quantiles.refusal(SCOPES[scope])
    if reason:
        raise UsageMismatch(reason)
    return quantiles.Request(tuple(q), method, ignore_nan)


@dataclass(frozen=True)
class Planned:
    """What a transform's parameters plan for one dataset."""

    plan: Any  # plans.Plan
    title: str  # the report's name for it
    ddof: int = 0  # to report and save


# Each transform's own options. run_transform calls check() before anything is opened, then
# plan(dataset, saved, scope, output, ignore_nan) -> Planned; `fit` holds --save-stats /
# --stats-from, `default_per` the scope without --per.
@dataclass(frozen=True)
class NormalizeParams:
    """normalize: min-max to --range."""

    per: str | None = None
    out_range: tuple[float, float] | None = None  # None: (0, 1), or the range --stats-from recorded
    fit: Fit = Fit()
    percentiles: tuple[float, float] | None = None  # --percentiles LO HI: a stretch of those, clipped
    no_clip: bool = False
    quantile_method: str = "linear"
    default_per = "global"

    def check(self) -> None:
        if self.out_range is not None and not self.out_range[0] < self.out_range[1]:
            raise BadOption("LO must be below HI", "--range")
        if self.percentiles is not None and not self.percentiles[0] < self.percentiles[1]:
            raise BadOption("LO must be below HI", "--percentiles")
        if self.no_clip and self.percentiles is None:
            raise UsageMismatch("--no-clip goes with --percentiles (min-max maps never fall outside)")

    def plan(self, dataset, saved, scope: str, output: Output, ignore_nan: bool):
        out_range, inverse = self._range(saved), self.fit.inverse
        percentiles = self.percentiles or _recorded_q(saved, "stretch")
        if percentiles:
            return self._stretch(dataset, saved, scope, output, ignore_nan, out_range, tuple(percentiles))
        plan = ScalePlan(scope, lambda m: minmax(m, out_range), fitted=saved.moments if saved else None,
                         inverse=inverse, clip=out_range if output.clip and not inverse else None,
                         input_scale=_input_scale(saved, self.fit, dataset, out_range),
                         saved={"range": list(out_range)})
        title = "inverse min-max" if inverse else f"min-max to [{out_range[0]:g}, {out_range[1]:g}]"
        return Planned(plan, title)

    def _stretch(self, dataset, saved, scope: str, output: Output, ignore_nan: bool, out_range,
                 percentiles: tuple[float, float]) -> Planned:
        """normalize --percentiles LO HI: each key's LO..HI percentiles onto the range, clipped to it
        unless --no-clip (CSBDeep's normalize, ImageMagick's -contrast-stretch)."""
        inverse, (low, high) = self.fit.inverse, percentiles
        clip = out_range if (output.clip or not self.no_clip) and not inverse else None
        request = _quantile_request(percentiles, self.quantile_method, scope, ignore_nan)
        plan = _quantile_plan(dataset, saved, scope, self.fit, request, lambda values: stretch(values, out_range),
                              clip=clip,
                              input_scale=_input_scale(saved, self.fit, dataset, out_range),
                              saved={"range": list(out_range), "map": "stretch"})
        title = "inverse percentile stretch" if inverse else \
            f"percentiles {low:g}..{high:g} to [{out_range[0]:g}, {out_range[1]:g}]"
        return Planned(plan, title)

    def _range(self, saved) -> tuple[float, float]:
        """--range, else the range the --stats-from file was fitted with, else (0, 1). The inverse
        maps back from the recorded range only: a different --range is a usage error."""
        recorded = saved.extra.get("range") if saved is not None else None
        if recorded is None or (self.out_range is not None and not self.fit.inverse):
            return self.out_range or (0.0, 1.0)
        recorded = (float(recorded[0]), float(recorded[1]))
        if self.out_range is not None and tuple(self.out_range) != recorded:
            raise UsageMismatch(f"--range {self.out_range[0]:g} {self.out_range[1]:g} contradicts "
                                f"{self.fit.stats_from}, which was fitted with --range {recorded[0]:g} "
                                f"{recorded[1]:g}; drop --range")
        return recorded


@dataclass(frozen=True)
class StandardizeParams:
    """standardize: z-score with --ddof and --eps."""

    per: str | None = None
    ddof: int | None = None  # None: 0, or the saved file's
    eps: float = 0.0
    fit: Fit = Fit()
    robust: bool = False  # --robust: median and interquartile range (RobustScaler)
    quantile_range: tuple[float, float] | None = None  # None: (25, 75)
    quantile_method: str = "linear"
    default_per = "global"

    def check(self) -> None:
        if not self.robust and self.quantile_range is not None:
            raise UsageMismatch("--quantile-range goes with --robust")
        if self.robust and (self.ddof is not None or self.eps):
            raise UsageMismatch("--ddof and --eps belong to the z-score; drop them with --robust")
        if self.quantile_range is not None and not self.quantile_range[0] <= self.quantile_range[1]:
            raise BadOption("LO must not be above HI", "--quantile-range")

    def plan(self, dataset, saved, scope: str, output: Output, ignore_nan: bool):
        recorded = _recorded_q(saved, "robust")
        if self.robust or recorded:
            low, high = self.quantile_range or (recorded and (recorded[0], recorded[2])) or (25.0, 75.0)
            request = _quantile_request((low, 50.0, high), self.quantile_method, scope, ignore_nan)
            plan = _quantile_plan(dataset, saved, scope, self.fit, request, robust,
                                  input_scale=_input_scale(saved, self.fit, dataset), saved={"map": "robust"})
            return Planned(plan, "inverse robust scaling" if self.fit.inverse else
                           f"robust scaling (median, {low:g}..{high:g} percentile range)")

        if saved is not None and self.ddof is not None and self.ddof != saved.ddof:
            raise UsageMismatch(f"--ddof {self.ddof} contradicts {self.fit.stats_from}, which was fitted with "
                                f"ddof {saved.ddof}")
        ddof = saved.ddof if saved is not None else self.ddof or 0
        eps = self.eps
        plan = ScalePlan(scope, lambda m: zscore(m, ddof=ddof, eps=eps), fitted=saved.moments if saved else None,
                         inverse=self.fit.inverse, input_scale=_input_scale(saved, self.fit, dataset))
        return Planned(plan, "inverse z-score" if self.fit.inverse else "z-score", ddof)


@dataclass(frozen=True)
class BatchParams:
    """batchnorm: training mode over mini-batches, or --eval with saved running statistics."""

    batch_size: int
    per: str | None = None
    gamma: tuple[float, ...] | None = None
    beta: tuple[float, ...] | None = None
    eps: float = 1e-5
    momentum: float | None = 0.1  # None: the cumulative average
    drop_last: bool = False
    shuffle: bool = False
    seed: int = 0
    eval_mode: bool = False
    fit: Fit = Fit()
    default_per = "channel"

    def check(self) -> None:
        if self.eval_mode != bool(self.fit.stats_from):
            raise UsageMismatch("--eval and --stats-from go together: inference uses saved running statistics")

    def plan(self, dataset, saved, scope: str, output: Output, ignore_nan: bool):
        check_scope(dataset, scope)
        keys = as_scope(scope).keys(dataset.layout, dataset.sample_shape, dataset.n_samples)
        gammas, betas = _gamma_beta(self.gamma, self.beta, keys)
        if saved is not None:
            plan = eval_plan(saved, self.fit.stats_from, scope, gammas, betas, self.eps)
            return Planned(plan, "batch norm (eval, running statistics)")
        order = None
        if self.shuffle:
            from normcli.tutorial import shuffled_order

            order = shuffled_order(dataset.n_samples, self.seed)
        batching = Batching(self.batch_size, self.momentum, self.drop_last, order, self.seed if self.shuffle else None)
        plan = BatchPlan(dataset, scope, batching, gammas, betas, self.eps, ignore_nan=ignore_nan)
        if plan.samples == 0:
            raise UsageMismatch(f"--drop-last leaves no batch: {dataset.n_samples} samples, "
                                f"--batch-size {self.batch_size}")
        return Planned(plan, f"batch norm, batches of {self.batch_size}")


@dataclass(frozen=True)
class GroupParams:
    """groupnorm: per sample over groups of channels (never fitted or saved)."""

    groups: int
    gamma: tuple[float, ...] | None = None
    beta: tuple[float, ...] | None = None
    eps: float = 1e-5
    per = None
    fit = Fit()
    default_per = None

    def check(self) -> None:
        pass

    def plan(self, dataset, saved, scope, output: Output, ignore_nan: bool):
        channels = dataset.channels
        if channels % self.groups:
            raise BadOption(f"{self.groups} does not divide the {channels} channels", "--groups")
        gammas, betas = _gamma_beta(self.gamma, self.beta, channels)
        plan = GroupPlan(self.groups, gammas, betas, self.eps, ignore_nan=ignore_nan)
        return Planned(plan, f"group norm, {self.groups} groups")


def _recorded_q(saved, fitted_map: str) -> list | None:
    """The percentiles a --stats-from file's map of `fitted_map` ("robust", "stretch") was made of, or
    None: the file decides the map, as it decides the scope."""
    if saved is None or saved.extra.get("map") != fitted_map:
        return None
    return saved.extra["percentiles"]["q"]


def _quantile_plan(dataset, fitted, scope: str, fit: Fit, request, make_affine, **options):
    """A plans.QuantilePlan of `request`'s percentiles: fitted, or those of the --stats-from file `fitted` (a StatsFile);
    `options`: ScalePlan's (clip, input_scale, saved)."""
    values = saved_percentiles(fitted, fit.stats_from, request.q) if fitted is not None else None
    return QuantilePlan(dataset, scope, request, make_affine, values, fitted=fitted.moments if fitted else None,
                        inverse=fit.inverse, **options)


TransformParams = NormalizeParams | StandardizeParams | BatchParams | GroupParams


def _gamma_beta(gamma, beta, keys: int):
    """--gamma and --beta, one per key (a single number stands for every key)."""
    values = []
    for value, default, name in ((gamma, 1.0, "--gamma"), (beta, 0.0, "--beta")):
        try:
            values.append(per_key(default if value is None else value, keys, name))
        except ValueError as exc:
            raise BadOption(str(exc), name) from None
    return values


def _input_scale(saved, fit: Fit, dataset, out_range=None):
    """With --inverse: the scale the inputs' integers were written with, as the saved file records it
    (or, for a file without a record, inferred from a normalize range within [0, 1])."""
    if not fit.inverse:
        return None
    return input_scale(saved.extra.get("encoding"), dataset.dtype, fit.stats_from, out_range)


# -- results ---------------------------------------------------------------------------
@dataclass(frozen=True)
class StatsReport:
    stats: Any  # passes.Stats
    ddof: int


@dataclass(frozen=True)
class TransformReport:
    before: Any  # passes.Stats
    after: Any  # passes.Stats, or None with --quiet
    ddof: int
    title: str
    inputs: list[str]
    written: str  # what was written, as the closing line says it
    clipped: int = 0  # values clipped to fit an 8/16-bit output
    batches: list | None = None  # batchnorm's per-batch summaries
    save_stats: str | None = None

    def warn(self) -> None:
        """What the user should know about the run (called once its progress bar is gone)."""
        if self.clipped:
            warnings.warn(NormcliWarning(f"{self.clipped:,} values fell outside what the 8/16-bit output holds "
                                         "and were clipped to fit"))

    @property
    def closing_line(self) -> str:
        return self.written + (f"; statistics to {self.save_stats}" if self.save_stats else "")


@dataclass(frozen=True)
class MergeReport:
    files: int
    values: int
    output: str


# -- entry points --------------------------------------------------------------------------
def run_stats(inputs: Inputs, params: StatsParams, report: Report, engine: EngineOptions, env: Environment,
              progress=None) -> StatsReport:
    """`normcli stats`: measure, and save the statistics with --save-stats."""
    if report.fmt == "torchvision" and params.per not in (None, "channel"):
        raise UsageMismatch("--format torchvision prints per-channel statistics; drop --per")
    if params.hist_range is not None and not params.hist_range[0] < params.hist_range[1]:
        raise BadOption("LO must be below HI", "--range")
    bins = 0 if report.fmt in ("csv", "torchvision") else report.bins
    scope = params.per or "channel"
    request = _quantile_request(tuple(sorted(set(params.percentiles))), params.quantile_method, scope,
                                inputs.ignore_nan)
    engine.check(inputs)
    with inputs.open(env) as dataset:
        if params.save:
            check_target(params.save, dataset.inputs, params.force, folder=False)
        with engine.open() as running:
            result = measure(dataset, scope, bins=bins, hist_range=params.hist_range, ignore_nan=inputs.ignore_nan,
                             request=request, engine=running, progress=progress)
    if params.save:
        taken = result.percentiles
        extra = {"percentiles": statsfile.percentiles_record(taken.q, taken.method, taken.values)} if taken else {}
        with Outputs() as outputs:
            statsfile.write(params.save, _stats_file(result, params.ddof, extra), outputs, force=params.force,
                            inputs=inputs.paths)
    return StatsReport(result, params.ddof)


def _stats_file(result, ddof: int, extra: dict | None = None):
    return StatsFile(result.scope, result.layout, result.sample_shape, result.moments, ddof,
                     list(result.inputs), extra or {})


def run_transform(params: TransformParams, inputs: Inputs, output: Output, report: Report, engine: EngineOptions,
                  env: Environment, progress=None) -> TransformReport:
    """normalize, standardize, batchnorm, groupnorm: fit (or read --stats-from), apply, and measure
    before and after; -o and --save-stats appear together, or neither does."""
    params.check()
    engine.check(inputs)
    save_stats = params.fit.save_stats
    dataset, saved, scope = _fit_inputs(inputs, params, env)
    with dataset:
        planned = params.plan(dataset, saved, scope, output, inputs.ignore_nan)
        plan, ddof = planned.plan, planned.ddof
        if save_stats:
            _check_save_stats(save_stats, output, dataset.inputs)
        measuring = Measuring(report.bins, inputs.ignore_nan, report=not report.quiet)
        # The engine closes first: its tasks have stopped before the outputs commit, or are discarded.
        with Outputs(env.stdout) as outputs, engine.open() as running:
            result = transform(dataset, plan, output, outputs, measuring, running, progress)
            if save_stats:
                encoding = {"encoding": result.encoding} if result.encoding else {}
                statsfile.write(save_stats, _stats_file(result.before, ddof, {**plan.saved_extra(), **encoding}),
                                outputs, force=output.force, inputs=dataset.inputs)
    return TransformReport(result.before, result.after, ddof, planned.title, list(dataset.inputs), result.written,
                        result.clipped, plan.batches, save_stats)


def _fit_inputs(inputs: Inputs, params, env: Environment):
    """Open the data and, with --stats-from, the saved statistics that decide scope and layout."""
    fit = params.fit
    if fit.save_stats and fit.stats_from:
        raise UsageMismatch("--save-stats and --stats-from exclude each other: fit, or apply saved statistics")
    if fit.inverse and not fit.stats_from:
        raise UsageMismatch("--inverse needs --stats-from: the statistics to map back with")
    if not fit.stats_from:
        return inputs.open(env), None, params.per or params.default_per
    saved = statsfile.read(fit.stats_from)
    statsfile.check_options(saved, fit.stats_from, per=params.per, layout=inputs.layout)
    try:
        dataset = inputs.open(env, layout=saved.layout)
    except UsageMismatch as error:  # the file's layout, not an option the user gave
        raise StatsFileError(f"fitted on layout {saved.layout}, which does not fit the data: {error}",
                             fit.stats_from) from None
    try:
        statsfile.check_fits(saved, dataset, fit.stats_from)
    except BaseException:
        dataset.close()
        raise
    return dataset, saved, saved.per


def _check_save_stats(save_stats: str, output: Output, inputs) -> None:
    """Before any work, so that a bad --save-stats cannot leave the output written."""
    from pathlib import Path

    if not output.to_stdout and Path(save_stats).resolve() == Path(output.target).resolve():
        raise UsageMismatch("--save-stats and -o name the same file")
    if not output.to_stdout and Path(output.target).resolve() in Path(save_stats).resolve().parents:
        raise UsageMismatch("--save-stats lies inside the -o folder, which this run replaces; save it beside")
    check_target(save_stats, inputs, output.force, folder=False)


def run_merge_stats(files: tuple[str, ...], output: str, force: bool) -> MergeReport:
    """`normcli merge-stats`: statistics saved from shards, merged as if measured in one run."""
    check_target(output, files, force, folder=False)  # onto one of its own inputs: refused even with --force
    merged = statsfile.merge([(f, statsfile.read(f)) for f in files])
    with Outputs() as outputs:
        statsfile.write(output, merged, outputs, force=force, inputs=files)
    return MergeReport(len(files), int(merged.moments.count.sum()), output)


@dataclass(frozen=True)
class SampleParams:
    """sample: the tutorial's dataset."""

    samples: int = 1000
    size: int = 32
    channels: int = 1
    seed: int = 0


def run_sample(params: SampleParams, output: Output, env: Environment) -> str:
    """`normcli sample`: the tutorial's dataset written to `output`; returns what was written."""
    kind = output_kind(output.target)
    check_tutorial_size(params.samples, params.size, params.channels)
    data = tutorial_dataset(params.samples, params.size, params.channels, params.seed)
    if kind == "folder":
        data = data.astype("float32")
    with Outputs(env.stdout) as outputs:
        return write_array(output.target, data, outputs, force=output.force, layout=Layout("NHWC"))


def run_demo(seed: int, bins: int):
    """`normcli demo`: the tutorial's steps (demo.DemoStep), as they are computed."""
    return demo_steps(seed=seed, bins=bins)
