"""Reports for people and for programs: rich tables with text histograms, JSON and CSV."""

from __future__ import annotations

import csv
import io
import math
import os
import sys
import textwrap
from dataclasses import dataclass

import numpy as np

from normcli.errors import one_line
from normcli.jsonvalues import finite_or_null, json_values, quantile_label
from normcli.layout import Layout
from normcli.scopes import SCOPES

MAX_TABLE_ROWS = 12
MAX_HISTOGRAMS = 4
HISTOGRAM_HEIGHT = 5
_BLOCKS = " ▁▂▃▄▅▆▇█"


def row_keys(stats) -> list[str]:
    """The rows' names, as the scope labels them ("all", "pixel", or each key's index)."""
    return SCOPES[stats.scope].row_labels(len(stats.moments))


def _columns(stats, ddof: int) -> dict:
    """Every statistic per key; integer data keep their integer extremes (moments.py measures them in
    the data's own integer type). An 8/16-bit output's "after" statistics are of the values it
    encodes, floats."""
    m = stats.moments
    return {"count": m.count, "mean": m.mean, "std": m.std(ddof), "var": m.var(ddof), "min": m.min, "max": m.max}


def sample_files(stats) -> list[str] | None:
    """The file of each per-sample row (None for other scopes, or one array input, whose index says it)."""
    return stats.names if SCOPES[stats.scope].per_sample else None


def stats_rows(stats, ddof: int = 0) -> list[dict]:
    columns = _columns(stats, ddof)
    shaped = {name: json_values(values, stats.scope, stats.layout, stats.sample_shape)
              for name, values in columns.items()}
    rows = []
    if SCOPES[stats.scope].by_position:  # one row whose values are laid out as the keys
        rows.append({"key": row_keys(stats)[0], **shaped})
    else:
        files = sample_files(stats)
        for k, key in enumerate(row_keys(stats)):
            file = {"file": files[k]} if files is not None else {}
            rows.append({"key": key, **file, **{name: shaped[name][k] for name in columns}})
    if stats.percentiles is not None:
        labels = [quantile_label(q) for q in stats.percentiles.q]
        for row, values in zip(rows, stats.percentiles.values):
            row["percentiles"] = dict(zip(labels, finite_or_null(np.asarray(values).tolist())))
    if stats.histograms is not None:
        for k, row in enumerate(rows):
            row["histogram"] = {"edges": finite_or_null(stats.histograms.edges[k].tolist()),
                                "counts": stats.histograms.counts[k].tolist()}
    return rows


def stats_json(stats, ddof: int = 0) -> dict:
    """The report for programs; `sample_shape` counts the channels measured (images whose alpha is
    passed through say so with "alpha": "passed through")."""
    alpha = {"alpha": "passed through"} if stats.alpha_passed else {}
    return {"inputs": list(stats.inputs), "samples": stats.samples,
            "sample_shape": list(stats.sample_shape), "dtype": stats.dtype, "layout": stats.layout,
            "per": stats.scope, **alpha, "rows": stats_rows(stats, ddof)}


def stats_csv(stats, ddof: int = 0) -> str:
    """One line per key; keys by position are named by their index in the keys' shape (pixel: the
    sample's, "row:column:channel" for NHWC)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    named = {**_columns(stats, ddof), **_percentile_columns(stats)}
    files = sample_files(stats)
    writer.writerow(["key", *(["file"] if files is not None else []), *named])
    m = stats.moments
    columns = list(named.values())
    if SCOPES[stats.scope].by_position:  # a line per key, named by its place in the keys' shape
        index = SCOPES[stats.scope].key_grid(np.arange(len(m)), Layout(stats.layout), stats.sample_shape)
        keys = [""] * len(m)
        for position in np.ndindex(index.shape):
            keys[index[position]] = ":".join(map(str, position))
    else:
        keys = row_keys(stats)
    for k, key in enumerate(keys):
        file = [files[k]] if files is not None else []
        writer.writerow([key, *file, *(_csv_value(c[k].item()) for c in columns)])
    return out.getvalue()


def _percentile_columns(stats) -> dict:
    """A column per percentile ("p1", "p99.8"): each key's value of it (none without percentiles)."""
    if stats.percentiles is None:
        return {}
    values = np.array([np.asarray(v) for v in stats.percentiles.values])
    return {f"p{quantile_label(q)}": values[:, i] for i, q in enumerate(stats.percentiles.q)}


