"""The last pass of a transform, a block function for reduction.reduce: histogram the input,
apply the plan's map, put non-finite values back, measure the output, and store it through the
sink's writer (at its position, or handed back to be written in order). Where the output's
histograms follow from the input's (one affine map per key: ApplyTask.maps), both are counted in
one pass over the input (histograms.count_pairs); every other statistic of the output is measured
on the values stored.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from normcli.encoding import ValueTable
from normcli.histograms import HistogramCounts, count_block, count_pairs
from normcli.layout import Layout
from normcli.moments import BlockStats, NonFinite, measure_block, merge
from normcli.plans import Applier
from normcli.scopes import Scope
from normcli.sinks import Encoder, Stored
from normcli.sources import Block, Chunk
from normcli.transforms import Affine


@dataclass(frozen=True)
class ApplyTask:
    """The last pass's task: what it applies, measures and stores (`writer`, the sink's)."""

    scope: Scope
    layout: Layout
    applier: Applier
    writer: Encoder
    samples: int  # the output's samples: blocks from here on are measured, not written (--drop-last)
    work_dtype: np.dtype
    ignore_nan: bool
    report: bool
    before_edges: np.ndarray | None
    after_edges: np.ndarray | None
    alpha_factor: float = 1.0  # passed-through alpha: written as alpha * alpha_factor (encoding.alpha_factor)
    check_finite: bool = False  # no pass 1 looked for NaN and inf (and overflow): look here
    table: ValueTable | None = None  # 8-bit input to an integer output, nothing measured: look values up
    first: int = 0  # the sample of the per-sample tables' first row (see share)
    # Each key's map, where the output's histograms are counted in one pass with the input's
    # (histograms.count_pairs: float data in and out, one affine map and histogram per key, no clip).
    maps: Affine | None = None

    def share(self, blocks: Sequence[Block]) -> "ApplyTask":
        """This task for one engine task's blocks: per-sample tables (the affine maps, the report's
        edges) cut to their samples, so that no task carries every sample's rows."""
        if not self.scope.per_sample:
            return self
        start, stop = blocks[0].start, blocks[-1].start + blocks[-1].count
        edges = [None if e is None else e[start - self.first:stop - self.first]
                 for e in (self.before_edges, self.after_edges)]
        maps = None if self.maps is None else self.maps.rows(start - self.first, stop - start)
        return replace(self, applier=self.applier.share(start, stop), before_edges=edges[0],
                       after_edges=edges[1], first=start, maps=maps)


@dataclass(frozen=True)
class Applied:
    """What the last pass did with consecutive blocks: what it measured, the applier's summaries
    (in block order), what the writer stored, and (with check_finite) the non-finite values found
    in blocks that were then not written."""

    before_counts: HistogramCounts | None = None
    after_stats: BlockStats | None = None
    after_counts: HistogramCounts | None = None
    summaries: tuple = ()
    stored: Stored = Stored()
    nonfinite: NonFinite = NonFinite()

    def merge(self, later: "Applied") -> "Applied":
        return Applied(_fold(self.before_counts, later.before_counts, HistogramCounts.merge),
                       _fold(self.after_stats, later.after_stats, merge),
                       _fold(self.after_counts, later.after_counts, HistogramCounts.merge),
                       self.summaries + later.summaries, self.stored.merge(later.stored),
                       self.nonfinite.merge(later.nonfinite))


def _fold(total, value, combine):
    """The merge of two partials that may be None (nothing measured)."""
    if value is None:
        return total
    return value if total is None else combine(total, value)


def apply_work(task: ApplyTask, block: Block) -> Applied:
    chunk = block.read()
    before_counts = (count_block(chunk.data, task.scope, task.layout, _rows(task.before_edges, task, chunk),
                                 first_sample=chunk.start) if task.before_edges is not None and task.maps is None
                     else None)
    if chunk.start >= task.samples:
        return Applied(before_counts)
    if task.table is not None:
        encoded = np.empty(chunk.data.shape, task.table.encoded.dtype)
        clipped = task.table.encode(task.layout.npc(chunk.data), task.layout.npc(encoded))
        stored = task.writer.store(encoded, clipped, chunk.start, chunk.names, chunk.profiles)
        return Applied(before_counts, summaries=(None,), stored=stored)
    out = np.empty(chunk.data.shape, task.work_dtype)
    summary = task.applier.apply(chunk, task.layout, out)
    task.writer.settle(out)
    # A finite map of finite values is finite: only a block whose output is not looks at its input.
    if task.check_finite and not np.isfinite(out).all():
        if not np.isfinite(chunk.data).all():
            found = measure_block(chunk.data, task.scope, task.layout, first_sample=chunk.start).nonfinite
            return Applied(before_counts, nonfinite=found)
        raise task.writer.overflow()
    if task.ignore_nan:
        np.copyto(out, chunk.data, where=~np.isfinite(chunk.data))
    after_stats = (measure_block(out, task.scope, task.layout, first_sample=chunk.start, ignore_nan=task.ignore_nan)
                   if task.report else None)
    after_counts = None
    if task.maps is not None:
        maps = task.maps.rows(chunk.start - task.first, len(chunk.data)) if task.scope.per_sample else task.maps
        before_counts, after_counts = count_pairs(chunk.data, out, task.scope, task.layout,
                                                  _rows(task.before_edges, task, chunk),
                                                  _rows(task.after_edges, task, chunk),
                                                  (maps.split(chunk.data.dtype)[1], maps.scale, maps.offset),
                                                  first_sample=chunk.start)
    elif task.after_edges is not None:
        after_counts = count_block(out, task.scope, task.layout, _rows(task.after_edges, task, chunk), clamp=True,
                                   first_sample=chunk.start)
    if chunk.alpha is not None:
        out = np.concatenate([out, (chunk.alpha * task.alpha_factor).astype(out.dtype)], axis=-1)
    stored = task.writer.put(out, chunk.start, chunk.names, chunk.profiles)
    return Applied(before_counts, after_stats, after_counts, (summary,), stored)


def _rows(edges: np.ndarray, task: ApplyTask, chunk: Chunk) -> np.ndarray:
    """The edges of a chunk's histogram rows (its own samples' rows for per-sample scopes)."""
    start = chunk.start - task.first
    return edges[start:start + len(chunk.data)] if task.scope.per_sample else edges
