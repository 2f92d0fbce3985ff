"""The one reduce seam: a pass is a pure block function and an associative merge, as dask's
reduction(chunk, combine, aggregate); `reduce()` runs one pass on an engine, and any number of
passes run through it in sequence (`reduce_passes()`: each pass built from the ones before).

A pass's `work(task, block) -> partial` is a module-level function of picklable arguments, run on
a thread, a process or a Dask worker; `partial.merge(later)` is associative (not commutative: the
later blocks' partial is the argument). The engine alone decides how many consecutive blocks a task
carries (Engine.task_blocks, rounded to whole folds). The merge tree is a function of the number of
blocks alone, so that every engine and every number of workers gives the same bytes: blocks are
merged in folds of `fold_blocks(n)` consecutive blocks (in order, where a task ran), then the folds
in order (on the driver); a pass with `each` merges its blocks one by one on the driver.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Generic, Protocol, Sequence, TypeVar

P = TypeVar("P", bound="Partial")

# The merge tree: folds of up to FOLD_BLOCKS blocks, and at least FOLDS_WANTED folds where there are
# enough blocks (so that up to 8 workers finish together).
FOLD_BLOCKS = 16
FOLDS_WANTED = 64


def fold_blocks(blocks: int) -> int:
    """How many consecutive blocks are merged into one fold, in a pass over `blocks` blocks."""
    return max(1, min(FOLD_BLOCKS, blocks // FOLDS_WANTED))


class Partial(Protocol):
    """What a block function returns: a small value with an associative merge."""

    def merge(self, later: Any) -> Any:
        """This partial and the one of the blocks right after it, as one."""


class Progress(Protocol):
    """What the passes tell a progress display (render.ProgressDisplay is the terminal's)."""

    def phase(self, name: str, total: int) -> None:
        """A pass named `name` ("measuring", "writing", ...) over `total` samples begins."""

    def advance(self, samples: int, nbytes: int = 0) -> None:
        """The current pass has finished `samples` more samples (`nbytes` bytes in memory). Called
        as work completes, from worker threads too, but never twice at once."""


def _no_share(task, blocks):
    return task


@dataclass(frozen=True)
class Pass(Generic[P]):
    """One look at the data, as data: `work(task, block)` over every block, merged.

    `share(task, blocks) -> task` cuts the task to one engine task's blocks (per-sample tables),
    so that a task's bytes grow with its share alone. `each(partial) -> partial`, on the driver,
    takes every block's partial in block order before it is merged (an output written in order):
    tasks then hand back each block's partial instead of their merge. `sample_bytes`: about what
    one sample holds in memory, for the progress display's rate."""

    name: str  # what the progress display calls it: "measuring", "fitting", "writing", ...
    work: Callable[[Any, Any], P]
    task: Any
    share: Callable[[Any, Sequence], Any] = _no_share
    each: Callable[[P], P] | None = None
    sample_bytes: int = 0


class Passes(Protocol):
    """A plan of several passes whose number is known only as they run (quantiles refine until
    the values left are few): the next pass, given the merged partials of those before, or None."""

    def next_pass(self, results: tuple) -> Pass | None:
        ...


def on_chunks(work: Callable[[Any, Any, int], P]) -> Callable[[Any, Any], P]:
    """A block function from `work(task, data, first_sample)` on the block's array (and the index of
    its first sample), as quantiles.py writes them: the block is read where the task runs."""
    return partial(_on_chunk, work)


def _on_chunk(work: Callable, task, block):
    chunk = block.read()
    return work(task, chunk.data, chunk.start)


def task_blocks(engine, blocks: int) -> int:
    """How many blocks each task of a pass over `blocks` blocks carries: what the engine asks for,
    in whole folds."""
    fold = fold_blocks(blocks)
    return max(1, engine.task_blocks(blocks) // fold) * fold


def reduce(engine, a_pass: Pass[P], blocks: Sequence, progress: Progress | None = None) -> P | None:
    """`a_pass` over `blocks` on `engine`, merged (None for no blocks). Tasks carry
    engine.task_blocks() consecutive blocks each; the progress display hears of the pass by name and
    of each block as it completes (engines in this process), elsewhere of each task as it ends.
    `engine` None: threads of this process, for this pass."""
    if engine is None:
        from normcli.engine import ThreadEngine

        with ThreadEngine() as own:
            return reduce(own, a_pass, blocks, progress)
    fold, size = fold_blocks(len(blocks)), task_blocks(engine, len(blocks))
    groups = [blocks[i:i + size] for i in range(0, len(blocks), size)]
    work, done = a_pass.work, None
    if progress is not None:
        progress.phase(a_pass.name, sum(block.count for block in blocks))
        advance = partial(_advance, progress, a_pass.sample_bytes, threading.Lock())
        if engine.in_process:
            work = partial(_counting, work, advance)
        else:
            sizes = [sum(block.count for block in group) for group in groups]
            done = lambda index: advance(sizes[index])  # noqa: E731
    tasks = [(a_pass.share(a_pass.task, group), group) for group in groups]
    each = a_pass.each
    total = None
    for partials in engine.map(partial(_task, work, fold if each is None else 1), tasks, done):
        for result in partials:
            result = result if each is None else each(result)
            total = result if total is None else total.merge(result)
    return total


def reduce_passes(engine, plan: Passes, blocks: Sequence, progress: Progress | None = None) -> tuple:
    """Every pass of `plan` in turn, each built from the merged results of those before."""
    results: tuple = ()
    while (step := plan.next_pass(results)) is not None:
        results += (reduce(engine, step, blocks, progress),)
    return results


def _task(work: Callable, fold: int, task_and_blocks: tuple) -> list:
    """One engine task: work(task, block) over its blocks, merged in folds of `fold` blocks."""
    task, blocks = task_and_blocks
    return [functools.reduce(_merge, (work(task, block) for block in blocks[start:start + fold]))
            for start in range(0, len(blocks), fold)]


def _merge(earlier, later):
    return earlier.merge(later)


def _advance(progress: Progress, sample_bytes: int, lock: threading.Lock, samples: int) -> None:
    with lock:  # worker threads report too
        progress.advance(samples, samples * sample_bytes)


def _counting(work: Callable, advance: Callable[[int], None], task, block):
    """work(task, block), then `advance` by the block's samples."""
    result = work(task, block)
    advance(block.count)
    return result