def _csv_value(value) -> str:
    """Full float64 precision; an empty cell for NaN and inf (a key without values)."""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return str(value)


def torchvision_line(stats, ddof: int = 0) -> str:
    """`Normalize(mean=..., std=...)` for per-channel statistics, integers scaled to [0, 1] as ToTensor does."""
    dtype = np.dtype(stats.dtype)
    scale = float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0
    mean = ", ".join(f"{v / scale:.4f}" for v in stats.moments.mean)
    std = ", ".join(f"{v / scale:.4f}" for v in stats.moments.std(ddof))
    comma = "," if len(stats.moments) == 1 else ""
    return f"Normalize(mean=({mean}{comma}), std=({std}{comma}))"


# -- terminal ---------------------------------------------------------------------
# What the terminal report prints beyond ASCII, and its plain spelling (--ascii, or an output
# whose encoding cannot hold it, e.g. PYTHONIOENCODING=ascii or a C locale).
_PLAIN = str.maketrans({"×": "x", "…": "...", "–": "-", "—": "-", "≈": "~", "≤": "<=", "≥": ">=",
                        "γ": "gamma", "β": "beta", "ε": "eps", "μ": "mu", "σ": "sigma", "²": "^2"})
_UNICODE_SAMPLE = "×…–≈γβεμσ²" + _BLOCKS


