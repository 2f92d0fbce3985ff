"""normcli's commands: parse the options, call the core, render the result. No arithmetic here."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import warnings

import click

from normcli import __version__
from normcli.errors import (ExitCode, NormcliError, NormcliWarning, StatsFileError, Terminated, UsageMismatch,
                            one_line)

# Spelled out here rather than imported from the core, so that --help starts without numpy.
SCOPES = ("global", "channel", "sample", "pixel")
LAYOUTS = ("NHWC", "NCHW", "NHW", "NC", "N")
ENGINES = ("threads", "processes", "dask")
# Paths complete as files in bash/zsh/fish; normcli checks them itself, for its own one-line errors.
PATH = click.Path(readable=False, allow_dash=True)


class ReportedError(click.ClickException):
    """A NormcliError on its way out: one line on stderr, its own exit code."""

    def __init__(self, error: NormcliError):
        super().__init__(str(error))
        self.exit_code = int(error.exit_code)

    def show(self, file=None) -> None:
        click.echo(f"error: {self.message}", err=True)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, NormcliWarning):
        click.echo(f"warning: {one_line(str(message))}", err=True)
    else:
        click.echo(f"warning: {category.__name__}: {one_line(str(message))}", err=True)


def _debug_anywhere(ctx: click.Context, param, value: bool) -> None:
    """`normcli stats x.npy --debug` means what `normcli --debug stats x.npy` does."""
    if value:
        ctx.find_root().params["debug"] = True


class NormcliCommand(click.Command):
    """Usage problems found by the core are shown with this command's own usage line;
    every command also takes --debug."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.params.append(click.Option(["--debug"], is_flag=True, expose_value=False, is_eager=True,
                                        callback=_debug_anywhere, help="Show the full traceback of an error."))

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
            except BrokenPipeError:
                raise  # a closed pipe (`normcli ... | head`): Click ends it quietly
            except OSError as error:  # what the system said, about the file it named
                if ctx.params.get("debug"):
                    raise
                # Every file normcli opens is named; an unnamed stream is the report on stdout.
                raise ReportedError(NormcliError(error.strerror or str(error),
                                                 "stdout" if error.filename is None else str(error.filename))) from None
            except KeyboardInterrupt:
                click.echo("error: interrupted; nothing was written", err=True)
                ctx.exit(ExitCode.INTERRUPTED)
            except Terminated:
                click.echo("error: terminated; nothing was written", err=True)
                ctx.exit(ExitCode.TERMINATED)


COMPLETION = """\b
Shell completion (commands, options, file names): add to ~/.bashrc
  eval "$(_NORMCLI_COMPLETE=bash_source normcli)"
or to ~/.zshrc
  eval "$(_NORMCLI_COMPLETE=zsh_source normcli)"
or for fish, in ~/.config/fish/completions/normcli.fish
  _NORMCLI_COMPLETE=fish_source normcli | source"""


@click.group(cls=NormcliGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=COMPLETION)
@click.version_option(__version__, "-V", "--version", prog_name="normcli")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
def cli(debug: bool) -> None:
    """Statistics and normalization for image folders and .npy/.npz arrays.

    \b
    Example:
        normcli sample data.npy
        normcli stats data.npy
        normcli standardize data.npy -o z.npy
    """


# -- option types ----------------------------------------------------------------------
class FiniteFloat(click.ParamType):
    """A finite number (NaN and infinities refused), optionally at least `min`."""

    name = "number"

    def __init__(self, min: float | None = None):
        self.min = min

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.min is not None and number < self.min:
            self.fail(f"{value!r} is below {self.min:g}", param, ctx)
        return number


class Numbers(click.ParamType):
    """One finite number or a comma-separated list of them (e.g. one per channel)."""

    name = "numbers"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        finite = FiniteFloat()
        return [finite.convert(v, param, ctx) for v in str(value).split(",")]


class Momentum(click.ParamType):
    """A number in [0, 1], or 'cumulative' (None) for the cumulative average."""

    name = "momentum"

    def convert(self, value, param, ctx):
        if value is None or value == "cumulative":
            return None
        number = FiniteFloat(0.0).convert(value, param, ctx)
        if number > 1:
            self.fail(f"{value!r} is not in [0, 1] (or 'cumulative')", param, ctx)
        return number


SEED = click.IntRange(min=0)


