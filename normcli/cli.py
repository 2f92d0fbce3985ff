"""normcli's commands: parse the options, call the core, render the result. No arithmetic here."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import json
import math
import os
import signal
import sys
import warnings

import click

from normcli import __version__
from normcli.errors import (BadOption, ExitCode, NormcliError, NormcliWarning, Terminated, UsageMismatch, one_line,
                            warning_line)
from normcli.options import ENGINES, LAYOUTS, MODES, QUANTILE_METHODS, SCOPES, Environment  # numpy-free


def _lazy_module(name: str):
    """`name`, imported at its first attribute access (importlib's LazyLoader): run.py imports numpy
    and the whole core at its top, which `normcli --help` must not wait for."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = _lazy_module("normcli.run")
# Paths complete as files in bash/zsh/fish; normcli checks them itself, for its own one-line errors.
PATH = click.Path(readable=False, allow_dash=True)


class ReportedError(click.ClickException):
    """A NormcliError on its way out: one line on stderr, its own exit code."""

    def __init__(self, error: NormcliError, encoding: str | None = None):
        super().__init__(one_line(str(error), encoding))  # names as stderr can show them
        self.exit_code = int(error.exit_code)

    def show(self, file=None) -> None:
        click.echo(f"error: {self.message}", err=True)


def _show_warning(ctx: click.Context, message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line, from whichever thread raised it (an engine's worker threads have no
    click context of their own: the command's is handed in)."""
    click.echo(warning_line(message, category, _environment(ctx).stderr_encoding), err=True)


@contextlib.contextmanager
def _debug_notes(ctx: click.Context):
    """The core's notes (the `normcli` log: e.g. which kernels run) on stderr, with --debug only."""
    import logging

    class Notes(logging.Handler):
        def emit(self, record):
            if ctx.params.get("debug"):
                click.echo(f"note: {record.getMessage()}", err=True)

    log, notes, level = logging.getLogger("normcli"), Notes(), logging.getLogger("normcli").level
    log.addHandler(notes)
    log.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        log.removeHandler(notes)
        log.setLevel(level)


def _debug_anywhere(ctx: click.Context, param, value: bool) -> None:
    """`normcli stats x.npy --debug` means what `normcli --debug stats x.npy` does."""
    if value:
        ctx.find_root().params["debug"] = True


# The help's sections, in this order: the options most runs give first (-o, --per), the rarely used
# reading options after the report's. A command's own options are "What to do".
SECTIONS = ("Where to write", "What to do", "Report", "What to read", "Zarr and HDF5 outputs", "Engine", "Other")


def in_section(title: str, *options):
    """A decorator that applies `options` and files them under `title` in the help."""
    def decorate(fn):
        before = len(getattr(fn, "__click_params__", []))
        for option in reversed(options):
            fn = option(fn)
        for param in fn.__click_params__[before:]:
            param.section = getattr(param, "own_section", None) or title  # unless an option names its own
        return fn
    return decorate


class NormcliOption(click.Option):
    """An option whose help leaves out Click's `[x>=1]`-style range suffix: the help (or the metavar)
    says the bounds where they matter, and a value outside them is refused with the range."""

    def __init__(self, *args, section: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.own_section = section  # the help's section, if not its decorator's

    def get_help_extra(self, ctx: click.Context):
        extra = super().get_help_extra(ctx)
        extra.pop("range", None)
        return extra


option = functools.partial(click.option, cls=NormcliOption)


class NormcliCommand(click.Command):
    """Usage problems found by the core are shown with this command's own usage line;
    every command also takes --debug; the help groups the options in SECTIONS."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        params = self.get_params(ctx)
        if not any(getattr(param, "section", None) for param in params):
            return super().format_options(ctx, formatter)  # a small command: one list
        sections: dict[str, list] = {}
        other = ("debug", self.get_help_option(ctx))
        for param in params:
            record = None if isinstance(param, click.Argument) else param.get_help_record(ctx)
            if record is not None:
                title = "Other" if param.name in other or param in other else getattr(param, "section", "What to do")
                sections.setdefault(title, []).append(record)
        for title in SECTIONS:
            if title in sections:
                with formatter.section(title):
                    formatter.write_dl(sections[title])

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
            if isinstance(error, BadOption):
                raise click.BadParameter(str(error), ctx, param_hint=error.option) from None
            raise click.UsageError(str(error), ctx) from None


class NormcliGroup(click.Group):
    """The one error boundary: known errors become one line and an exit code."""

    command_class = NormcliCommand

    def invoke(self, ctx: click.Context):
        _committed().clear()  # an earlier command's, in this process (tests, scripts)
        with warnings.catch_warnings(), _debug_notes(ctx):
            warnings.simplefilter("always", NormcliWarning)
            warnings.showwarning = functools.partial(_show_warning, ctx)
            try:
                return super().invoke(ctx)
            except NormcliError as error:
                if ctx.params.get("debug"):
                    raise
                raise ReportedError(error, _environment(ctx).stderr_encoding) from None
            except BrokenPipeError:
                raise  # a closed pipe (`normcli ... | head`): Click ends it quietly
            except OSError as error:  # what the system said, about the file it named
                if ctx.params.get("debug"):
                    raise
                # Every file normcli opens is named; an unnamed stream is the report on stdout.
                raise ReportedError(NormcliError(error.strerror or str(error),
                                                 "stdout" if error.filename is None else str(error.filename)),
                                    _environment(ctx).stderr_encoding) from None
            except KeyboardInterrupt:
                click.echo(f"error: interrupted; {_left_written()}", err=True)
                ctx.exit(ExitCode.INTERRUPTED)
            except Terminated:
                click.echo(f"error: terminated; {_left_written()}", err=True)
                ctx.exit(ExitCode.TERMINATED)


def _left_written() -> str:
    """What a run ended by a signal leaves: nothing, or the outputs it committed before the signal
    came (while its report was shown)."""
    committed = _committed()
    if not committed:
        return "nothing was written"
    names = ", ".join(one_line(_as_given(path)) for path in committed)
    return f"{names} {'was' if len(committed) == 1 else 'were'} written, the report cut short"


def _committed() -> list[str]:
    """sinks.COMMITTED, or [] where no output module was loaded (nothing can have been committed)."""
    sinks = sys.modules.get("normcli.sinks")
    return sinks.COMMITTED if sinks is not None else []


def _as_given(path: str) -> str:
    """An absolute path as a user would have typed it: relative to the working folder if inside it."""
    relative = os.path.relpath(path)
    return path if relative.startswith(os.pardir) else relative


COMPLETION = """\b
Shell completion (commands, options, file names): add to ~/.bashrc
  eval "$(_NORMCLI_COMPLETE=bash_source normcli)"
or to ~/.zshrc
  eval "$(_NORMCLI_COMPLETE=zsh_source normcli)"
or for fish, in ~/.config/fish/completions/normcli.fish
  _NORMCLI_COMPLETE=fish_source normcli | source"""


@click.group(cls=NormcliGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=COMPLETION)
@click.version_option(__version__, "-V", "--version", prog_name="normcli")
@option("--debug", is_flag=True, help="Show the full traceback of an error.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Statistics and normalization for image folders and .npy/.npz arrays.

    \b
    Example:
        normcli sample data.npy
        normcli stats data.npy
        normcli standardize data.npy -o z.npy
    """
    _environment(ctx)


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
    """One finite number or a comma-separated list of them (e.g. one per channel), as a tuple; each
    one a value of `each` (a finite number unless given)."""

    name = "numbers"

    def __init__(self, each: click.ParamType | None = None):
        self.each = each or FiniteFloat()

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        return tuple(self.each.convert(v, param, ctx) for v in str(value).split(","))


class Percentile(click.ParamType):
    """A percentile: a number in [0, 100]."""

    name = "percentile"

    def convert(self, value, param, ctx):
        number = FiniteFloat().convert(value, param, ctx)
        if not 0 <= number <= 100:
            self.fail(f"{value!r} is not a percentile in [0, 100]", param, ctx)
        return number


quantile_method_option = option(
    "--quantile-method", type=click.Choice(QUANTILE_METHODS), default="linear", show_default=True, metavar="METHOD",
    help="np.percentile's method (all 13 of numpy's), e.g. lower, nearest, midpoint.")


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


class Rows(click.ParamType):
    """A positive number of rows, or 'all' (None)."""

    name = "rows"

    def convert(self, value, param, ctx):
        if value is None or value == "all":
            return None
        if isinstance(value, int):
            return value
        try:
            number = int(value)
        except ValueError:
            self.fail(f"{value!r} is not a number of rows or 'all'", param, ctx)
        if number < 1:
            self.fail(f"{value!r} is below 1", param, ctx)
        return number


SEED = click.IntRange(min=0)


# -- option objects ----------------------------------------------------------------------
def _packed(name: str, build, options, section: str = "What to do"):
    """A decorator that applies `options` (filed under `section` in the help) and hands the command
    one value instead of their parameters: `name` = build(**their values); `build` is a function,
    or the name of a class of run.py (looked up when the command runs, so --help does not load it)."""
    def decorate(fn):
        @functools.wraps(fn)
        def command(*args, **kwargs):
            maker = getattr(run, build) if isinstance(build, str) else build
            kwargs[name] = maker(**{param: kwargs.pop(param) for param in names})
            return fn(*args, **kwargs)

        before = len(getattr(command, "__click_params__", []))
        command = in_section(section, *options)(command)
        names = [param.name for param in command.__click_params__[before:]]
        return command
    return decorate


def force_option(help: str = "Replace an existing output."):
    return option("--force", "-f", is_flag=True, help=help)


input_options = _packed("inputs", "Inputs", (
    click.argument("paths", nargs=-1, required=True, metavar="INPUT...", type=PATH),
    option("--layout", type=click.Choice(LAYOUTS, case_sensitive=False), metavar="AXES",
           help="Array axes: " + ", ".join(name.upper() for name in LAYOUTS) + " [default: by ndim]."),
    option("--key", metavar="NAME", help="Array in .npz/.zarr/.h5 inputs [default: the only one]."),
    option("--mode", type=click.Choice(MODES), metavar="MODE",
           help="Convert images to " + ", ".join(MODES[:-1]) + f" or {MODES[-1]}."),
    option("--ignore-nan", is_flag=True, help="Leave NaN and inf out (and pass them through)."),
    option("--frames", type=click.Choice(("first", "all")), metavar="first|all",
           help="Multi-frame files: frame 1, or each as FILE#N."),
    option("--max-pixels", type=click.IntRange(min=0), metavar="N",
           help="Pixels an image may have (0: any) [default: 89478485]."),
    option("--include-alpha", is_flag=True, help="Treat alpha as a channel [default: pass it]."),
    option("--include-hidden", is_flag=True, help="Also read dot-files and dot-folders."),
    option("--exclude", metavar="GLOB", multiple=True, help="Leave out paths matching GLOB (repeatable)."),
), section="What to read")


def scope_option(default: str, choices=SCOPES):
    return option("--per", "per", type=click.Choice(choices), default=None, metavar="SCOPE",
                  help="|".join(choices) + f" [default: {default}].")


ascii_option = option("--ascii", "ascii_only", is_flag=True,
                            help="Plain ASCII [default: if the output needs it].")


def _environment(ctx: click.Context | None = None) -> Environment:
    """The run's streams: made once, from sys, when the command line is read (tests hand in their
    own with CliRunner.invoke(..., obj=Environment(...)))."""
    root = (ctx or click.get_current_context()).find_root()
    if root.obj is None:
        root.obj = Environment.from_sys()
    return root.obj


def _refuse_terminal(ctx: click.Context, param, value):
    """`-o -` writes binary .npy data, which a terminal cannot show: refuse, as curl and httpie do."""
    if value == "-" and _environment(ctx).stdout_isatty:
        raise ReportedError(UsageMismatch("refusing to write .npy data to a terminal; "
                                          "redirect (> x.npy) or pipe it"))
    return value


def report_options(formats=("table", "json")):
    return _packed("report", "Report", (
        option("--bins", type=click.IntRange(0, 1000), default=30, show_default=True, metavar="N",
               help="Histogram bins, up to 1000 (0: none)."),
        option("--format", "fmt", type=click.Choice(formats), default="table", show_default=True, metavar="FMT",
               help="|".join(formats) + "."),
        option("--quiet", "-q", is_flag=True, help="Print no report and no progress bar."),
        option("--no-progress", "progress", flag_value=False, default=True, help="No progress bar on stderr."),
        option("--rows", type=Rows(), default="12", show_default=True, metavar="N|all", help="Rows a table shows."),
        option("--color", type=click.Choice(("auto", "always", "never")), default="auto", show_default=True,
               metavar="WHEN", help="always|never|auto (NO_COLOR, FORCE_COLOR)."),
        ascii_option,
    ), section="Report")


output_options = _packed("output", "Output", (
    option("-o", "--output", "target", required=True, metavar="OUT", type=PATH, callback=_refuse_terminal,
                 help=".npy, .npz, .zarr, .h5, a folder, - (stdout)."),
    option("--dtype", type=click.Choice(("float32", "float64", "uint8", "uint16")), metavar="DTYPE",
           help="float32|float64|uint8|uint16 [default: float32]."),
    option("--ext", type=click.Choice(("png", "tiff", "npy")), metavar="EXT",
           help="png|tiff|npy in an output folder [default: the input's]."),
    option("--clip", is_flag=True,
                 help="Clip to the range (or to what 8/16-bit outputs hold)."),
    force_option(),
    option("--compressor", type=click.Choice(("zstd", "blosc", "gzip", "lzf", "none")), metavar="NAME",
           section="Zarr and HDF5 outputs", help="zstd|blosc|gzip|lzf|none [default: zstd; .h5: gzip]."),
    option("--output-key", metavar="NAME", section="Zarr and HDF5 outputs",
           help="Array of an .npz/.h5 output [default: --key, else data]."),
), section="Where to write")

engine_options = _packed("engine", "EngineOptions", (
    option("--engine", type=click.Choice(ENGINES), metavar="NAME",
           help="|".join(ENGINES) + " [default: threads]."),
    option("--workers", type=click.IntRange(min=1), metavar="N", help="Workers [default: the cores, at most 8]."),
    option("--scheduler", metavar="ADDRESS", help="A Dask scheduler's tcp://HOST:PORT."),
    option("--scheduler-file", metavar="FILE", help="A Dask scheduler file (dask-jobqueue, dask-mpi)."),
    option("--cluster-timeout", type=FiniteFloat(0.0), metavar="SECONDS",
           help="Give up on Dask after this [default: 30]."),
), section="Engine")

fit_options = _packed("fit", "Fit", (
    option("--save-stats", "--save", "save_stats", metavar="FILE", type=PATH,
                 help="Save the fitted statistics as JSON."),
    option("--stats-from", metavar="FILE", type=PATH, help="Apply statistics saved earlier (no fit)."),
    option("--inverse", is_flag=True, help="Undo the map (needs --stats-from)."),
))


# -- rendering the results ----------------------------------------------------------------
def _printer(to_stderr: bool, report: run.Report, env: Environment):
    from normcli.render import Printer

    return Printer(stderr=to_stderr, ascii=report.ascii_only, encoding=env.encoding(to_stderr), rows=report.rows,
                   color=report.color)


@contextlib.contextmanager
def _progress(report: run.Report, engine: run.EngineOptions, env: Environment):
    """The passes' progress display on stderr (None: no bar, as in pipes and with --quiet); it first
    says what the engine waits for (a scheduler), so that a wait is never silent."""
    from normcli.render import progress_display, waiting_notice

    display = progress_display(quiet=report.quiet or not report.progress, terminal=env.stderr_isatty,
                               ascii=report.ascii_only,
                               encoding=env.stderr_encoding)
    notice = waiting_notice(engine)
    if display is not None and notice:
        display.notice(notice)
    try:
        yield display
    except BaseException:
        if display is not None:
            display.close()
        raise
    if display is not None:
        display.finish()


def _emit_json(doc: dict, to_stderr: bool = False) -> None:
    click.echo(json.dumps(doc, allow_nan=False), err=to_stderr)


def _show_stats(result: run.StatsReport, report: run.Report, env: Environment) -> None:
    from normcli import render

    stats, ddof = result.stats, result.ddof
    if report.fmt == "json":
        _emit_json(render.stats_json(stats, ddof))
    elif report.fmt == "csv":
        click.echo(render.stats_csv(stats, ddof).encode("utf-8"), nl=False)  # data: UTF-8 whatever the locale
    elif report.fmt == "torchvision":
        click.echo(render.torchvision_line(stats, ddof))
    else:
        _printer(False, report, env).stats(stats, ddof)


def _show_transform(result: run.TransformReport, output: run.Output, report: run.Report, env: Environment) -> None:
    """The statistics before and after (and per batch), then what was written; on stderr when
    stdout carries the data."""
    from normcli import render

    to_stderr, ddof = output.to_stdout, result.ddof
    if report.fmt == "json":
        doc = {"before": render.stats_json(result.before, ddof), "after": render.stats_json(result.after, ddof),
               "output": output.target}
        if result.batches is not None:
            doc["batches"] = [vars(b) for b in result.batches]
        _emit_json(doc, to_stderr)  # the one JSON document: its "output" says what was written
        return
    printer = _printer(to_stderr, report, env)
    printer.stats(result.before, ddof, title=f"before: {render.inputs_text(result.inputs)}")
    printer.line()
    if result.batches is not None:
        printer.line(f"{result.title}: {len(result.batches):,} batches", style="bold")
        printer.batches(result.batches)
        printer.line()
    printer.stats(result.after, ddof, title=f"after {result.title}: {output.target}")
    printer.line()
    click.echo(result.closing_line, err=to_stderr)


def _echo_line(text: str, to_stderr: bool, env: Environment) -> None:
    from normcli.render import for_stream

    click.echo(for_stream(text, env.encoding(to_stderr)), err=to_stderr)


# -- stats ---------------------------------------------------------------------------
def _stats_params(per, hist_range, ddof, percentiles, median, quantile_method) -> run.StatsParams:
    q = (percentiles or ()) + ((50.0,) if median else ())
    return run.StatsParams(per, hist_range, ddof, percentiles=q, quantile_method=quantile_method)


@cli.command(short_help="Mean, variance, min, max, histograms, percentiles.")
@input_options
@_packed("params", _stats_params, (
    scope_option("channel"),
    option("--range", "hist_range", type=(FiniteFloat(), FiniteFloat()), metavar="LO HI",
           help="Histogram range [default: each row's min and max]."),
    option("--ddof", type=click.IntRange(0, 1), default=0, show_default=True, metavar="0|1",
           help="Variance divisor N - ddof."),
    option("--percentiles", type=Numbers(Percentile()), metavar="Q,...",
           help="Exact percentiles, as np.percentile (e.g. 1,50,99)."),
    option("--median", is_flag=True, help="The median (--percentiles 50)."),
    quantile_method_option,
))
@report_options(("table", "json", "csv", "torchvision"))
@engine_options
@in_section("Where to write",
            option("--save-stats", "--save", "save", metavar="FILE", type=PATH,
                         help="Also save them (for --stats-from, merge-stats)."),
            force_option("Replace an existing --save-stats file."))
def stats(inputs, params, report, engine, save, force):
    """Print mean, variance, min, max, histograms and percentiles of a dataset.

    \b
    Example:
        normcli stats data.npy --per global
        normcli stats sample_images/rgb --format torchvision
        normcli stats sample_images/rgb --percentiles 1,50,99
    """
    env = _environment()
    params = dataclasses.replace(params, save=save, force=force)
    with _progress(report, engine, env) as progress:
        result = run.run_stats(inputs, params, report, engine, env, progress)
    if not report.quiet:
        _show_stats(result, report, env)


# -- transforms -------------------------------------------------------------------------
def _transform(params, inputs: run.Inputs, output: run.Output, report: run.Report, engine: run.EngineOptions):
    """Every transform command: run it, then report."""
    env = _environment()
    with _progress(report, engine, env) as progress:
        result = run.run_transform(params, inputs, output, report, engine, env, progress)
    result.warn()
    if not report.quiet:
        _show_transform(result, output, report, env)


@cli.command(short_help="Min-max scale to a range (default [0, 1]).")
@input_options
@output_options
@_packed("params", "NormalizeParams", (
    scope_option("global"),
    option("--range", "out_range", type=(FiniteFloat(), FiniteFloat()), default=None, metavar="LO HI",
           help="Target range [default: 0 1, or the fitted one]."),
    option("--percentiles", type=(Percentile(), Percentile()), default=None, metavar="LO HI",
           help="Map these percentiles to the range, not min and max (clipped)."),
    option("--no-clip", is_flag=True, help="With --percentiles: keep values outside the range."),
    quantile_method_option,
))
@fit_options
@report_options()
@engine_options
def normalize(inputs, output, params, fit, report, engine):
    """Min-max scale a dataset to a range (default [0, 1]), or stretch its percentiles to it.

    \b
    Example:
        normcli normalize data.npy -o unit.npy
        normcli normalize sample_images -o normalized --per channel
        normcli normalize sample_images/rgb -o stretched --percentiles 1 99.8
    """
    _transform(dataclasses.replace(params, fit=fit), inputs, output, report, engine)


@cli.command(short_help="Z-score: mean 0, variance 1.")
@input_options
@output_options
@_packed("params", "StandardizeParams", (
    scope_option("global"),
    option("--ddof", type=click.IntRange(0, 1), metavar="0|1", help="Variance divisor N - ddof [default: 0, or saved]."),
    option("--eps", type=FiniteFloat(min=0), default=0.0, show_default=True, help="Added to the variance."),
    option("--robust", is_flag=True, help="Median and interquartile range (as RobustScaler)."),
    option("--quantile-range", type=(Percentile(), Percentile()), default=None, metavar="LO HI",
           help="--robust's percentiles [default: 25 75]."),
    quantile_method_option,
))
@fit_options
@report_options()
@engine_options
def standardize(inputs, output, params, fit, report, engine):
    """Z-score a dataset: mean 0, variance 1; or, --robust, median 0 and interquartile range 1.

    \b
    Example:
        normcli standardize data.npy -o z.npy
        normcli standardize train.npy -o tz.npy --per pixel --save-stats t.json
        normcli standardize test.npy -o z.npy --stats-from t.json
        normcli standardize data.npy -o r.npy --robust
    """
    _transform(dataclasses.replace(params, fit=fit), inputs, output, report, engine)


def affine_options(gamma_help: str):
    """--gamma, --beta and --eps of batch and group norm."""
    return (
        option("--gamma", type=Numbers(), metavar="G", help=gamma_help),
        option("--beta", type=Numbers(), metavar="B", help="Shift: a number or one per channel [default: 0]."),
        option("--eps", type=FiniteFloat(min=0), default=1e-5, show_default=True, help="Added to the variance."),
    )


def _batch_params(save_stats, stats_from, **given) -> run.BatchParams:
    return run.BatchParams(fit=run.Fit(save_stats, stats_from), **given)


@cli.command(short_help="Batch-normalize each mini-batch (training mode).")
@input_options
@output_options
@_packed("params", _batch_params, (
    option("--batch-size", "-b", type=click.IntRange(min=1), required=True, metavar="N",
           help="Samples per mini-batch."),
    scope_option("channel", ("channel", "global", "pixel")),
    *affine_options("Scale: a number or one per channel [default: 1]."),
    option("--momentum", type=Momentum(), default="0.1", show_default=True, metavar="M",
           help="Running momentum, or cumulative."),
    option("--drop-last", is_flag=True, help="Leave out a short last batch."),
    option("--shuffle", is_flag=True, help="Random batches (written in that order)."),
    option("--seed", type=SEED, default=0, show_default=True, metavar="N", help="Seed for --shuffle."),
    option("--save-stats", "--save", "save_stats", metavar="FILE", type=PATH,
                 help="Save input and running statistics."),
    option("--eval", "eval_mode", is_flag=True,
                 help="Normalize by --stats-from's running statistics."),
    option("--stats-from", metavar="FILE", type=PATH,
                 help="A batchnorm --save-stats file (for --eval)."),
))
@report_options()
@engine_options
def batchnorm(inputs, output, params, report, engine):
    """Normalize each mini-batch by its own statistics (PyTorch's training mode).

    \b
    Example:
        normcli batchnorm data.npy -o bn.npy --batch-size 10
        normcli batchnorm data.npy -o bn.npy -b 32 --save-stats run.json
        normcli batchnorm test.npy -o t.npy -b 32 --eval --stats-from run.json
    """
    _transform(params, inputs, output, report, engine)


@cli.command(short_help="Group/layer/instance norm per sample.")
@input_options
@output_options
@_packed("params", "GroupParams", (
    option("--groups", "-g", type=click.IntRange(min=1), required=True, metavar="N",
           help="Channel groups (1: layer, C: instance norm)."),
    *affine_options("Scale: a number or one per channel [default: 1]."),
))
@report_options()
@engine_options
def groupnorm(inputs, output, params, report, engine):
    """Group-normalize each sample over groups of channels (Wu & He, 2018; as PyTorch's GroupNorm).

    \b
    Example:
        normcli groupnorm sample_images/rgb -o gn.npy --groups 3 --mode rgb
        normcli groupnorm data.npy -o ln.npy --groups 1
    """
    _transform(params, inputs, output, report, engine)


# -- statistics files ---------------------------------------------------------------
@cli.command("merge-stats", short_help="Merge statistics saved from shards.")
@click.argument("files", nargs=-1, required=True, metavar="STATS.json...", type=PATH)
@option("-o", "--output", required=True, metavar="ALL.json", type=PATH, help="The merged statistics file.")
@force_option()
def merge_stats(files, output, force):
    """Merge statistics saved from shards into one file, as if measured in one run.

    \b
    Example:
        normcli stats part1.npy --save a.json
        normcli stats part2.npy --save b.json
        normcli merge-stats a.json b.json -o all.json
    """
    merged = run.run_merge_stats(files, output, force)
    _echo_line(f"merged {merged.files} files: {merged.values:,} values -> {merged.output}", False, _environment())


# -- the tutorial -----------------------------------------------------------------------
@cli.command(short_help="Write the tutorial's synthetic dataset.")
@click.argument("output", metavar="OUT", type=PATH, callback=_refuse_terminal)
@option("-n", "samples", type=click.IntRange(min=1), default=1000, show_default=True, metavar="N", help="Images.")
@option("--size", type=click.IntRange(min=1), default=32, show_default=True, metavar="N", help="Height and width.")
@option("--channels", type=click.IntRange(min=1), default=1, show_default=True, metavar="N", help="Channels.")
@option("--seed", type=SEED, default=0, show_default=True, metavar="N", help="Random seed.")
@force_option()
def sample(output, samples, size, channels, seed, force):
    """Write the tutorial's dataset: N images of SIZE x SIZE x CHANNELS, normal signal plus noise
    (mean 26, var 306).

    A .npy/.npz file gets float64; a folder gets one float32 TIFF per image (values include negatives).

    \b
    Example:
        normcli sample data.npy
        normcli sample images/ -n 100
    """
    env = _environment()
    target = run.Output(output, force=force)
    written = run.run_sample(run.SampleParams(samples, size, channels, seed), target, env)
    _echo_line(written, target.to_stdout, env)


@cli.command(short_help="Replay the batch-normalization tutorial.")
@option("--seed", type=SEED, default=0, show_default=True, metavar="N", help="Random seed of the dataset.")
@option("--bins", type=click.IntRange(1, 1000), default=30, show_default=True, metavar="N",
        help="Histogram bins, up to 1000.")
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
    printer = _printer(False, run.Report(ascii_only=ascii_only), _environment())
    for step in run.run_demo(seed, bins):
        printer.line()
        printer.line(step.title, style="bold underline")
        if step.note:
            printer.line(step.note)
        for stats in step.stats:
            printer.stats(stats)


def _stop_on_signal(signum, frame) -> None:
    """The first Ctrl-C or SIGTERM unwinds the run (every temporary is removed on the way out); any
    further one is ignored, so that the cleanup, which is bounded (engine.STOP_WAIT), finishes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def main() -> None:
    # normcli's kernels call no BLAS, so OpenBLAS need not start a thread per core as numpy loads.
    # A user's setting wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    signal.signal(signal.SIGINT, _stop_on_signal)
    signal.signal(signal.SIGTERM, _stop_on_signal)
    # Click ends a closed pipe (`normcli ... | head`) quietly itself, with exit 1 and no traceback.
    try:
        cli(prog_name="normcli")
    except SystemExit as exit:
        code = exit.code
    except Terminated:
        code = ExitCode.TERMINATED
    # The run is over, its outputs committed or discarded: a signal now would only cut the exit short,
    # with a traceback from the interpreter's shutdown (joining the worker threads).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        sys.stdout.flush()  # what is left in the buffer: a full disk (/dev/full) fails here
    except OSError as error:
        if not code:
            if not isinstance(error, BrokenPipeError):  # a closed pipe ends quietly
                click.echo(f"error: {one_line(error.strerror or str(error))} (stdout)", err=True)
            code = ExitCode.ERROR
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so exit does not fail again
    sys.exit(code)
