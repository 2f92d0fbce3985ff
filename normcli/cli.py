"""normcli's commands: parse the options, call the core, render the result. No arithmetic here."""

from __future__ import annotations

import contextlib
import json
import sys
import warnings

import click

from normcli import __version__
from normcli.errors import ExitCode, NormcliError, NormcliWarning, StatsFileError, UsageMismatch

# Spelled out here rather than imported from the core, so that --help starts without numpy.
SCOPES = ("global", "channel", "sample", "pixel")
LAYOUTS = ("NHWC", "NCHW", "NHW", "NC", "N")


class ReportedError(click.ClickException):
    """A NormcliError on its way out: one line on stderr, its own exit code."""

    def __init__(self, error: NormcliError):
        super().__init__(str(error))
        self.exit_code = int(error.exit_code)

    def show(self, file=None) -> None:
        click.echo(f"error: {self.message}", err=True)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, NormcliWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        click.echo(f"warning: {category.__name__}: {message}", err=True)


class NormcliCommand(click.Command):
    """Usage problems found by the core are shown with this command's own usage line."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UsageMismatch as error:
            if ctx.find_root().params.get("debug"):
                raise
            raise click.UsageError(str(error), ctx) from None


class NormcliGroup(click.Group):
    """The one error boundary: known errors become one line and an exit code."""

    command_class = NormcliCommand

    def invoke(self, ctx: click.Context):
        with warnings.catch_warnings():
            warnings.simplefilter("always", NormcliWarning)
            warnings.showwarning = _show_warning
            try:
                return super().invoke(ctx)
            except NormcliError as error:
                if ctx.params.get("debug"):
                    raise
                raise ReportedError(error) from None
            except KeyboardInterrupt:
                click.echo("error: interrupted; nothing was written", err=True)
                ctx.exit(ExitCode.INTERRUPTED)


@click.group(cls=NormcliGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="normcli")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
def cli(debug: bool) -> None:
    """Statistics and normalization for image folders and .npy/.npz arrays.

    \b
    Example:
        normcli sample data.npy
        normcli stats data.npy
        normcli standardize data.npy -o z.npy
    """


# -- shared options -------------------------------------------------------------------
def input_options(fn):
    for option in reversed((
        click.argument("inputs", nargs=-1, required=True, metavar="INPUT..."),
        click.option("--layout", type=click.Choice(LAYOUTS, case_sensitive=False),
                     help="Axis names of array inputs [default: NHWC for 4-D, NHW 3-D, NC 2-D, N 1-D]."),
        click.option("--key", help="Array to read from .npz inputs [default: their only array]."),
        click.option("--mode", type=click.Choice(("gray", "rgb", "rgba")),
                     help="Convert images to this many channels."),
        click.option("--ignore-nan", is_flag=True,
                     help="Leave NaN and inf out of the statistics (transforms pass them through)."),
        *image_read_options,
    )):
        fn = option(fn)
    return fn


def _read_option(ctx: click.Context, param: click.Parameter, value) -> None:
    """Image-reading options travel in ctx.meta to _open, so commands need no parameter for them."""
    ctx.meta.setdefault("normcli.read", {})[param.name] = value


image_read_options = (
    click.option("--frames", type=click.Choice(("first", "all")), expose_value=False, callback=_read_option,
                 help="Multi-frame files (GIF, APNG, WebP, multi-page TIFF): the first frame only, or every "
                      "frame as a sample FILE#N [default: refuse them]."),
    click.option("--max-pixels", type=click.IntRange(min=0), metavar="N", expose_value=False,
                 callback=_read_option,
                 help="Refuse images with more pixels (W×H) than this, before decoding; 0: no limit "
                      "[default: 89478485, Pillow's]."),
    click.option("--include-hidden", is_flag=True, expose_value=False, callback=_read_option,
                 help="Also read dot-files and dot-folders inside input folders."),
    click.option("--exclude", metavar="GLOB", multiple=True, expose_value=False, callback=_read_option,
                 help="Leave out images whose path inside the folder matches GLOB (fnmatch; repeatable)."),
)


def scope_option(default: str, choices=SCOPES):
    return click.option("--per", "per", type=click.Choice(choices), default=None,
                        help=f"Scope of the statistics [default: {default}].")


def report_options(formats=("table", "json")):
    def decorate(fn):
        for option in reversed((
            click.option("--bins", type=click.IntRange(0, 1000), default=30, show_default=True,
                         help="Histogram bins (0: no histograms)."),
            click.option("--format", "fmt", type=click.Choice(formats), default="table", show_default=True,
                         help="Report format."),
            click.option("--quiet", "-q", is_flag=True, help="Print no report."),
        )):
            fn = option(fn)
        return fn
    return decorate


def output_options(fn):
    for option in reversed((
        click.option("-o", "--output", required=True, metavar="OUT",
                     help="Output: .npy, .npz, - (a .npy stream on stdout) or a folder."),
        click.option("--dtype", type=click.Choice(("float32", "float64", "uint8", "uint16")),
                     help="Output dtype [default: float32; image folders keep the input's bit depth]."),
        click.option("--ext", type=click.Choice(("png", "tiff", "npy")),
                     help="File type inside an output folder [default: the input's]."),
        click.option("--clip", is_flag=True,
                     help="Clip values outside the range (or outside what an 8/16-bit output holds)."),
        click.option("--force", "-f", is_flag=True, help="Replace an existing output."),
    )):
        fn = option(fn)
    return fn


def _open(inputs, layout, key, mode):
    from normcli.images import ReadOptions
    from normcli.sources import open_dataset

    given = click.get_current_context().meta.get("normcli.read", {})
    options = ReadOptions(**{name: value for name, value in given.items() if value is not None})
    return open_dataset(inputs, layout=layout, key=key, mode=mode, images=options)


def _printer(to_stderr: bool):
    from normcli.render import Printer

    return Printer(stderr=to_stderr)


@contextlib.contextmanager
def _progress(samples: int, passes: int):
    """A progress bar on stderr when it is a terminal (never in pipes); yields the callback or None."""
    if passes == 0 or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("reading", total=samples * passes)
        yield lambda n: bar.advance(task, n)


def _emit_json(doc: dict, to_stderr: bool = False) -> None:
    click.echo(json.dumps(doc, allow_nan=False), err=to_stderr)


# -- stats ---------------------------------------------------------------------------
@cli.command()
@input_options
@scope_option("channel")
@click.option("--range", "hist_range", type=(float, float), metavar="LO HI",
              help="Histogram range [default: each row's min and max].")
@click.option("--ddof", type=click.IntRange(0, 1), default=0, show_default=True, help="Variance divisor N - ddof.")
@report_options(("table", "json", "csv", "torchvision"))
@click.option("--save", metavar="STATS.json", help="Also save the statistics (for --stats-from, merge-stats).")
@click.option("--force", "-f", is_flag=True, help="Replace an existing --save file.")
def stats(inputs, layout, key, mode, ignore_nan, per, hist_range, ddof, bins, fmt, quiet, save, force):
    """Print mean, variance, min, max and histograms of a dataset.

    \b
    Example:
        normcli stats data.npy --per global
        normcli stats sample_images/rgb --format torchvision
    """
    from normcli import render, statsfile
    from normcli.passes import measure, measure_passes
    from normcli.sinks import check_target

    if fmt == "torchvision" and per not in (None, "channel"):
        raise click.UsageError("--format torchvision prints per-channel statistics; drop --per")
    if hist_range is not None and not hist_range[0] < hist_range[1]:
        raise click.BadParameter("LO must be below HI", param_hint="--range")
    bins = 0 if fmt in ("csv", "torchvision") else bins
    scope = per or "channel"
    with _open(inputs, layout, key, mode) as dataset, \
            _progress(dataset.n_samples, measure_passes(dataset, scope, bins)) as progress:
        if save:
            check_target(save, dataset.inputs, force, folder=False)
        result = measure(dataset, scope, bins=bins, hist_range=hist_range, ignore_nan=ignore_nan,
                         progress=progress)
    if save:
        statsfile.write(save, _stats_file(result, ddof), force=force, inputs=inputs)
    if quiet:
        return
    if fmt == "json":
        _emit_json(render.stats_json(result, ddof))
    elif fmt == "csv":
        click.echo(render.stats_csv(result, ddof), nl=False)
    elif fmt == "torchvision":
        click.echo(render.torchvision_line(result, ddof))
    else:
        _printer(False).stats(result, ddof)


def _stats_file(result, ddof: int, extra: dict | None = None):
    from normcli.statsfile import StatsFile

    return StatsFile(result.scope, result.layout, result.sample_shape, result.moments, ddof,
                     list(result.inputs), extra or {})


# -- transforms -------------------------------------------------------------------------
def _run_transform(dataset, plan, *, output, dtype, ext, clip, force, bins, fmt, quiet, ignore_nan,
                   title, save_stats=None, ddof=0):
    """Run both passes into the output, then save the fitted statistics and report."""
    from pathlib import Path

    from normcli import render, statsfile
    from normcli.passes import transform
    from normcli.sinks import check_target

    if save_stats:
        # Checked before any work, so that a bad --save-stats cannot leave the output written.
        if output != "-" and Path(save_stats).resolve() == Path(output).resolve():
            raise click.UsageError("--save-stats and -o name the same file")
        check_target(save_stats, dataset.inputs, force, folder=False)
    with _progress(dataset.n_samples, 2) as progress:
        result = transform(dataset, plan, output, dtype=dtype, ext=ext, clip=clip, force=force, bins=bins,
                           ignore_nan=ignore_nan, report=not quiet, progress=progress)
    if save_stats:
        encoding = {"encoding": result.encoding} if result.encoding else {}
        statsfile.write(save_stats, _stats_file(result.before, ddof, {**plan.saved_extra(), **encoding}),
                        force=force, inputs=dataset.inputs)
    if result.clipped:
        warnings.warn(NormcliWarning(f"{result.clipped:,} values fell outside what the 8/16-bit output holds "
                                     "and were clipped to fit"))
    if quiet:
        return
    to_stderr = output == "-"
    batches = getattr(plan, "batches", None)
    if fmt == "json":
        doc = {"before": render.stats_json(result.before, ddof), "after": render.stats_json(result.after, ddof),
               "output": output}
        if batches is not None:
            doc["batches"] = [vars(b) for b in batches]
        _emit_json(doc, to_stderr)
        return
    printer = _printer(to_stderr)
    printer.stats(result.before, ddof, title=f"before: {', '.join(dataset.inputs)}")
    printer.line()
    if batches is not None:
        printer.line(f"{title}: {len(batches):,} batches", style="bold")
        printer.batches(batches)
        printer.line()
    printer.stats(result.after, ddof, title=f"after {title}: {output}")


def fit_options(fn):
    for option in reversed((
        click.option("--save-stats", metavar="FILE", help="Save the fitted statistics as JSON."),
        click.option("--stats-from", metavar="FILE", help="Apply statistics saved earlier instead of fitting."),
        click.option("--inverse", is_flag=True, help="Map back to the original scale (needs --stats-from)."),
    )):
        fn = option(fn)
    return fn


def _fit_inputs(inputs, layout, key, mode, per, save_stats, stats_from, inverse, default_per):
    """Open the data and, with --stats-from, the saved statistics that decide scope and layout."""
    from normcli import statsfile

    if save_stats and stats_from:
        raise click.UsageError("--save-stats and --stats-from exclude each other: fit, or apply saved statistics")
    if inverse and not stats_from:
        raise click.UsageError("--inverse needs --stats-from: the statistics to map back with")
    if not stats_from:
        return _open(inputs, layout, key, mode), None, per or default_per
    saved = statsfile.read(stats_from)
    statsfile.check_options(saved, stats_from, per=per, layout=layout)
    try:
        dataset = _open(inputs, saved.layout, key, mode)
    except UsageMismatch as error:  # the file's layout, not an option the user gave
        raise StatsFileError(f"fitted on layout {saved.layout}, which does not fit the data: {error}",
                             stats_from) from None
    try:
        statsfile.check_fits(saved, dataset, stats_from)
    except BaseException:
        dataset.close()
        raise
    return dataset, saved, saved.per


def _input_scale(saved, path, dataset, inverse: bool, out_range=None):
    """With --inverse: the scale the inputs' integers were written with, as the saved file records it
    (or, for a file without a record, inferred from a normalize range within [0, 1])."""
    from normcli.sinks import input_scale

    return input_scale(saved.extra.get("encoding"), dataset.dtype, path, out_range) if inverse else None


@cli.command()
@input_options
@output_options
@scope_option("global")
@click.option("--range", "out_range", type=(float, float), default=(0.0, 1.0), show_default=True,
              metavar="LO HI", help="Target range.")
@fit_options
@report_options()
def normalize(inputs, layout, key, mode, ignore_nan, output, dtype, ext, clip, force, per, out_range,
              save_stats, stats_from, inverse, bins, fmt, quiet):
    """Min-max scale a dataset to a range (default [0, 1]).

    \b
    Example:
        normcli normalize data.npy -o unit.npy
        normcli normalize sample_images -o normalized --per channel
    """
    from normcli.passes import ScalePlan
    from normcli.transforms import minmax

    if not out_range[0] < out_range[1]:
        raise click.BadParameter("LO must be below HI", param_hint="--range")
    dataset, saved, scope = _fit_inputs(inputs, layout, key, mode, per, save_stats, stats_from, inverse, "global")
    with dataset:
        plan = ScalePlan(scope, lambda m: minmax(m, out_range), fitted=saved.moments if saved else None,
                         inverse=inverse, clip=out_range if clip and not inverse else None,
                         input_scale=_input_scale(saved, stats_from, dataset, inverse, out_range))
        _run_transform(dataset, plan, output=output, dtype=dtype, ext=ext, clip=clip, force=force, bins=bins,
                       fmt=fmt, quiet=quiet, ignore_nan=ignore_nan, save_stats=save_stats,
                       title="inverse min-max" if inverse else f"min-max to [{out_range[0]:g}, {out_range[1]:g}]")


@cli.command()
@input_options
@output_options
@scope_option("global")
@click.option("--ddof", type=click.IntRange(0, 1), help="Variance divisor N - ddof [default: 0, or the saved file's].")
@click.option("--eps", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Added to the variance (scikit-learn uses 0).")
@fit_options
@report_options()
def standardize(inputs, layout, key, mode, ignore_nan, output, dtype, ext, clip, force, per, ddof, eps,
                save_stats, stats_from, inverse, bins, fmt, quiet):
    """Z-score a dataset: mean 0, variance 1.

    \b
    Example:
        normcli standardize data.npy -o z.npy
        normcli standardize train.npy -o train_z.npy --per pixel --save-stats train.json
        normcli standardize test.npy -o test_z.npy --stats-from train.json
    """
    from normcli.passes import ScalePlan
    from normcli.transforms import zscore

    dataset, saved, scope = _fit_inputs(inputs, layout, key, mode, per, save_stats, stats_from, inverse, "global")
    if saved is not None and ddof is not None and ddof != saved.ddof:
        dataset.close()
        raise click.UsageError(f"--ddof {ddof} contradicts {stats_from}, which was fitted with ddof {saved.ddof}")
    ddof = saved.ddof if saved is not None else ddof or 0
    with dataset:
        plan = ScalePlan(scope, lambda m: zscore(m, ddof=ddof, eps=eps),
                         fitted=saved.moments if saved else None, inverse=inverse,
                         input_scale=_input_scale(saved, stats_from, dataset, inverse))
        _run_transform(dataset, plan, output=output, dtype=dtype, ext=ext, clip=clip, force=force, bins=bins,
                       fmt=fmt, quiet=quiet, ignore_nan=ignore_nan, save_stats=save_stats, ddof=ddof,
                       title="inverse z-score" if inverse else "z-score")


def _numbers(text: str | None, default: float, name: str | None = None):
    if text is None:
        return default
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a number or a comma-separated list of numbers",
                                 param_hint=name) from None


def _per_key(value, keys: int, name: str):
    from normcli.transforms import per_key

    try:
        return per_key(value, keys, name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=name) from None


def _momentum(text: str):
    if text == "cumulative":
        return None
    try:
        value = float(text)
    except ValueError:
        raise click.BadParameter("a number in [0, 1] or 'cumulative'", param_hint="--momentum") from None
    if not 0 <= value <= 1:
        raise click.BadParameter("a number in [0, 1] or 'cumulative'", param_hint="--momentum")
    return value


@cli.command()
@input_options
@output_options
@click.option("--batch-size", "-b", type=click.IntRange(min=1), required=True, help="Samples per mini-batch.")
@scope_option("channel", ("channel", "global", "pixel"))
@click.option("--gamma", metavar="G", help="Scale: one number or one per channel, comma-separated [default: 1].")
@click.option("--beta", metavar="B", help="Shift: one number or one per channel [default: 0].")
@click.option("--eps", type=click.FloatRange(min=0), default=1e-5, show_default=True, help="Added to the variance.")
@click.option("--momentum", default="0.1", show_default=True,
              help="Running-statistics momentum, or 'cumulative' for the cumulative average.")
@click.option("--drop-last", is_flag=True, help="Leave out a last batch shorter than --batch-size.")
@click.option("--shuffle", is_flag=True, help="Batch samples in a random order (written in that order).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --shuffle.")
@click.option("--save-stats", metavar="FILE", help="Save the input's statistics and the running statistics.")
@click.option("--eval", "eval_mode", is_flag=True,
              help="Inference mode: normalize by the running statistics of --stats-from.")
@click.option("--stats-from", metavar="FILE", help="Statistics saved by batchnorm --save-stats (with --eval).")
@report_options()
def batchnorm(inputs, layout, key, mode, ignore_nan, output, dtype, ext, clip, force, batch_size, per, gamma,
              beta, eps, momentum, drop_last, shuffle, seed, save_stats, eval_mode, stats_from, bins, fmt, quiet):
    """Batch-normalize each mini-batch by its own statistics (training mode, as PyTorch).

    \b
    Example:
        normcli batchnorm data.npy -o bn.npy --batch-size 10
        normcli batchnorm data.npy -o bn.npy -b 32 --save-stats running.json
        normcli batchnorm test.npy -o test_bn.npy -b 32 --eval --stats-from running.json
    """
    from normcli.moments import scope_keys
    from normcli.passes import BatchPlan, check_scope, eval_plan

    momentum_value = _momentum(momentum)
    if eval_mode != bool(stats_from):
        raise click.UsageError("--eval and --stats-from go together: inference uses saved running statistics")
    dataset, saved, scope = _fit_inputs(inputs, layout, key, mode, per, save_stats, stats_from, False, "channel")
    with dataset:
        check_scope(dataset, scope)
        keys = scope_keys(scope, dataset.layout, dataset.sample_shape, dataset.n_samples)
        gammas = _per_key(_numbers(gamma, 1.0, "--gamma"), keys, "--gamma")
        betas = _per_key(_numbers(beta, 0.0, "--beta"), keys, "--beta")
        if saved is not None:
            plan = eval_plan(saved, stats_from, scope, gammas, betas, eps)
            title = "batch norm (eval, running statistics)"
        else:
            order = None
            if shuffle:
                from normcli.sources import shuffled_order

                order = shuffled_order(dataset.n_samples, seed)
            plan = BatchPlan(dataset, scope, batch_size, gammas, betas, eps, momentum=momentum_value,
                             drop_last=drop_last, order=order, ignore_nan=ignore_nan)
            if plan.samples == 0:
                raise click.UsageError(f"--drop-last leaves no batch: {dataset.n_samples} samples, "
                                       f"--batch-size {batch_size}")
            title = f"batch norm, batches of {batch_size}"
        _run_transform(dataset, plan, output=output, dtype=dtype, ext=ext, clip=clip, force=force, bins=bins,
                       fmt=fmt, quiet=quiet, ignore_nan=ignore_nan, save_stats=save_stats, title=title)


@cli.command()
@input_options
@output_options
@click.option("--groups", "-g", type=click.IntRange(min=1), required=True,
              help="Groups of channels (1: layer norm; the channel count: instance norm).")
@click.option("--gamma", metavar="G", help="Scale: one number or one per channel [default: 1].")
@click.option("--beta", metavar="B", help="Shift: one number or one per channel [default: 0].")
@click.option("--eps", type=click.FloatRange(min=0), default=1e-5, show_default=True, help="Added to the variance.")
@report_options()
def groupnorm(inputs, layout, key, mode, ignore_nan, output, dtype, ext, clip, force, groups, gamma, beta, eps,
              bins, fmt, quiet):
    """Group-normalize each sample over groups of channels (Wu & He, 2018; as PyTorch's GroupNorm).

    \b
    Example:
        normcli groupnorm sample_images/rgb -o gn.npy --groups 3 --mode rgb
        normcli groupnorm data.npy -o ln.npy --groups 1
    """
    from normcli.passes import GroupPlan

    with _open(inputs, layout, key, mode) as dataset:
        channels = dataset.channels
        if channels % groups:
            raise click.BadParameter(f"{groups} does not divide the {channels} channels", param_hint="--groups")
        plan = GroupPlan(groups, _per_key(_numbers(gamma, 1.0, "--gamma"), channels, "--gamma"),
                         _per_key(_numbers(beta, 0.0, "--beta"), channels, "--beta"), eps, ignore_nan=ignore_nan)
        _run_transform(dataset, plan, output=output, dtype=dtype, ext=ext, clip=clip, force=force, bins=bins,
                       fmt=fmt, quiet=quiet, ignore_nan=ignore_nan, title=f"group norm, {groups} groups")


# -- statistics files ---------------------------------------------------------------
@cli.command("merge-stats")
@click.argument("files", nargs=-1, required=True, metavar="STATS.json...")
@click.option("-o", "--output", required=True, metavar="ALL.json", help="The merged statistics file.")
@click.option("--force", "-f", is_flag=True, help="Replace an existing output.")
def merge_stats(files, output, force):
    """Merge statistics saved from shards into one file, as if measured in one run.

    \b
    Example:
        normcli stats part1.npy --save a.json
        normcli stats part2.npy --save b.json
        normcli merge-stats a.json b.json -o all.json
    """
    from normcli import statsfile

    merged = statsfile.merge([(f, statsfile.read(f)) for f in files])
    statsfile.write(output, merged, force=force)
    click.echo(f"merged {len(files)} files: {int(merged.moments.count.sum()):,} values -> {output}")


# -- the tutorial -----------------------------------------------------------------------
@cli.command()
@click.argument("output", metavar="OUT")
@click.option("-n", "samples", type=click.IntRange(min=1), default=1000, show_default=True, help="Images.")
@click.option("--size", type=click.IntRange(min=1), default=32, show_default=True, help="Height and width.")
@click.option("--channels", type=click.IntRange(min=1), default=1, show_default=True, help="Channels.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--force", "-f", is_flag=True, help="Replace an existing output.")
def sample(output, samples, size, channels, seed, force):
    """Write the tutorial's dataset: N×size×size×channels, normal signal plus noise (mean 26, var 306).

    A .npy/.npz file gets float64; a folder gets one float32 TIFF per image (values include negatives).

    \b
    Example:
        normcli sample data.npy
        normcli sample images/ -n 100
    """
    from normcli.layout import Layout
    from normcli.sinks import write_array
    from normcli.sources import tutorial_dataset

    data = tutorial_dataset(samples, size, channels, seed)
    if not output.lower().endswith((".npy", ".npz")) and output != "-":
        data = data.astype("float32")
    write_array(output, data, force=force, layout=Layout("NHWC"))
    if output != "-":
        click.echo(f"wrote {samples} images of {size}×{size}×{channels} ({data.dtype}) to {output}")


@cli.command()
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the dataset.")
@click.option("--bins", type=click.IntRange(1, 1000), default=30, show_default=True, help="Histogram bins.")
def demo(seed, bins):
    """Replay the batch-normalization tutorial on its synthetic dataset.

    Min-max normalization and standardization of the whole set, then batch norm of the first
    10 images, shown to equal standardizing those 10; each with its histogram, mean and variance.

    \b
    Example:
        normcli demo
        normcli demo --seed 1 --bins 50
    """
    from normcli.demo import run_demo

    printer = _printer(False)
    for step in run_demo(seed=seed, bins=bins):
        printer.line()
        printer.line(step.title, style="bold underline")
        if step.note:
            printer.line(step.note)
        for stats in step.stats:
            printer.stats(stats)


def main() -> None:
    # Click ends a closed pipe (`normcli ... | head`) quietly itself, with exit 1 and no traceback.
    cli(prog_name="normcli")
