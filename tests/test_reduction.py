"""The reduce seam (reduction.py): a plan of passes whose number is known only as they run, defined
here alone, runs through the one driver on every engine and gives numpy's exact answer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import write_image
from helpers import dask_cluster
from normcli.engine import open_engine
from normcli.reduction import Pass, on_chunks, reduce_passes
from normcli.sources import open_dataset



# -- a toy plan: the median of integers by bisection, then the total distance from it ---------------
@dataclass(frozen=True)
class Span:
    count: int
    low: int
    high: int

    def merge(self, later: "Span") -> "Span":
        return Span(self.count + later.count, min(self.low, later.low), max(self.high, later.high))


@dataclass(frozen=True)
class Total:
    value: int

    def merge(self, later: "Total") -> "Total":
        return Total(self.value + later.value)


def _values(block) -> np.ndarray:
    return block.read().data.astype(np.int64).ravel()


def span_work(task: None, block) -> Span:
    x = _values(block)
    return Span(x.size, int(x.min()), int(x.max()))


def below_work(pivot: int, block) -> Total:
    return Total(int(np.count_nonzero(_values(block) < pivot)))


def distance_work(median: int, data: np.ndarray, first_sample: int) -> Total:
    """A block function of the array alone (as quantiles.py's are), run through on_chunks."""
    return Total(int(np.abs(data.astype(np.int64) - median).sum()))


class MedianPlan:
    """Pass 1: the values' count and range. Passes 2..k: halve the range that holds the lower median
    (the k-th smallest value: the largest v with fewer than k+1 values below it), each pass built
    from the one before, until one value is left. The last pass: the total distance from it."""

    def __init__(self):
        self.low = self.high = self.rank = self.pivot = self.median = None

    def next_pass(self, results: tuple) -> Pass | None:
        if not results:
            return Pass("span", span_work, None)
        if self.median is not None:
            return None
        if len(results) == 1:
            span = results[0]
            self.low, self.high, self.rank = span.low, span.high, (span.count - 1) // 2
        elif results[-1].value <= self.rank:
            self.low = self.pivot
        else:
            self.high = self.pivot - 1
        if self.low < self.high:
            self.pivot = (self.low + self.high + 1) // 2
            return Pass("refine", below_work, self.pivot)
        self.median = self.low
        return Pass("distance", on_chunks(distance_work), self.median)


@pytest.fixture(scope="module")
def address(tmp_path_factory):
    pytest.importorskip("distributed", reason="the Dask engine needs the [dask] extra")
    import os

    here = str(Path(__file__).parent)  # the workers import this module's work functions, as pytest did
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), here])))
        with dask_cluster(tmp_path_factory.mktemp("dask-logs")) as (scheduler, _):
            yield scheduler


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple:
    """16-bit images of two sizes in turn: one block an image, so 200 blocks in runs of 3 and tasks
    of several runs."""
    rng = np.random.default_rng(5)
    folder = tmp_path_factory.mktemp("images")
    arrays = [rng.integers(0, 65536, (6, 6 + i % 2), dtype=np.uint16) for i in range(200)]
    for i, array in enumerate(arrays):
        write_image(folder / f"{i:03d}.png", array)
    return folder, np.sort(np.concatenate([a.ravel() for a in arrays]).astype(np.int64))


@pytest.mark.parametrize("engine", ["threads", "processes", "dask"])
def test_a_plan_of_passes_counted_at_run_time_runs_through_one_driver_on_every_engine(request, images, engine):
    folder, values = images
    options = {"scheduler": request.getfixturevalue("address")} if engine == "dask" else {"workers": 2}
    plan = MedianPlan()
    with open_dataset([str(folder)]) as dataset, open_engine(engine, **options) as running:
        blocks = dataset.blocks()
        assert len(blocks) == 200
        results = reduce_passes(running, plan, blocks)
    median = int(values[(values.size - 1) // 2])
    assert plan.median == median
    assert results[0] == Span(values.size, int(values[0]), int(values[-1]))
    assert len(results) > 3 and results[-1] == Total(int(np.abs(values - median).sum()))
