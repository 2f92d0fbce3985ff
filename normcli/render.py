"""Reports for people and for programs: rich tables with text histograms, JSON and CSV."""

from __future__ import annotations

import csv
import io
import math

import numpy as np

from normcli.layout import Layout

MAX_TABLE_ROWS = 12
MAX_HISTOGRAMS = 4
HISTOGRAM_HEIGHT = 5
_BLOCKS = " ▁▂▃▄▅▆▇█"


def row_keys(stats) -> list[str]:
    if stats.scope == "global":
        return ["all"]
    if stats.scope == "pixel":
        return ["pixel"]
    return [str(k) for k in range(len(stats.moments))]


def json_values(values: np.ndarray, scope: str, layout: str, sample_shape) -> list:
    """Per-key values for JSON: nested like one sample for the pixel scope, a flat list otherwise;
    NaN and inf (a key without values) become null."""
    values = np.asarray(values)
    if scope == "pixel":
        values = Layout(layout).to_sample(values, sample_shape)
    return _clean(values.tolist())


def _clean(value):
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _columns(stats, ddof: int) -> dict:
    """Every statistic per key; integer data keep integer extremes."""
    m = stats.moments
    columns = {"count": m.count, "mean": m.mean, "std": m.std(ddof), "var": m.var(ddof), "min": m.min, "max": m.max}
    if np.dtype(stats.dtype).kind in "ui" and (m.count > 0).all() and m.min.dtype.kind == "f":
        columns["min"], columns["max"] = m.min.astype(np.int64), m.max.astype(np.int64)
    return columns


def stats_rows(stats, ddof: int = 0) -> list[dict]:
    columns = _columns(stats, ddof)
    shaped = {name: json_values(values, stats.scope, stats.layout, stats.sample_shape)
              for name, values in columns.items()}
    rows = []
    if stats.scope == "pixel":
        rows.append({"key": "pixel", **shaped})
    else:
        for k, key in enumerate(row_keys(stats)):
            rows.append({"key": key, **{name: shaped[name][k] for name in columns}})
    if stats.histograms is not None:
        for k, row in enumerate(rows):
            row["histogram"] = {"edges": _clean(stats.histograms.edges[k].tolist()),
                                "counts": stats.histograms.counts[k].tolist()}
    return rows


def stats_json(stats, ddof: int = 0) -> dict:
    return {"inputs": list(stats.inputs), "samples": stats.samples,
            "sample_shape": list(stats.sample_shape), "dtype": stats.dtype, "layout": stats.layout,
            "per": stats.scope, "rows": stats_rows(stats, ddof)}


def stats_csv(stats, ddof: int = 0) -> str:
    """One line per key; the pixel scope gets one line per position and channel."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    named = _columns(stats, ddof)
    writer.writerow(["key", *named])
    m = stats.moments
    columns = list(named.values())
    if stats.scope == "pixel":
        index = Layout(stats.layout).to_sample(np.arange(len(m)), stats.sample_shape)
        keys = [""] * len(m)
        for position in np.ndindex(index.shape):
            keys[index[position]] = ":".join(map(str, position))
    else:
        keys = row_keys(stats)
    for k, key in enumerate(keys):
        writer.writerow([key, *(_csv_value(c[k].item()) for c in columns)])
    return out.getvalue()


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
def fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    return f"{value:.6g}"


def shape_text(shape) -> str:
    return "×".join("?" if d is None else str(d) for d in shape) or "scalar"


def _range_text(values: np.ndarray) -> str:
    finite = values[np.isfinite(values)]
    if not finite.size:
        return "-"
    return f"{fmt(finite.min().item())} … {fmt(finite.max().item())}"


def histogram_lines(counts: np.ndarray, width: int, height: int = HISTOGRAM_HEIGHT) -> list[str]:
    """A column chart of `counts`, `height` lines tall, each bin as wide as `width` allows."""
    bins = len(counts)
    per_bin = max(1, width // max(bins, 1))
    top = counts.max() if len(counts) and counts.max() > 0 else 1
    eighths = np.ceil(counts / top * height * 8).astype(int)
    lines = []
    for level in range(height - 1, -1, -1):
        cells = np.clip(eighths - level * 8, 0, 8)
        lines.append("".join(_BLOCKS[c] * per_bin for c in cells).rstrip())
    return lines


class Printer:
    """Writes reports to a rich console (colour follows the terminal and NO_COLOR)."""

    def __init__(self, stderr: bool = False):
        from rich.console import Console

        # soft_wrap: long lines are left to the terminal, so piped reports keep one record a line.
        self.console = Console(stderr=stderr, highlight=False, soft_wrap=True)

    def line(self, text: str = "", style: str | None = None) -> None:
        self.console.print(text, style=style, markup=False)

    def stats(self, stats, ddof: int = 0, title: str | None = None) -> None:
        from rich.table import Table

        if title:
            self.line(title, style="bold")
        samples = f"{stats.samples:,} sample" + ("" if stats.samples == 1 else "s")
        self.line(f"{', '.join(stats.inputs)}: {samples} of {shape_text(stats.sample_shape)}, "
                  f"{stats.dtype}, {stats.layout}, per {stats.scope}", style="dim")
        table = Table(box=None, pad_edge=False, header_style="bold")
        named = _columns(stats, ddof)
        table.add_column("key", justify="left")
        for name in named:
            table.add_column(name, justify="right")
        columns = named.values()
        if stats.scope == "pixel":
            table.add_row(f"pixel ({len(stats.moments):,})", *(_range_text(c) for c in columns))
        else:
            keys = row_keys(stats)
            for k in range(min(len(keys), MAX_TABLE_ROWS)):
                table.add_row(keys[k], *(fmt(c[k].item()) for c in columns))
            if len(keys) > MAX_TABLE_ROWS:
                table.add_row(f"… {len(keys) - MAX_TABLE_ROWS:,} more", *[""] * len(named))
        self.console.print(table)
        if stats.histograms is not None:
            self.histograms(stats)

    def histograms(self, stats) -> None:
        keys = row_keys(stats)
        width = max(20, self.console.width - 2)
        shown = min(len(keys), MAX_HISTOGRAMS)
        for k in range(shown):
            counts, edges = stats.histograms.counts[k], stats.histograms.edges[k]
            label = "all values" if stats.scope == "pixel" else f"{stats.scope} {keys[k]}"
            self.line(f"  {label}: {len(counts)} bins, {fmt(float(edges[0]))} to {fmt(float(edges[-1]))}, "
                      f"{int(counts.sum()):,} values", style="dim")
            for text in histogram_lines(counts, width - 2):
                self.line("  " + text, style="cyan")
        if len(keys) > shown:
            self.line(f"  (histograms of {len(keys) - shown:,} more rows in --format json)", style="dim")

    def batches(self, batches, limit: int = 8) -> None:
        from rich.table import Table

        table = Table(box=None, pad_edge=False, header_style="bold", title_justify="left")
        for name in ("batch", "size", "mean before", "var before", "mean after", "var after"):
            table.add_column(name, justify="right")
        for b in batches[:limit]:
            table.add_row(str(b.index), str(b.size), *(fmt(v) for v in
                                                       (b.mean_before, b.var_before, b.mean_after, b.var_after)))
        if len(batches) > limit:
            rest = batches[limit:]
            table.add_row(f"{limit}–{len(batches) - 1}", f"{sum(b.size for b in rest):,}",
                          *(_range_text(np.array([getattr(b, a) for b in rest]))
                            for a in ("mean_before", "var_before", "mean_after", "var_after")))
        self.console.print(table)