# -- shared options -------------------------------------------------------------------
def input_options(fn):
    for option in reversed((
        click.argument("inputs", nargs=-1, required=True, metavar="INPUT...", type=PATH),
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
                 help="Refuse images with more pixels (width x height) than this, before decoding; 0: no limit "
                      "[default: 89478485, Pillow's]."),
    click.option("--include-alpha", is_flag=True, expose_value=False, callback=_read_option,
                 help="Measure and transform alpha as a channel [default: pass it through unchanged]."),
    click.option("--include-hidden", is_flag=True, expose_value=False, callback=_read_option,
                 help="Also read dot-files and dot-folders inside input folders."),
    click.option("--exclude", metavar="GLOB", multiple=True, expose_value=False, callback=_read_option,
                 help="Leave out images whose path inside the folder matches GLOB (fnmatch; repeatable)."),
)


def scope_option(default: str, choices=SCOPES):
    return click.option("--per", "per", type=click.Choice(choices), default=None,
                        help=f"Scope of the statistics [default: {default}].")


ascii_option = click.option("--ascii", "ascii_only", is_flag=True,
                            help="Plain ASCII: bars of #, no Unicode symbols or blocks [default: when "
                                 "the output's encoding cannot print them].")


def _refuse_terminal(ctx: click.Context, param, value):
    """`-o -` writes binary .npy data, which a terminal cannot show: refuse, as curl and httpie do."""
    if value == "-" and sys.stdout.isatty():
        raise ReportedError(UsageMismatch("refusing to write .npy data to a terminal; "
                                          "redirect (> x.npy) or pipe it"))
    return value


def report_options(formats=("table", "json")):
    def decorate(fn):
        for option in reversed((
            click.option("--bins", type=click.IntRange(0, 1000), default=30, show_default=True,
                         help="Histogram bins (0: no histograms)."),
            click.option("--format", "fmt", type=click.Choice(formats), default="table", show_default=True,
                         help="Report format."),
            click.option("--quiet", "-q", is_flag=True, help="Print no report and no progress bar."),
            ascii_option,
        )):
            fn = option(fn)
        return fn
    return decorate