def needs_ascii(encoding: str | None) -> bool:
    """Whether a stream in `encoding` cannot print the report's Unicode symbols and blocks."""
    try:
        _UNICODE_SAMPLE.encode(encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return True
    return False


def fmt(value, digits: int = 6) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    return f"{value:.{digits}g}"


def shape_text(shape) -> str:
    return "×".join("?" if d is None else str(d) for d in shape) or "scalar"


def inputs_text(inputs) -> str:
    """The inputs for a header: all of a few, else a count and their common folder (JSON lists them all)."""
    inputs = list(inputs)
    if len(inputs) <= 3:
        return ", ".join(inputs)
    parents = {os.path.dirname(name) for name in inputs}
    if len(parents) == 1 and "" not in parents:
        return f"{len(inputs):,} files from {parents.pop()}{os.sep}"
    return f"{inputs[0]}, {inputs[1]} and {len(inputs) - 2:,} more"


# -- tables: columns sized to their cells, shrunk until they fit the terminal -----------
@dataclass
class TextTable:
    header: list[str]
    rows: list[list[str]]
    left: int = 1  # how many leading columns are text (left-aligned); the rest are numbers
    note: str = ""  # what was left out to fit, if anything
    more: int = 0  # rows left out (a last line says how many; it does not widen the columns)

    def widths(self) -> list[int]:
        return [max(len(cell) for cell in column) for column in zip(self.header, *self.rows)]

    def width(self) -> int:
        widths = self.widths()
        return sum(widths) + _GAP * (len(widths) - 1)

    def lines(self) -> list[str]:
        widths = self.widths()
        lines = [(" " * _GAP).join(cell.ljust(w) if i < self.left else cell.rjust(w)
                                   for i, (cell, w) in enumerate(zip(cells, widths))).rstrip()
                 for cells in (self.header, *self.rows)]
        return lines + ([f"… {self.more:,} more rows (all of them: --rows all, or --format csv or json)"]
                        if self.more else [])


_GAP = 2
_MIN_FILE_WIDTH = 12


def _clip_left(text: str, width: int) -> str:
    """The end of a path that fits `width` (the file name is the part that tells images apart)."""
    return text if len(text) <= width else "…" + text[len(text) - width + 1:]


def stats_table(stats, ddof: int, width: int, max_rows: int | None = MAX_TABLE_ROWS, shown=str) -> TextTable:
    """The stats table in at most `width` columns: six significant digits, else four, else
    without std (the square root of var), else without count too; long file names keep their end,
    as `shown` spells them for the stream. A scope of keys by position (pixel) shows the lowest and the
    highest value of each statistic over its keys."""
    named = _columns(stats, ddof)
    files = sample_files(stats)
    files = None if files is None else [shown(name) for name in files]
    keys = row_keys(stats)
    kept = range(len(keys) if max_rows is None else min(len(keys), max_rows))
    for digits, dropped in ((6, ()), (4, ()), (4, ("std",)), (4, ("std", "count"))):
        columns = {name: values for name, values in named.items() if name not in dropped}
        if SCOPES[stats.scope].by_position:
            rows = [[which, *(fmt(_finite_extreme(c, pick), digits) for c in columns.values())]
                    for which, pick in (("lowest", np.min), ("highest", np.max))]
        else:
            rows = [[keys[k], *([files[k]] if files is not None else []),
                     *(fmt(c[k].item(), digits) for c in columns.values())] for k in kept]
        left = 2 if files is not None else 1
        table = TextTable(["key", *(["file"] if files is not None else []), *columns], rows, left,
                          f"({' and '.join(dropped)} left out to fit: see --format json)" if dropped else "")
        if files is not None:
            _fit_file_column(table, width)
        if table.width() <= width:
            break
    if not SCOPES[stats.scope].by_position:
        table.more = len(keys) - len(kept)
    return table


def percentile_tables(stats, width: int, max_rows: int | None = MAX_TABLE_ROWS) -> list[TextTable]:
    """The percentiles beside each key, a column per percentile, in tables of at most `width` columns
    (six significant digits, else four; the columns that do not fit go on to a table of their own)."""
    if stats.percentiles is None:
        return []
    columns = _percentile_columns(stats)
    keys = row_keys(stats)
    kept = range(len(keys) if max_rows is None else min(len(keys), max_rows))
    for digits in (6, 4):
        cells = {name: [fmt(values[k].item(), digits) for k in kept] for name, values in columns.items()}
        tables = _tables_of_columns([keys[k] for k in kept], cells, width)
        if len(tables) == 1:
            break
    tables[-1].more = len(keys) - len(kept)
    return tables


def _tables_of_columns(keys: list[str], cells: dict, width: int) -> list[TextTable]:
    """Tables of the key column and as many of the other `cells` columns as fit `width` each."""
    key_width = max(len("key"), *map(len, keys))
    groups, used = [[]], key_width
    for name, column in cells.items():
        need = _GAP + max(len(name), *map(len, column))
        if groups[-1] and used + need > width:
            groups.append([])
            used = key_width
        groups[-1].append(name)
        used += need
    return [TextTable(["key", *names], [[key, *(cells[name][k] for name in names)] for k, key in enumerate(keys)])
            for names in groups]


def _fit_file_column(table: TextTable, width: int) -> None:
    """Shorten the file column (column 1) to what the other columns leave, not below a readable minimum."""
    room = max(_MIN_FILE_WIDTH, width - (table.width() - table.widths()[1]))
    for row in table.rows:
        row[1] = _clip_left(row[1], room)


def _finite_extreme(values: np.ndarray, pick):
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    return pick(finite).item() if finite.size else None


# -- histograms ---------------------------------------------------------------------
def display_counts(counts: np.ndarray, columns: int) -> np.ndarray:
    """`counts` merged into runs of neighbouring bins so that at most `columns` remain (for
    display only). A run length that divides the bins is preferred (every bar then covers as many
    bins, so bars compare), unless it would cost more than a quarter of the bars; otherwise the
    last bar covers fewer bins."""
    bins = len(counts)
    if bins <= columns:
        return counts
    run = -(-bins // columns)
    run = next((r for r in range(run, (4 * run + 2) // 3) if bins % r == 0), run)
    return np.add.reduceat(counts, np.arange(0, bins, run))


def histogram_chart(counts: np.ndarray, edges: np.ndarray, width: int, *, ascii: bool = False,
                    height: int = HISTOGRAM_HEIGHT) -> tuple[str, list[str]]:
    """A column chart of a histogram in at most `width` columns: a caption (bins, values, the
    tallest bar's count), `height` lines of bars, and an axis with the low, middle and high edges."""
    shown = display_counts(np.asarray(counts), max(width, 1))
    per_bar = max(1, width // max(len(shown), 1))
    top = int(shown.max()) if len(shown) else 0
    caption = f"{len(counts)} bins" + (f" shown as {len(shown)}" if len(shown) < len(counts) else "")
    caption += f", {int(np.sum(counts)):,} values, tallest bar {top:,}"
    eighths = np.ceil(shown / max(top, 1) * height * 8).astype(int)
    lines = []
    for level in range(height - 1, -1, -1):
        cells = np.clip(eighths - level * 8, 0, 8)
        if ascii:  # a full '#' from half a cell up, '.' below, so that a small bin still shows
            text = "".join(("#" if c >= 4 else "." if c > 0 and level == 0 else " ") * per_bar for c in cells)
        else:
            text = "".join(_BLOCKS[c] * per_bar for c in cells)
        lines.append(text.rstrip())
    lines.append(_axis(edges, per_bar * len(shown)))
    return caption, lines


def _axis(edges: np.ndarray, width: int) -> str:
    """The low edge under the first bar, the high edge ending under the last, the middle edge
    centred under its own position when there is room."""
    low, high = fmt(float(edges[0]), 4), fmt(float(edges[-1]), 4)
    axis = [" "] * max(width, len(low) + len(high) + 1)
    axis[:len(low)] = low
    axis[len(axis) - len(high):] = high
    bins = len(edges) - 1
    if bins >= 2:
        middle = fmt(float(edges[bins // 2]), 4)
        start = round(bins // 2 / bins * width) - len(middle) // 2
        if start >= len(low) + 2 and start + len(middle) <= len(axis) - len(high) - 2:
            axis[start:start + len(middle)] = middle
    return "".join(axis)


def stream_width(stream) -> int:
    """The width a report written to `stream` is cut to: COLUMNS when set, else the terminal's width
    when `stream` is a terminal, else 80. Never another stream's: a report saved to a file from a
    40-column window is 80 wide (rich would ask stdin's terminal)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        if stream.isatty():
            return os.get_terminal_size(stream.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):  # no file descriptor (a test's stream)
        pass
    return 80


class Printer:
    """Writes reports to a rich console (colour follows the terminal and NO_COLOR), every line
    within the console's width, in plain ASCII when asked or when the output cannot encode more."""

    def __init__(self, stderr: bool = False, ascii: bool = False, encoding: str | None = "utf-8",
                 rows: int | None = MAX_TABLE_ROWS, color: str = "auto"):
        from rich.console import Console

        self.ascii = ascii or needs_ascii(encoding)
        self.encoding = encoding
        self.rows = rows  # None: every row
        # --color always/never over the environment (NO_COLOR, FORCE_COLOR), as no-color.org asks
        colors = {"always": {"force_terminal": True, "no_color": False}, "never": {"color_system": None}}
        # soft_wrap: rich adds no line breaks of its own; every line is already cut to the width.
        self.console = Console(stderr=stderr, highlight=False, emoji=False, soft_wrap=True,
                               width=stream_width(sys.stderr if stderr else sys.stdout), **colors.get(color, {}))
        self.width = self.console.width

    def line(self, text: str = "", style: str | None = None) -> None:
        """One line of text, or a paragraph wrapped at word boundaries to the console's width."""
        for paragraph in text.split("\n"):
            paragraph = self.shown(paragraph)
            lines = textwrap.wrap(paragraph, self.width, break_on_hyphens=False,
                                  subsequent_indent=" " * (len(paragraph) - len(paragraph.lstrip())))
            for part in lines or [""]:
                self.console.print(part, style=style, markup=False)

    def shown(self, text: str) -> str:
        """`text` as this printer's stream shows it (before it is measured: escapes are wider)."""
        return for_stream(text, self.encoding, self.ascii)

    def _table(self, table: TextTable) -> None:
        header, *rows = table.lines()
        self.line(header, style="bold")
        for row in rows:
            self.line(row)
        if table.note:
            self.line(table.note, style="dim")

    def stats(self, stats, ddof: int = 0, title: str | None = None) -> None:
        if title:
            self.line(title, style="bold")
        samples = f"{stats.samples:,} sample" + ("" if stats.samples == 1 else "s")
        scope = f"per {stats.scope}" + (f" ({len(stats.moments):,} positions)" if SCOPES[stats.scope].by_position else "")
        alpha = ", alpha passed through" if stats.alpha_passed else ""
        self.line(f"{inputs_text(stats.inputs)}: {samples} of {shape_text(stats.sample_shape)}{alpha}, "
                  f"{stats.dtype}, {stats.layout}, {scope}", style="dim")
        self._table(stats_table(stats, ddof, self.width, self.rows, shown=self.shown))
        for table in percentile_tables(stats, self.width, self.rows):
            self.line(f"percentiles ({stats.percentiles.method}):", style="dim")
            self._table(table)
        if stats.histograms is not None:
            self.histograms(stats)

    def histograms(self, stats) -> None:
        keys = row_keys(stats)
        rows = len(stats.histograms.counts)  # one of all values, or one per key
        shown = min(rows, MAX_HISTOGRAMS)
        for k in range(shown):
            counts, edges = stats.histograms.counts[k], stats.histograms.edges[k]
            label = "all values" if SCOPES[stats.scope].one_histogram else f"{stats.scope} {keys[k]}"
            caption, lines = histogram_chart(counts, edges, self.width - 4, ascii=self.ascii)
            self.line(f"  {label}: {caption}", style="dim")
            for text in lines[:-1]:
                self.line("  " + text, style="cyan")
            self.line("  " + lines[-1], style="dim")
        if rows > shown:
            self.line(f"  (histograms of {rows - shown:,} more rows in --format json)", style="dim")

    def batches(self, batches) -> None:
        # a summary row for two or more batches left out; one left out is shown as itself
        limit = len(batches) if self.rows is None or len(batches) <= self.rows + 1 else self.rows
        names = ("mean before", "var before", "mean after", "var after")
        rows = [[str(b.index), str(b.size), *(fmt(v) for v in (b.mean_before, b.var_before, b.mean_after,
                                                                 b.var_after))] for b in batches[:limit]]
        if len(batches) > limit:
            rest = batches[limit:]
            rows.append([f"{limit}–{len(batches) - 1}", f"{sum(b.size for b in rest):,}",
                         *(_range_text(np.array([getattr(b, a) for b in rest]))
                           for a in ("mean_before", "var_before", "mean_after", "var_after"))])
        self._table(TextTable(["batch", "size", *names], rows, left=0))


def _range_text(values: np.ndarray) -> str:
    finite = values[np.isfinite(values)]
    if not finite.size:
        return "-"
    return f"{fmt(finite.min().item(), 4)}…{fmt(finite.max().item(), 4)}"


# -- progress -------------------------------------------------------------------------
def remaining_seconds(began: float, done_at: float, now: float, completed: int, total: int) -> float | None:
    """An ETA smoothed over all completed work: the end that the average pace since the pass `began`
    (up to the last completion, `done_at`) predicts, counted down between completions (a block, or a
    task of several on processes and Dask, completes at once, so a stall is expected); past that end, the pace with the stall included. None: no
    completion yet."""
    if completed <= 0:
        return None
    left = (done_at - began) * (total - completed) / completed - (now - done_at)
    return left if left > 0 else (now - began) * (total - completed) / completed


class ProgressDisplay:
    """Progress of named passes on stderr, for passes.py's `Progress` interface:

    phase(name, total)       a new pass over `total` samples begins (its own bar, count, rate, ETA)
    advance(samples, nbytes) that many samples (of that many bytes in memory) were read

    Nothing is drawn before `delay` seconds have passed, so quick runs show no bar at all. The line
    keeps the count and the ETA longest as the terminal narrows (the rate goes first, then the bar);
    a dumb terminal (TERM=dumb, which cannot redraw a line) gets one plain line per finished pass.
    `finish()` ends a run that showed progress with the time it took.
    Make one only when stderr is a terminal and the report is not --quiet (see `progress_display`).
    """

    def __init__(self, *, ascii: bool = False, delay: float = 0.5, clock=None, dumb: bool = False):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn
        from rich.table import Column
        from rich.text import Text

        class Rate(ProgressColumn):
            def render(self, task):
                elapsed = task.elapsed or 0
                if elapsed <= 0:
                    return Text("")
                rate = f"{task.completed / elapsed:,.0f}/s"
                if task.fields.get("nbytes"):
                    rate += f" {task.fields['nbytes'] / elapsed / 1e6:,.1f} MB/s"
                return Text(rate, style="progress.data.speed")

        class Eta(ProgressColumn):
            def render(self, task):
                left = remaining_seconds(task.start_time or 0, task.fields.get("done_at") or 0, task.get_time(),
                                         int(task.completed), int(task.total or 0))
                if task.finished:
                    return Text("")
                return Text("eta -:--" if left is None else f"eta {_clock_text(left)}", style="progress.remaining")

        class AsciiBar(ProgressColumn):
            def render(self, task, width: int = 20):
                done = round(width * (task.percentage or 0) / 100)
                return Text("[" + "#" * done + "-" * (width - done) + "]", style="bar.complete")

        bar = AsciiBar(table_column=Column(no_wrap=True)) if ascii else BarColumn(bar_width=20)
        description = TextColumn("{task.description:<10}")
        count = MofNCompleteColumn()
        eta = Eta(table_column=Column(no_wrap=True))
        # Fewer fields as the terminal narrows (widths they need, about): the least useful first.
        self._layouts = ((72, (description, bar, count, Rate(table_column=Column(no_wrap=True, min_width=18)), eta)),
                         (52, (description, bar, count, eta)), (0, (description, count, eta)))
        self._progress = Progress(*self._layouts[0][1], console=Console(stderr=True), transient=True,
                                  get_time=clock, redirect_stdout=False)  # stdout may carry the .npy data
        layouts = self._layouts
        progress = self._progress
        plain_renderables = progress.get_renderables

        def get_renderables():
            width = progress.console.width
            progress.columns = next(columns for least, columns in layouts if width >= least)
            return plain_renderables()

        progress.get_renderables = get_renderables
        self._delay = delay
        self._dumb = dumb
        self._began: float | None = None
        self._task = None
        self.visible = False
        self._noticed = False

    def notice(self, text: str) -> None:
        """What the run waits for before its first pass (a scheduler): shown at once, on the line the
        bar (or an error) then takes."""
        console = self._progress.console
        console.file.write(for_stream(text, console.encoding)[:max(console.width - 1, 0)])
        console.file.flush()
        self._noticed = True

    def _clear_notice(self) -> None:
        if self._noticed:
            self._progress.console.file.write("\r\x1b[2K")
            self._noticed = False

    def phase(self, name: str, total: int) -> None:
        self._clear_notice()
        if self._task is not None:
            self._progress.stop_task(self._task)
        if self._began is None:
            self._began = self._progress.get_time()
        self._task = self._progress.add_task(name, total=total, nbytes=0, done_at=None)

    def advance(self, samples: int, nbytes: int = 0) -> None:
        task = self._progress.tasks[-1]
        now = self._progress.get_time()
        self._progress.update(self._task, advance=samples, nbytes=task.fields["nbytes"] + nbytes, done_at=now)
        if task.finished:
            self._progress.stop_task(self._task)  # its rate stays that of the pass, not of what follows
        if not self.visible and now - self._began >= self._delay:
            self.visible = True
            if not self._dumb:
                self._progress.start()
        if self._dumb and self.visible and task.finished:
            self._line(f"{task.description}: {int(task.completed):,}/{int(task.total or 0):,} in "
                       f"{_seconds_text(task.finished_time or 0)}")

    def _line(self, text: str) -> None:
        console = self._progress.console
        console.file.write(for_stream(text, console.encoding) + "\n")
        console.file.flush()

    def close(self) -> None:
        self._clear_notice()
        if self.visible and not self._dumb:
            self._progress.stop()

    def finish(self) -> None:
        """The run succeeded: after its progress, the time it took (only if progress was shown)."""
        self.close()
        if self.visible:
            self._line(f"done in {_seconds_text(self._progress.get_time() - self._began)}")


def _seconds_text(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else _clock_text(seconds)


def _clock_text(seconds: float) -> str:
    minutes, second = divmod(int(round(seconds)), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}:{minute:02d}:{second:02d}" if hours else f"{minute}:{second:02d}"


def progress_display(*, quiet: bool, terminal: bool, ascii: bool = False, encoding: str | None = "utf-8"):
    """A ProgressDisplay when stderr is a `terminal` and the run is not quiet, else None (no bar);
    `encoding`: stderr's."""
    if quiet or not terminal:
        return None
    return ProgressDisplay(ascii=ascii or needs_ascii(encoding), dumb=os.environ.get("TERM") == "dumb")


def for_stream(text: str, encoding: str | None, ascii: bool = False) -> str:
    """`text` as a stream in `encoding` can print it: in plain ASCII when asked or when it holds no
    more (the report's own symbols spelled out, a file name's other characters as the \\x escapes of
    their bytes), and a name's undecodable bytes as \\xff (errors.one_line, which errors use too)."""
    plain = ascii or needs_ascii(encoding)
    return one_line(text.translate(_PLAIN) if plain else text, "ascii" if plain else encoding)


def waiting_notice(engine) -> str | None:
    """What a run on a Dask scheduler waits for before any work (up to --cluster-timeout, silent
    otherwise), said at once on stderr; None for engines that start at once. `engine`: run.EngineOptions."""
    from normcli.engine import CLUSTER_TIMEOUT

    timeout = CLUSTER_TIMEOUT if engine.cluster_timeout is None else engine.cluster_timeout
    if engine.scheduler_file and not os.path.exists(engine.scheduler_file):
        return f"waiting up to {timeout:g} s for the scheduler file {engine.scheduler_file} ..."
    if engine.scheduler_file:
        return f"connecting to the Dask scheduler in {engine.scheduler_file} (up to {timeout:g} s) ..."
    if engine.scheduler:
        return f"connecting to the Dask scheduler at {engine.scheduler} (up to {timeout:g} s) ..."
    return None