def output_options(fn):
    for option in reversed((
        click.option("-o", "--output", required=True, metavar="OUT", type=PATH, callback=_refuse_terminal,
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


def _remember_engine(ctx: click.Context, param: click.Parameter, value):
    ctx.meta.setdefault("normcli.engine", {})[param.name] = value
    return value


def engine_options(fn):
    """--engine, --workers, --scheduler, --scheduler-file: kept on the context, for _engine()."""
    for option in reversed((
        click.option("--engine", type=click.Choice(ENGINES), default="threads", show_default=True,
                     expose_value=False, callback=_remember_engine,
                     help="Where the work runs: threads of this process, a process pool, or a Dask cluster."),
        click.option("--workers", type=click.IntRange(min=1), expose_value=False, callback=_remember_engine,
                     help="Threads, processes or local Dask workers [default: the cores, at most 8]."),
        click.option("--scheduler", metavar="tcp://HOST:PORT", expose_value=False, callback=_remember_engine,
                     help="The Dask scheduler to run on (--engine dask) [default: a local cluster]."),
        click.option("--scheduler-file", metavar="FILE", expose_value=False, callback=_remember_engine,
                     help="A Dask scheduler file, as dask-jobqueue and dask-mpi write (--engine dask)."),
    )):
        fn = option(fn)
    return fn


def _engine():
    """The engine the command's options chose (a context manager that shuts it down)."""
    from normcli.engine import open_engine

    return open_engine(**click.get_current_context().meta.get("normcli.engine", {}))


def _open(inputs, layout, key, mode):
    from normcli.images import ReadOptions
    from normcli.sources import open_dataset

    given = click.get_current_context().meta.get("normcli.read", {})
    options = ReadOptions(**{name: value for name, value in given.items() if value is not None})
    return open_dataset(inputs, layout=layout, key=key, mode=mode, images=options)


def _printer(to_stderr: bool, ascii_only: bool = False):
    from normcli.render import Printer

    return Printer(stderr=to_stderr, ascii=ascii_only)


@contextlib.contextmanager
def _progress(quiet: bool, ascii_only: bool):
    """The passes' progress display on stderr (None: no bar, as in pipes and with --quiet)."""
    from normcli.render import progress_display

    display = progress_display(quiet=quiet, ascii=ascii_only)
    try:
        yield display
    finally:
        if display is not None:
            display.close()


def _emit_json(doc: dict, to_stderr: bool = False) -> None:
    click.echo(json.dumps(doc, allow_nan=False), err=to_stderr)


# -- stats ---------------------------------------------------------------------------
@cli.command(short_help="Mean, variance, min, max and histograms.")
@input_options
@scope_option("channel")
@click.option("--range", "hist_range", type=(FiniteFloat(), FiniteFloat()), metavar="LO HI",
              help="Histogram range [default: each row's min and max].")
@click.option("--ddof", type=click.IntRange(0, 1), default=0, show_default=True, help="Variance divisor N - ddof.")
@report_options(("table", "json", "csv", "torchvision"))
@engine_options
@click.option("--save-stats", "--save", "save", metavar="FILE", type=PATH,
              help="Also save the statistics (for --stats-from, merge-stats).")
@click.option("--force", "-f", is_flag=True, help="Replace an existing --save-stats file.")
def stats(inputs, layout, key, mode, ignore_nan, per, hist_range, ddof, bins, fmt, quiet, ascii_only, save,
          force):
    """Print mean, variance, min, max and histograms of a dataset.

    \b
    Example:
        normcli stats data.npy --per global
        normcli stats sample_images/rgb --format torchvision
    """
    from normcli import render, statsfile
    from normcli.passes import measure
    from normcli.sinks import check_target

    if fmt == "torchvision" and per not in (None, "channel"):
        raise click.UsageError("--format torchvision prints per-channel statistics; drop --per")
    if hist_range is not None and not hist_range[0] < hist_range[1]:
        raise click.BadParameter("LO must be below HI", param_hint="--range")
    bins = 0 if fmt in ("csv", "torchvision") else bins
    scope = per or "channel"
    with _open(inputs, layout, key, mode) as dataset, _progress(quiet, ascii_only) as progress:
        if save:
            check_target(save, dataset.inputs, force, folder=False)
        with _engine() as engine:
            result = measure(dataset, scope, bins=bins, hist_range=hist_range, ignore_nan=ignore_nan,
                             engine=engine, progress=progress)
    if save:
        statsfile.write(save, _stats_file(result, ddof), force=force, inputs=inputs)
    if quiet:
        return
    if fmt == "json":
        _emit_json(render.stats_json(result, ddof))
    elif fmt == "csv":
        click.echo(render.stats_csv(result, ddof).encode("utf-8"), nl=False)  # data: UTF-8 whatever the locale
    elif fmt == "torchvision":
        click.echo(render.torchvision_line(result, ddof))
    else:
        _printer(False, ascii_only).stats(result, ddof)


def _stats_file(result, ddof: int, extra: dict | None = None):
    from normcli.statsfile import StatsFile

    return StatsFile(result.scope, result.layout, result.sample_shape, result.moments, ddof,
                     list(result.inputs), extra or {})


# -- transforms -------------------------------------------------------------------------
def _run_transform(dataset, plan, *, output, dtype, ext, clip, force, bins, fmt, quiet, ascii_only, ignore_nan,
                   title, save_stats=None, ddof=0):
    """Run both passes into the output, then save the fitted statistics and report."""
    from pathlib import Path

    from normcli import render, statsfile
    from normcli.passes import transform
    from normcli.sinks import Outputs, check_target

    if save_stats:
        # Checked before any work, so that a bad --save-stats cannot leave the output written.
        if output != "-" and Path(save_stats).resolve() == Path(output).resolve():
            raise click.UsageError("--save-stats and -o name the same file")
        if output != "-" and Path(output).resolve() in Path(save_stats).resolve().parents:
            raise click.UsageError("--save-stats lies inside the -o folder, which this run replaces; save it beside")
        check_target(save_stats, dataset.inputs, force, folder=False)
    # The output and the --save-stats file commit together, or neither appears.
    with _progress(quiet, ascii_only) as progress, _engine() as engine, Outputs() as outputs:
        result = transform(dataset, plan, output, dtype=dtype, ext=ext, clip=clip, force=force, bins=bins,
                           ignore_nan=ignore_nan, report=not quiet, engine=engine, progress=progress,
                           outputs=outputs)
        if save_stats:
            encoding = {"encoding": result.encoding} if result.encoding else {}
            statsfile.write(save_stats, _stats_file(result.before, ddof, {**plan.saved_extra(), **encoding}),
                            force=force, inputs=dataset.inputs, outputs=outputs)
        outputs.commit()
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
        _emit_json(doc, to_stderr)  # the one JSON document: its "output" says what was written
        return
    printer = _printer(to_stderr, ascii_only)
    printer.stats(result.before, ddof, title=f"before: {render.inputs_text(dataset.inputs)}")
    printer.line()
    if batches is not None:
        printer.line(f"{title}: {len(batches):,} batches", style="bold")
        printer.batches(batches)
        printer.line()
    printer.stats(result.after, ddof, title=f"after {title}: {output}")
    printer.line()
    click.echo(_closing_line(result, save_stats), err=to_stderr)


def _closing_line(result, save_stats: str | None) -> str:
    return result.written + (f"; statistics to {save_stats}" if save_stats else "")


def fit_options(fn):
    for option in reversed((
        click.option("--save-stats", "--save", "save_stats", metavar="FILE", type=PATH,
                     help="Save the fitted statistics as JSON."),
        click.option("--stats-from", metavar="FILE", type=PATH,
                     help="Apply statistics saved earlier instead of fitting."),
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


@cli.command(short_help="Min-max scale to a range (default [0, 1]).")
@input_options
@output_options
@scope_option("global")
@click.option("--range", "out_range", type=(FiniteFloat(), FiniteFloat()), default=(0.0, 1.0), show_default=True,
              metavar="LO HI", help="Target range.")
@fit_options
@report_options()
@engine_options
def normalize(inputs, layout, key, mode, ignore_nan, output, dtype, ext, clip, force, per, out_range,
              save_stats, stats_from, inverse, bins, fmt, quiet, ascii_only):
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
                       fmt=fmt, quiet=quiet, ascii_only=ascii_only, ignore_nan=ignore_nan, save_stats=save_stats,
                       title="inverse min-max" if inverse else f"min-max to [{out_range[0]:g}, {out_range[1]:g}]")


@cli.command(short_help="Z-score: mean 0, variance 1.")
@input_options
@output_options
@scope_option("global")
@click.option("--ddof", type=click.IntRange(0, 1), help="Variance divisor N - ddof [default: 0, or the saved file's].")
@click.option("--eps", type=FiniteFloat(min=0), default=0.0, show_default=True,
              help="Added to the variance (scikit-learn uses 0).")
@fit_options
@report_options()
@engine_options
def standardize(inputs, layout, key, mode, ignore_nan, output, dtype, ext, clip, force, per, ddof, eps,
                save_stats, stats_from, inverse, bins, fmt, quiet, ascii_only):
    """Z-score a dataset: mean 0, variance 1.

    \b
    Example:
        normcli standardize data.npy -o z.npy
        normcli standardize train.npy -o tz.npy --per pixel --save-stats t.json
        normcli standardize test.npy -o z.npy --stats-from t.json
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
                       fmt=fmt, quiet=quiet, ascii_only=ascii_only, ignore_nan=ignore_nan, save_stats=save_stats, ddof=ddof,
                       title="inverse z-score" if inverse else "z-score")


def _per_key(value, keys: int, name: str):
    from normcli.transforms import per_key

    try:
        return per_key(value, keys, name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=name) from None


@cli.command(short_help="Batch-normalize each mini-batch (training mode).")
@input_options
@output_options
@click.option("--batch-size", "-b", type=click.IntRange(min=1), required=True, help="Samples per mini-batch.")
@scope_option("channel", ("channel", "global", "pixel"))
@click.option("--gamma", type=Numbers(), metavar="G",
              help="Scale: one number or one per channel, comma-separated [default: 1].")
@click.option("--beta", type=Numbers(), metavar="B", help="Shift: one number or one per channel [default: 0].")
@click.option("--eps", type=FiniteFloat(min=0), default=1e-5, show_default=True, help="Added to the variance.")
@click.option("--momentum", type=Momentum(), default="0.1", show_default=True,
              help="Running-statistics momentum, or 'cumulative' for the cumulative average.")
@click.option("--drop-last", is_flag=True, help="Leave out a last batch shorter than --batch-size.")
@click.option("--shuffle", is_flag=True, help="Batch samples in a random order (written in that order).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed for --shuffle.")
@click.option("--save-stats", "--save", "save_stats", metavar="FILE", type=PATH,
              help="Save the input's statistics and the running statistics.")
@click.option("--eval", "eval_mode", is_flag=True,
              help="Inference mode: normalize by the running statistics of --stats-from.")
@click.option("--stats-from", metavar="FILE", type=PATH,
              help="Statistics saved by batchnorm --save-stats (with --eval).")
@report_options()
@engine_options
def batchnorm(inputs, layout, key, mode, ignore_nan, output, dtype, ext, clip, force, batch_size, per, gamma,
              beta, eps, momentum, drop_last, shuffle, seed, save_stats, eval_mode, stats_from, bins, fmt, quiet,
              ascii_only):
    """Batch-normalize each mini-batch by its own statistics (training mode, as PyTorch).

    \b
    Example:
        normcli batchnorm data.npy -o bn.npy --batch-size 10
        normcli batchnorm data.npy -o bn.npy -b 32 --save-stats run.json
        normcli batchnorm test.npy -o t.npy -b 32 --eval --stats-from run.json
    """
    from normcli.scopes import scope as as_scope
    from normcli.passes import BatchPlan, check_scope, eval_plan

    if eval_mode != bool(stats_from):
        raise click.UsageError("--eval and --stats-from go together: inference uses saved running statistics")
    dataset, saved, scope = _fit_inputs(inputs, layout, key, mode, per, save_stats, stats_from, False, "channel")
    with dataset:
        check_scope(dataset, scope)
        keys = as_scope(scope).keys(dataset.layout, dataset.sample_shape, dataset.n_samples)
        gammas = _per_key(1.0 if gamma is None else gamma, keys, "--gamma")
        betas = _per_key(0.0 if beta is None else beta, keys, "--beta")
        if saved is not None:
            plan = eval_plan(saved, stats_from, scope, gammas, betas, eps)
            title = "batch norm (eval, running statistics)"
        else:
            order = None
            if shuffle:
                from normcli.sources import shuffled_order

                order = shuffled_order(dataset.n_samples, seed)
            plan = BatchPlan(dataset, scope, batch_size, gammas, betas, eps, momentum=momentum,
                             drop_last=drop_last, order=order, ignore_nan=ignore_nan)
            if plan.samples == 0:
                raise click.UsageError(f"--drop-last leaves no batch: {dataset.n_samples} samples, "
                                       f"--batch-size {batch_size}")
            title = f"batch norm, batches of {batch_size}"
        _run_transform(dataset, plan, output=output, dtype=dtype, ext=ext, clip=clip, force=force, bins=bins,
                       fmt=fmt, quiet=quiet, ascii_only=ascii_only, ignore_nan=ignore_nan, save_stats=save_stats, title=title)


@cli.command(short_help="Group/layer/instance norm per sample.")
@input_options
@output_options
@click.option("--groups", "-g", type=click.IntRange(min=1), required=True,
              help="Groups of channels (1: layer norm; the channel count: instance norm).")
@click.option("--gamma", type=Numbers(), metavar="G", help="Scale: one number or one per channel [default: 1].")
@click.option("--beta", type=Numbers(), metavar="B", help="Shift: one number or one per channel [default: 0].")
@click.option("--eps", type=FiniteFloat(min=0), default=1e-5, show_default=True, help="Added to the variance.")
@report_options()
@engine_options
def groupnorm(inputs, layout, key, mode, ignore_nan, output, dtype, ext, clip, force, groups, gamma, beta, eps,
              bins, fmt, quiet, ascii_only):
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
        plan = GroupPlan(groups, _per_key(1.0 if gamma is None else gamma, channels, "--gamma"),
                         _per_key(0.0 if beta is None else beta, channels, "--beta"), eps, ignore_nan=ignore_nan)
        _run_transform(dataset, plan, output=output, dtype=dtype, ext=ext, clip=clip, force=force, bins=bins,
                       fmt=fmt, quiet=quiet, ascii_only=ascii_only, ignore_nan=ignore_nan, title=f"group norm, {groups} groups")


# -- statistics files ---------------------------------------------------------------
@cli.command("merge-stats", short_help="Merge statistics saved from shards.")
@click.argument("files", nargs=-1, required=True, metavar="STATS.json...", type=PATH)
@click.option("-o", "--output", required=True, metavar="ALL.json", type=PATH, help="The merged statistics file.")
@click.option("--force", "-f", is_flag=True, help="Replace an existing output.")
def merge_stats(files, output, force):
    """Merge statistics saved from shards into one file, as if measured in one run.

    \b
    Example:
        normcli stats part1.npy --save a.json
        normcli stats part2.npy --save b.json
        normcli merge-stats a.json b.json -o all.json
    """
    from normcli import render, statsfile

    from normcli.sinks import check_target

    check_target(output, files, force, folder=False)  # onto one of its own inputs: refused even with --force
    merged = statsfile.merge([(f, statsfile.read(f)) for f in files])
    statsfile.write(output, merged, force=force, inputs=files)
    click.echo(render.for_stream(f"merged {len(files)} files: {int(merged.moments.count.sum()):,} values -> "
                                 f"{output}", sys.stdout))


# -- the tutorial -----------------------------------------------------------------------
@cli.command(short_help="Write the tutorial's synthetic dataset.")
@click.argument("output", metavar="OUT", type=PATH, callback=_refuse_terminal)
@click.option("-n", "samples", type=click.IntRange(min=1), default=1000, show_default=True, help="Images.")
@click.option("--size", type=click.IntRange(min=1), default=32, show_default=True, help="Height and width.")
@click.option("--channels", type=click.IntRange(min=1), default=1, show_default=True, help="Channels.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Random seed.")
@click.option("--force", "-f", is_flag=True, help="Replace an existing output.")
def sample(output, samples, size, channels, seed, force):
    """Write the tutorial's dataset: N images of SIZE x SIZE x CHANNELS, normal signal plus noise
    (mean 26, var 306).

    A .npy/.npz file gets float64; a folder gets one float32 TIFF per image (values include negatives).

    \b
    Example:
        normcli sample data.npy
        normcli sample images/ -n 100
    """
    from normcli import render
    from normcli.layout import Layout
    from normcli.sinks import output_kind, write_array
    from normcli.sources import check_tutorial_size, tutorial_dataset

    kind = output_kind(output)
    check_tutorial_size(samples, size, channels)
    data = tutorial_dataset(samples, size, channels, seed)
    if kind == "folder":
        data = data.astype("float32")
    written = write_array(output, data, force=force, layout=Layout("NHWC"))
    click.echo(render.for_stream(written, sys.stderr if output == "-" else sys.stdout), err=output == "-")


@cli.command(short_help="Replay the batch-normalization tutorial.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Random seed of the dataset.")
@click.option("--bins", type=click.IntRange(1, 1000), default=30, show_default=True, help="Histogram bins.")
@ascii_option
def demo(seed, bins, ascii_only):
    """Replay the batch-normalization tutorial on its synthetic dataset.

    Min-max normalization and standardization of the whole set, then batch norm of the first
    10 images, shown to equal standardizing those 10; each with its histogram, mean and variance.

    \b
    Example:
        normcli demo
        normcli demo --seed 1 --bins 50
    """
    from normcli.demo import run_demo

    printer = _printer(False, ascii_only)
    for step in run_demo(seed=seed, bins=bins):
        printer.line()
        printer.line(step.title, style="bold underline")
        if step.note:
            printer.line(step.note)
        for stats in step.stats:
            printer.stats(stats)


def _terminate(signum, frame) -> None:
    raise Terminated()


def main() -> None:
    # SIGTERM unwinds like Ctrl-C, so that every temporary is removed on the way out.
    signal.signal(signal.SIGTERM, _terminate)
    # Click ends a closed pipe (`normcli ... | head`) quietly itself, with exit 1 and no traceback.
    try:
        cli(prog_name="normcli")
    except SystemExit as exit:
        code = exit.code
    except Terminated:
        code = ExitCode.TERMINATED
    try:
        sys.stdout.flush()  # what is left in the buffer: a full disk (/dev/full) fails here
    except OSError as error:
        if not code:
            if not isinstance(error, BrokenPipeError):  # a closed pipe ends quietly
                click.echo(f"error: {one_line(error.strerror or str(error))} (stdout)", err=True)
            code = ExitCode.ERROR
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so exit does not fail again
    sys.exit(code)
